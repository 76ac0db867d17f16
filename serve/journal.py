"""Several service processes, one catalogue: the journal of admin operations (swaps, item adds) they all apply.

``python -m serve --workers N`` gives its workers a folder they share. The process an admin request reaches
takes the journal's file lock, catches up with what others appended, applies the operation (a refused one is
appended nowhere), appends it and writes its acknowledgement; then it waits until every worker has acknowledged
it. The other workers read the journal a few times a second and apply what is new; a worker that starts (or that
uvicorn restarts after a crash) replays it before it is ready, so no worker ever serves a version the others left.

Item adds are applied by each worker from the posted items, with one thread: the same bytes, so the same
``model_version`` everywhere. The journal lives as long as the service: a restart starts from the artifact given
on the command line, as a single process does.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

JOURNAL = "journal.jsonl"


class Journal:
    """One process's view of the shared journal: the operations it has applied (a byte offset into the file)."""

    def __init__(self, folder: Path, workers: int):
        self.folder, self.workers = Path(folder), int(workers)
        self.path = self.folder / JOURNAL
        self.name = f"{os.getpid()}-{secrets.token_hex(4)}"  # this worker's acknowledgement file
        self.offset = 0  # bytes of the journal applied here (whole lines only)
        self.applied = 0  # operations applied here

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The journal's exclusive lock (held by one process's admin operation at a time)."""
        with open(self.folder / "journal.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def changed(self) -> bool:
        """Whether others appended since this process last read (one stat: polled a few times a second)."""
        try:
            return self.path.stat().st_size > self.offset
        except FileNotFoundError:
            return False

    def pending(self) -> list[dict[str, Any]]:
        """The operations appended since this process last read, oldest first; consumed (the offset moves on).
        A line still being written (no newline yet) waits for the next read."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        ops = [json.loads(line) for line in data[:end].splitlines() if line]
        self.offset += end
        self.applied += len(ops)
        return ops

    def append(self, op: dict[str, Any]) -> None:
        """Append one operation (call under :meth:`locked`, after :meth:`pending`: this process is up to date)."""
        line = json.dumps(op, separators=(",", ":")).encode() + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)  # one write of the whole line: readers see all of it or none
        finally:
            os.close(fd)
        self.offset += len(line)
        self.applied += 1

    def ack(self, model_version: str) -> None:
        """Say what this process serves now (atomically: write then rename)."""
        tmp = self.folder / f".ack-{self.name}.tmp"
        tmp.write_text(json.dumps({"pid": os.getpid(), "applied": self.applied, "model_version": model_version}))
        os.replace(tmp, self.folder / f"ack-{self.name}.json")

    def close(self) -> None:
        """A worker that stops takes back its acknowledgement (a killed one's is dropped by :meth:`acks`)."""
        (self.folder / f"ack-{self.name}.json").unlink(missing_ok=True)

    def acks(self) -> list[dict[str, Any]]:
        """The acknowledgements of the live workers (a dead one's file is removed)."""
        out = []
        for p in self.folder.glob("ack-*.json"):
            try:
                a = json.loads(p.read_text())
                os.kill(a["pid"], 0)
            except ProcessLookupError:
                p.unlink(missing_ok=True)
                continue
            except (OSError, ValueError, KeyError):  # read while it was replaced
                continue
            out.append(a)
        return out

    def wait_all(self, timeout_s: float, poll_s: float = 0.05) -> tuple[int, list[str]]:
        """Block until ``workers`` live processes have applied everything this one has (or the timeout): how many
        had, and the versions they serve."""
        deadline = time.monotonic() + timeout_s
        while True:
            done = [a for a in self.acks() if a["applied"] >= self.applied]
            if len(done) >= self.workers or time.monotonic() >= deadline:
                return len(done), sorted({a["model_version"] for a in done})
            time.sleep(poll_s)


def replay_from(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The operations that decide the state after ``ops``: the last swap and the adds after it (a swap replaces
    everything before it)."""
    last = max((i for i, op in enumerate(ops) if op["op"] == "swap"), default=0)
    return ops[last:]
