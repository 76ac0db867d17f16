"""Serving under load: the real service with a 1M-item index against the same stack answering a constant.

    python bench/serve_load.py [--factory HNSW32] [--seconds 10] [--interests 1,4]

Needs wrk (Debian package). For each number of user vectors (interest vectors: the service runs one index
search per vector and merges them), takes the big world's model (bench/big_world.py; trained once, 300 steps),
builds its artifact (again when the artifact format changed), starts `python -m serve` on 127.0.0.1 and drives
it with wrk at 1 and 16 connections over random known and unknown users (k=100). Then starts the same FastAPI +
uvicorn stack answering a pre-serialised response of the same size from an async endpoint, as the service's is
(the HTTP ceiling), and drives it the same way; and once more from a plain def endpoint, which FastAPI runs in
its threadpool (what the service paid per request before it answered on the event loop). Load generator and
server share this machine's cores.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.big_world import BIG, ensure_checkpoint  # noqa: E402
from bench.report import ROOT, publish, table  # noqa: E402

LUA = """
math.randomseed(os.time())
request = function()
  local u
  if math.random() < 0.8 then u = tostring(math.random(1, %d)) else u = "new-" .. math.random(1, 1000000) end
  return wrk.format("GET", "/candidates?user=" .. u .. "&k=100")
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
    art = BIG / f"artifact-interests{interests}-{factory.replace(',', '_')}"
    manifest = art / "manifest.json"
    if manifest.exists() and (json.loads(manifest.read_text()).get("format_version") != FORMAT_VERSION
                              or manifest.stat().st_mtime < ckpt.stat().st_mtime):
        shutil.rmtree(art)
    if not manifest.exists():
        build(ckpt, art, factory, progress=False)
    return art


def drive_service(art: Path, port: int, seconds: int, script: Path) -> tuple[dict, bytes, float, float, float]:
    """wrk rows {connections: result} of the real service on ``art``, a sample answer, resident MiB after load
    and after the runs, and the MiB of index + embeddings on disk."""
    data_mib = sum((art / f).stat().st_size for f in ("index.faiss", "items.parquet", "users.parquet")) / 2**20
    srv = subprocess.Popen([sys.executable, "-m", "serve", "--artifacts", str(art), "--port", str(port),
                            "--log_level", "warning"], cwd=ROOT)
    try:
        wait_ready(port)
        rss_idle = rss_mib(srv.pid)
        sample = urllib.request.urlopen(f"http://127.0.0.1:{port}/candidates?user=1&k=100").read()
        rows = {c: wrk(port, c, seconds, str(script)) for c in (1, 16)}
        rss_loaded = rss_mib(srv.pid)
    finally:
        srv.terminate()
        srv.wait()
    return rows, sample, rss_idle, rss_loaded, data_mib


def drive_constant(kind: str, body: Path, port: int, seconds: int, script: Path) -> dict:
    """wrk rows {connections: result} of the constant-response app, its endpoint declared as ``kind``."""
    ceil = subprocess.Popen([sys.executable, "-c", CEILING % kind, str(body), str(port)], cwd=ROOT)
    try:
        wait_ready(port)
        return {c: wrk(port, c, seconds, str(script)) for c in (1, 16)}
    finally:
        ceil.terminate()
        ceil.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--factory", default="HNSW32")
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--interests", default="1,4", help="user vectors per model, comma-separated (first = reference)")
    a = p.parse_args()
    ks = [int(k) for k in a.interests.split(",")]
    arts = {k: ensure_artifact(k, a.factory) for k in ks}
    manifests = {k: json.loads((art / "manifest.json").read_text()) for k, art in arts.items()}
    n_users = manifests[ks[0]]["n_users"]
    script = Path(tempfile.mkdtemp()) / "users.lua"
    script.write_text(LUA % n_users)
    runs, samples, memory = {}, {}, []
    for k, art in arts.items():
        runs[k], samples[k], idle, loaded, data_mib = drive_service(art, a.port, a.seconds, script)
        memory.append(f"{k} vector(s): {idle:,.0f} MiB after load, {loaded:,.0f} MiB after the runs; index + item and "
                      f"user embeddings on disk {data_mib:,.0f} MiB (ratio {loaded / data_mib:.2f})")
    body = script.parent / "body.json"
    body.write_bytes(samples[ks[0]])
    ceiling, threadpool = (drive_constant(kind, body, a.port, a.seconds, script) for kind in ("async def", "def"))

    def row(name: str, c: int, r: dict, ref: dict | None) -> list:
        vs_ref = f"{r['rps'] / ref[c]['rps']:.2f}" if ref else "-"
        return [name, c, f"{r['rps']:,.0f}", f"{r['rps'] / ceiling[c]['rps']:.2f}", vs_ref, f"{r['p50']:.2f}",
                f"{r['p90']:.2f}", f"{r['p99']:.2f}", r["errors"], r["socket"]]

    md_rows = [row(f"service, {k} user vector{'s' if k > 1 else ''}", c, runs[k][c], runs[ks[0]])
               for k in ks for c in (1, 16)]
    md_rows += [row("constant response, async endpoint (ceiling)", c, ceiling[c], None) for c in (1, 16)]
    md_rows += [row("constant response, plain def endpoint (threadpool)", c, threadpool[c], None) for c in (1, 16)]
    m = manifests[ks[0]]
    publish("serve_load", "Serving under load", [
          f"Artifacts: {m['n_items']:,} items, {n_users:,} users, `{m['factory']}` (measured recall@"
          f"{m['recall_check']['k']}: " + ", ".join(f"{manifests[k]['recall_check']['recall']} with {k} vector(s)"
                                                     for k in ks) +
          f"), dim {m['embedding_dim']}; one model per number of user vectors (one index search per vector, merged "
          f"by best score). wrk {a.seconds} s per row, k=100, 80% known users / 20% unknown (popularity fallback); "
          f"response {len(samples[ks[0]]):,} bytes. wrk and the server share {os.cpu_count()} cores; "
          f"'to {ks[0]} vector' compares requests/s within this run.", "",
          table(["server", "connections", "requests/s", "ratio to ceiling", f"to {ks[0]} vector", "p50 ms", "p90 ms",
                 "p99 ms", "non-2xx", "socket errors"], md_rows), "",
          "Service resident memory: " + "; ".join(memory) + ".", ""])


if __name__ == "__main__":
    main()
