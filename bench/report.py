"""Shared by the benchmarks: machine description and writing one section of docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEach section is rewritten by the command named in it; numbers come from that command only.\n"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, AttributeError):
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores{mem}, {gpu}; Python {platform.python_version()}, torch {torch.__version__}"


def _code_state() -> str:
    """The commit checked out, and whether code outside docs/ differs from it (the report does not count)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    if commit and git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)docs"):
        commit += " with uncommitted changes"
    return commit or "uncommitted"


# Read when a benchmark starts, not when it publishes: a run takes up to an hour, and a commit made meanwhile is
# not the code that ran.
STARTED_ON = _code_state()


def stamp(command: str) -> str:
    now = _code_state()
    commit = STARTED_ON if now == STARTED_ON else f"{STARTED_ON} (the checkout changed to {now} during the run)"
    return (f"- machine: {machine()}\n- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}\n"
            f"- command: `{command}`\n- commit: {commit}\n")


def write_section(name: str, body: str) -> None:
    """Replace (or add) the section between the markers of ``name`` in docs/benchmarks.md."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text() if DOC.exists() else HEADER
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)
    print(f"wrote section '{name}' of {DOC}", file=sys.stderr)


def publish(name: str, title: str, body: list[str], command: str | None = None) -> str:
    """Print a section and write it to docs/benchmarks.md: the title, the machine/date/command stamp, the body.

    command: how to reproduce it (default: this script's own command line)."""
    command = command or " ".join(["python", f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    md = "\n".join([f"## {title}", "", stamp(command), "", *body])
    print(md)
    write_section(name, md)
    return md


def table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)
