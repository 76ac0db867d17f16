"""Serving under load: the real service with a 1M-item index against the same stack answering a constant.

    python bench/serve_load.py [--factory HNSW32] [--seconds 5] [--rounds 3] [--interests 1,4]
                               [--utility conversion:1,engagement:0.05] [--scales probability,score]
                               [--artifact work/demo/artifacts/V] [--workers 1,2]

--artifact measures that artifact (the demo's, say) instead of the big world's; --workers runs a service of
each number of processes (`python -m serve --workers N`) for each artifact.

Needs wrk (Debian package). For each number of user vectors (interest vectors: the service runs one index
search per vector and merges them), takes the big world's model (bench/big_world.py; trained once, 300 steps),
builds its artifact (again when the artifact format changed) and starts `python -m serve` on 127.0.0.1. Beside
them it starts the same FastAPI + uvicorn stack answering a pre-serialised response of the same size from an
async endpoint, as the service's is (the HTTP ceiling), and once more from a plain def endpoint, which FastAPI
runs in its threadpool (what the service paid per request before it answered on the event loop). wrk drives
each at 1 and 16 connections over random known and unknown users (k=100), the rows taking turns for a few
rounds. With --utility, the same service processes also answer requests that carry that utility, on each of
--scales, as rows of their own beside the default path: on calibrated probabilities every weighted head is
searched and the union scored exactly (retrieval/utility.py); on raw scores, with one user vector per head, one
search of the artifact's joint index answers (serve/store.py), and with several, the same per-head searches.
Load generator and servers share this machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.big_world import ensure_checkpoint  # noqa: E402
from bench.report import ROOT, publish, table  # noqa: E402

LUA = """
math.randomseed(os.time())
request = function()
  local u
  if math.random() < 0.8 then u = tostring(math.random(1, %d)) else u = "new-" .. math.random(1, 1000000) end
  return wrk.format("GET", "/candidates?user=" .. u .. "&k=100%s")
