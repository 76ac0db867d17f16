"""Live serving under load: GET /candidates against POST /candidates with fresh events, and POST /events.

    python bench/live_load.py [--artifact DIR] [--events 20] [--seconds 5] [--rounds 3] [--section live_load]

Default artifact: the 1M-item world's (bench/big_world.py, HNSW32, one user vector; built when missing). One
service process, with the live store in a real redis-server started here on loopback. wrk drives, at 1 and 16
connections, rows taking turns for a few rounds: GET for known users (the stored answer), POST /candidates with
``--events`` fresh events of catalogue items for known users (the user tower runs at request time; the users of
requests that arrive together are embedded in one run, serve/batcher.py), the same against a second service that
embeds each user alone (``--live_batch 1``), the same against a third whose tower runs do not wait for requests
still reading the live store (``--live_wait_s 0``), GET and POST against a fourth whose garbage collector is not
frozen after loading (``--gc_freeze false``), and POST /events in batches of 100 (events/s = requests/s x 100).
Writes the "live_load" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import publish, table  # noqa: E402
from bench.serve_load import combine, ensure_artifact, rss_mib, start, wrk  # noqa: E402

TOKEN = "live-load-token"
LUA = """
local bodies = {%s}
local paths = {%s}
local i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format("%s", paths[i], {["Content-Type"] = "application/json", ["Authorization"] = "Bearer %s"},
                    bodies[i] ~= "" and bodies[i] or nil)
