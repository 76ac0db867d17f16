"""Serving under load: the real service with a 1M-item index against the same stack answering a constant.

    python bench/serve_load.py [--factory HNSW32] [--seconds 10]

Needs work/bench/big/model.ckpt (written by bench/index_build.py) and wrk (Debian package). Builds the artifact,
starts `python -m serve` on 127.0.0.1, drives it with wrk at 1 and 16 connections over random known and
unknown users (k=100), then starts the same FastAPI + uvicorn stack answering a pre-serialised response of the
same size (the HTTP ceiling) and drives it the same way. Load generator and server share this machine's cores.
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

from bench.big_world import BIG  # noqa: E402
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
def candidates(user: str, k: int = 100) -> Response:
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--factory", default="HNSW32")
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--port", type=int, default=8765)
    a = p.parse_args()
    from index.build import build

    art = BIG / f"artifact-{a.factory.replace(',', '_')}"
    if not art.exists():
        build(BIG / "model.ckpt", art, a.factory, progress=False)
    manifest = json.loads((art / "manifest.json").read_text())
    data_mib = sum((art / f).stat().st_size for f in ("index.faiss", "items.parquet", "users.parquet")) / 2**20
    script = Path(tempfile.mkdtemp()) / "users.lua"
    script.write_text(LUA % manifest["n_users"])
    srv = subprocess.Popen([sys.executable, "-m", "serve", "--artifacts", str(art), "--port", str(a.port),
                            "--log_level", "warning"], cwd=ROOT)
    rows = []
    try:
        wait_ready(a.port)
        rss_idle = rss_mib(srv.pid)
        sample = urllib.request.urlopen(f"http://127.0.0.1:{a.port}/candidates?user=1&k=100").read()
        for c in (1, 16):
            r = wrk(a.port, c, a.seconds, str(script))
            rows.append(["service", c, r])
        rss_loaded = rss_mib(srv.pid)
    finally:
        srv.terminate()
        srv.wait()
    body = script.parent / "body.json"
    body.write_bytes(sample)
    ceil = subprocess.Popen([sys.executable, "-c", CEILING, str(body), str(a.port)], cwd=ROOT)
    try:
        wait_ready(a.port)
        for c in (1, 16):
            rows.append(["constant response (ceiling)", c, wrk(a.port, c, a.seconds, str(script))])
    finally:
        ceil.terminate()
        ceil.wait()
    ceiling = {c: r["rps"] for name, c, r in rows if name.startswith("constant")}
    md_rows = [[name, c, f"{r['rps']:,.0f}", f"{r['rps'] / ceiling[c]:.2f}", f"{r['p50']:.2f}", f"{r['p90']:.2f}",
                f"{r['p99']:.2f}", r["errors"], r["socket"]] for name, c, r in rows]
    publish("serve_load", "Serving under load", [
          f"Artifact: {manifest['n_items']:,} items, {manifest['n_users']:,} users, `{manifest['factory']}` "
          f"(measured recall@{manifest['recall_check']['k']} = {manifest['recall_check']['recall']}), "
          f"dim {manifest['embedding_dim']}. wrk {a.seconds} s per row, k=100, 80% known users / 20% unknown "
          f"(popularity fallback); response {len(sample):,} bytes. wrk and the server share {os.cpu_count()} cores.", "",
          table(["server", "connections", "requests/s", "ratio to ceiling", "p50 ms", "p90 ms", "p99 ms", "non-2xx",
                 "socket errors"], md_rows), "",
          f"Service resident memory: {rss_idle:,.0f} MiB after load, {rss_loaded:,.0f} MiB after the runs; index + "
          f"item and user embeddings on disk: {data_mib:,.0f} MiB (ratio {rss_loaded / data_mib:.2f}).", ""])


if __name__ == "__main__":
    main()