end
"""
CEILING = '''
import sys, uvicorn
from fastapi import FastAPI
from fastapi.responses import Response
body = open(sys.argv[1], "rb").read()
app = FastAPI()
@app.get("/candidates")
%s candidates(user: str, k: int = 100) -> Response:
    return Response(body, media_type="application/json")
@app.get("/readyz")
def ready() -> dict:
    return {"status": "ready"}
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), loop="uvloop", http="httptools", log_level="warning")
'''


def wait_ready(port: int, timeout: float = 600) -> None:
    t = time.time()
    while time.time() - t < timeout:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("server did not become ready")


def rss_mib(pid: int) -> float:
    m = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) / 1024


def tree_rss(pid: int) -> float:
    """Resident MiB of a process and its children (the workers of `--workers N`)."""
    kids = [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    return rss_mib(pid) + sum(tree_rss(c) for c in kids)


def wrk(port: int, conns: int, seconds: int, script: str) -> dict:
    out = subprocess.run(["wrk", f"-t{min(conns, 2)}", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", script,
                          f"http://127.0.0.1:{port}"], capture_output=True, text=True, check=True).stdout

    def ms(label: str) -> float:
        m = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50": ms("50"), "p90": ms("90"),
            "p99": ms("99"), "errors": int(non2xx.group(1)) if non2xx else 0, "socket": sock.group(1) if sock else "none"}


def ensure_artifact(interests: int, factory: str) -> Path:
    """The big world's artifact for the model with ``interests`` vectors, built again when it is older than its
    checkpoint or of another artifact format (the service would refuse it)."""
    import shutil

    from index.artifact import FORMAT_VERSION
    from index.build import build

    ckpt = ensure_checkpoint(interests)
    art = ckpt.parent / f"artifact-interests{interests}-{factory.replace(',', '_')}"
    manifest = art / "manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        no_joint = m.get("interests") == 1 and len(m.get("heads", {})) > 1 and not m.get("joint")  # built before it
        if m.get("format_version") != FORMAT_VERSION or manifest.stat().st_mtime < ckpt.stat().st_mtime or no_joint:
            shutil.rmtree(art)
    if not manifest.exists():
        build(ckpt, art, factory, progress=False)
    return art


def start(cmd: list[str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        wait_ready(port)
    except RuntimeError:
        proc.terminate()
        raise
    return proc


def combine(runs: list[dict]) -> dict:
    """One row from a server's rounds: the median of each figure, errors summed."""
    out = {key: float(np.median([r[key] for r in runs])) for key in ("rps", "p50", "p90", "p99")}
    out["low"], out["high"] = min(r["rps"] for r in runs), max(r["rps"] for r in runs)
    out["errors"] = sum(r["errors"] for r in runs)
    out["socket"] = "; ".join(sorted({r["socket"] for r in runs} - {"none"})) or "none"
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--factory", default="HNSW32")
    p.add_argument("--seconds", type=int, default=5, help="wrk seconds per row and round")
    p.add_argument("--rounds", type=int, default=3, help="rounds over all rows (the table shows medians)")
    p.add_argument("--port", type=int, default=8765, help="first of the consecutive ports the servers take")
    p.add_argument("--interests", default="1,4", help="user vectors per model, comma-separated (first = reference)")
    p.add_argument("--utility", default=None, help="also measure requests with this utility (head:weight,...)")
    p.add_argument("--scales", default="probability", help="the utility's scales (utility_scale), comma-separated")
    p.add_argument("--artifact", type=Path, default=None, help="measure this artifact instead of the big world's")
    p.add_argument("--section", default="serve_load", help="the section of docs/benchmarks.md to write")
    p.add_argument("--workers", default="1", help="service processes, comma-separated (one service each)")
    a = p.parse_args()
    if a.artifact:
        arts = {json.loads((a.artifact / "manifest.json").read_text())["interests"]: a.artifact}
    else:
        arts = {int(k): ensure_artifact(int(k), a.factory) for k in a.interests.split(",")}
    workers = [int(w) for w in a.workers.split(",")]
    manifests = {k: json.loads((art / "manifest.json").read_text()) for k, art in arts.items()}
    # One service per (artifact, workers); "k" below names a service: (user vectors, processes).
    ks = [(k, w) for k in arts for w in workers]
    n_users = manifests[ks[0][0]]["n_users"]
    script = Path(tempfile.mkdtemp()) / "users.lua"
    script.write_text(LUA % (n_users, ""))
    scales = a.scales.split(",") if a.utility else []
    utility_scripts = {s: script.parent / f"utility-{s}.lua" for s in scales}
    for s, path in utility_scripts.items():
        path.write_text(LUA % (n_users, f"&utility={a.utility}&utility_scale={s}"))
    body = script.parent / "body.json"
    names = [f"service, {k} user vector{'s' if k > 1 else ''}" + (f", {w} processes" if w > 1 else "")
             for k, w in ks]
    utility_rows = {f"{n}, utility {a.utility}, {s}": (n, s) for n in names for s in scales}  # -> default row, scale
    names += ["constant response, async endpoint (ceiling)", "constant response, plain def endpoint (threadpool)"]
    ports = {name: a.port + i for i, name in enumerate(names)}
    ports.update({u: ports[n] for u, (n, _) in utility_rows.items()})  # the same process, another request
    procs, idle = {}, {}
    try:
        # Every server stays up through the measurement and the rows take turns, round after round: a
        # disturbance of this shared machine then moves one round of every row, not all rounds of one row.
        for (k, w), name in zip(ks, names, strict=False):
            procs[name] = start([sys.executable, "-m", "serve", "--artifacts", str(arts[k]), "--port",
                                 str(ports[name]), "--log_level", "warning", "--workers", str(w)], ports[name])
            if w > 1:
                time.sleep(5)  # every worker up, not only the first that answered
            idle[name] = tree_rss(procs[name].pid)
        body.write_bytes(urllib.request.urlopen(f"http://127.0.0.1:{ports[names[0]]}/candidates?user=1&k=100").read())
        for name, kind in zip(names[len(ks):], ("async def", "def"), strict=True):
            procs[name] = start([sys.executable, "-c", CEILING % kind, str(body), str(ports[name])], ports[name])
        for s in scales:
            check = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{ports[names[0]]}/candidates?user=1&k=100"
                                                      f"&utility={a.utility}&utility_scale={s}").read())
            assert check.get("utility_scale") == s, str(check)[:200]
        rows_in_turn = [*names[:len(ks)], *utility_rows, *names[len(ks):]]
        rounds = {(name, c): [] for name in rows_in_turn for c in (1, 16)}
        for _ in range(a.rounds):
            for (name, c), runs in rounds.items():
                lua = utility_scripts[utility_rows[name][1]] if name in utility_rows else script
                runs.append(wrk(ports[name], c, a.seconds, str(lua)))
        loaded = {name: tree_rss(procs[name].pid) for name in names[:len(ks)]}
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait()
    rows = {key: combine(runs) for key, runs in rounds.items()}
    ceiling, reference = names[len(ks)], names[0]

    def row(name: str, c: int) -> list:
        r = rows[(name, c)]
        ref = utility_rows.get(name, (reference,))[0]  # a utility row: against its own process's default path
        vs_ref = f"{r['rps'] / rows[(ref, c)]['rps']:.2f}" if name in names[:len(ks)] or name in utility_rows else "-"
        return [name, c, f"{r['rps']:,.0f} ({r['low']:,.0f}-{r['high']:,.0f})",
                f"{r['rps'] / rows[(ceiling, c)]['rps']:.2f}", vs_ref, f"{r['p50']:.2f}", f"{r['p90']:.2f}",
                f"{r['p99']:.2f}", r["errors"], r["socket"]]

    memory = []
    for (k, w), name in zip(ks, names, strict=False):
        files = ["items.parquet", "users.parquet", *(h["index"] for h in manifests[k]["heads"].values()),
                 *([manifests[k]["joint"]["index"]] if manifests[k].get("joint") else [])]
        data_mib = sum((arts[k] / f).stat().st_size for f in files) / 2**20
        memory.append(f"{k} vector(s)" + (f", {w} processes together" if w > 1 else "") + f": {idle[name]:,.0f} MiB after load, {loaded[name]:,.0f} MiB after the runs; "
                      f"{len(manifests[k]['heads'])} heads' indexes"
                      + (" and their joint index" if manifests[k].get("joint") else "")
                      + f" + item and user embeddings on disk "
                      f"{data_mib:,.0f} MiB (ratio {loaded[name] / data_mib:.2f})")
    m = manifests[ks[0][0]]
    publish(a.section, "Serving under load" + (f": {a.artifact.name}" if a.artifact else ""), [
          f"Artifact{'' if a.artifact else 's'}: {m['n_items']:,} items, {n_users:,} users, `{m['factory']}` (measured recall@"
          f"{m['recall_check']['k']}: " + ", ".join(f"{manifests[k]['recall_check']['recall']} with {k} vector(s)"
                                                     for k in manifests) +
          f"), dim {m['embedding_dim']}; one model per number of user vectors (one index search per vector, merged "
          f"by best score). wrk {a.seconds} s per row in each of {a.rounds} rounds (all servers up, rows taking "
          f"turns); each figure is the median over the rounds, with the range of requests/s in brackets. k=100, "
          f"80% known users / 20% unknown (popularity fallback); response {body.stat().st_size:,} bytes. wrk and "
          f"the servers share {os.cpu_count()} cores; 'to first' compares requests/s with the first service row "
          f"within this run"
          + (f"; a utility row ({a.utility}) compares with the default path of the same process: on the "
             f"probability scale every weighted head is searched and the union scored exactly (retrieval/utility.py); "
             f"on the score scale " + ", ".join(
                 f"with {k} vector(s) " + ("one search of the joint index" if manifests[k].get("joint")
                                           else "every weighted head is searched")
                 for k in manifests) if a.utility else "")
          + ".", "",
          table(["server", "connections", "requests/s (range)", "ratio to ceiling",
                 "to first" + (" (utility: to default)" if a.utility else ""), "p50 ms",
                 "p90 ms", "p99 ms", "non-2xx", "socket errors"],
                [row(n, c) for n in [*names[:len(ks)], *utility_rows, *names[len(ks):]] for c in (1, 16)]), "",
          "Service resident memory: " + "; ".join(memory) + ".", ""])


if __name__ == "__main__":
    main()