end
"""


def lua(method: str, paths: list[str], bodies: list[str], folder: Path, name: str) -> str:
    quote = lambda s: "'" + s.replace("\\\\", "\\\\\\\\").replace("'", "\\\\'") + "'"  # noqa: E731
    path = folder / f"{name}.lua"
    path.write_text(LUA % (",".join(quote(b) for b in bodies), ",".join(quote(p) for p in paths), method, TOKEN))
    return str(path)


def tower_runs(port: int) -> dict[str, float]:
    """{sum, count} of a service's users per run of the user tower (its /metrics histogram)."""
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r"^retrieval_live_batch_users_(sum|count) (\S+)$", scraped, re.M)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--artifact", default=None)
    p.add_argument("--events", type=int, default=20, help="fresh events in each POST /candidates")
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--port", type=int, default=8770)
    p.add_argument("--section", default="live_load", help="the section of docs/benchmarks.md to write")
    a = p.parse_args()
    art = Path(a.artifact) if a.artifact else ensure_artifact(1, "HNSW32")
    m = json.loads((art / "manifest.json").read_text())
    rng = random.Random(0)
    users = pq.read_table(art / "users.parquet", columns=["user_id"]).column("user_id").to_pylist()
    items = pq.read_table(art / "items.parquet", columns=["item_id"]).column("item_id").to_pylist()
    known = [users[rng.randrange(len(users))] for _ in range(500)]
    t0 = 1_900_000_000
    folder = Path(tempfile.mkdtemp(prefix="live-load-"))
    get = lua("GET", [f"/candidates?user={u}&k=100" for u in known], [""] * len(known), folder, "get")
    posts = [json.dumps({"user": str(u), "k": 100, "events": [
        {"item_id": rng.choice(items), "event": "view", "ts": t0 + 30 * j} for j in range(a.events)]}) for u in known]
    post = lua("POST", ["/candidates"] * len(posts), posts, folder, "post")
    batches = [json.dumps({"events": [{"user_id": rng.choice(users), "item_id": rng.choice(items), "event": "view",
                                       "ts": t0 + j} for j in range(100)]}) for _ in range(200)]
    events = lua("POST", ["/events"] * len(batches), batches, folder, "events")
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("redis-server is missing: make setup installs it")
    redis_port = a.port + 1
    redis = subprocess.Popen([exe, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                              "yes", "--dir", str(folder)], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    env = {**os.environ, "RETRIEVAL_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "RETRIEVAL_EVENTS_TOKEN": TOKEN}
    os.environ.update(env)
    servers = []
    alone_port = a.port + 2  # the same service embedding each live user alone (RETRIEVAL_LIVE_BATCH=1)
    thawed_port = a.port + 3  # the same service with its garbage collector walking everything (no gc.freeze)
    nowait_port = a.port + 4  # the same service whose tower runs do not wait for reads of the live store
    try:
        cmd = [sys.executable, "-m", "serve", "--artifacts", str(art), "--log_level", "warning",
               "--max_request_events", str(max(a.events, 200))]
        servers.append(start([*cmd, "--port", str(a.port)], a.port))
        servers.append(start([*cmd, "--port", str(alone_port), "--live_batch", "1"], alone_port))
        servers.append(start([*cmd, "--port", str(thawed_port), "--gc_freeze", "false"], thawed_port))
        servers.append(start([*cmd, "--port", str(nowait_port), "--live_wait_s", "0"], nowait_port))
        idle = rss_mib(servers[0].pid)
        post_name = f"POST /candidates with {a.events} fresh events (user tower at request time)"
        alone_name = "the same, each user embedded alone (`--live_batch 1`)"
        names = {"GET /candidates (known users, stored answer)": (get, a.port), post_name: (post, a.port),
                 alone_name: (post, alone_port),
                 "the same, runs not waiting for live-store reads (`--live_wait_s 0`)": (post, nowait_port),
                 "GET, the garbage collector not frozen (`--gc_freeze false`)": (get, thawed_port),
                 "POST, the garbage collector not frozen (`--gc_freeze false`)": (post, thawed_port),
                 "POST /events, batches of 100 events (Redis)": (events, a.port)}
        rounds = {(n, c): [] for n in names for c in (1, 16)}
        for _ in range(a.rounds):
            for (n, c), runs in rounds.items():
                runs.append(wrk(names[n][1], c, a.seconds, names[n][0]))
        loaded = rss_mib(servers[0].pid)
        batch, nowait = tower_runs(a.port), tower_runs(nowait_port)
    finally:
        for srv in servers:
            srv.terminate()
            srv.wait()
        redis.terminate()
        redis.wait()
    rows = {key: combine(runs) for key, runs in rounds.items()}
    get_name = next(iter(names))

    def row(n: str, c: int) -> list:
        r = rows[(n, c)]
        per = " (x100 events)" if "events" in n and "/events" in n else ""
        return [n, c, f"{r['rps']:,.0f}{per} ({r['low']:,.0f}-{r['high']:,.0f})",
                f"{r['rps'] / rows[(get_name, c)]['rps']:.2f}", f"{r['p50']:.2f}", f"{r['p90']:.2f}",
                f"{r['p99']:.2f}", r["errors"], r["socket"]]

    publish(a.section, "Live serving under load" + (f": {art.name}" if a.artifact else ""), [
        f"Artifact: {m['n_items']:,} items, {m['n_users']:,} users, `{m['factory']}`, {m['interests']} user "
        f"vector(s), dim {m['embedding_dim']}; one service process (torch on one thread) with its live store in "
        f"redis-server on loopback. wrk {a.seconds} s per row in each of {a.rounds} rounds, rows taking turns; "
        f"medians, requests/s range in brackets. wrk, Redis and the service share {os.cpu_count()} cores.", "",
        table(["request", "connections", "requests/s (range)", "to GET", "p50 ms", "p90 ms", "p99 ms", "non-2xx",
               "socket errors"], [row(n, c) for n in names for c in (1, 16)]), "",
        f"Users per run of the user tower (live requests that arrived together, serve/batcher.py): "
        f"{batch['sum'] / max(batch['count'], 1):.2f} on average over {batch['count']:,.0f} runs; with "
        f"`--live_wait_s 0` (a run waits only for requests that reach it within a few rounds of the event loop, "
        f"not for those still reading their live events from Redis): "
        f"{nowait['sum'] / max(nowait['count'], 1):.2f} over {nowait['count']:,.0f} runs. The rows run "
        "with `--live_batch 1`, `--live_wait_s 0` and `--gc_freeze false` are three more services on the same "
        "artifact, in the same rounds (the last: every full collection of the garbage collector walks the "
        "libraries' and the artifact's objects, as before serve/service.py froze them after loading). Service resident "
        f"memory: {idle:,.0f} MiB after load, {loaded:,.0f} MiB after the runs.", ""])


if __name__ == "__main__":
    main()
