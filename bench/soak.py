"""Soak: load on the real service with a hot swap and a new-item add in the middle, live queries and a stream of
events for new users throughout; nothing may fail or mix, and memory stays bounded.

    python bench/soak.py [--checkpoint CKPT] [--seconds 60] [--conns 16] [--workers N]

Builds two artifact versions from one checkpoint (v1 Flat, v2 HNSW32; default checkpoint: the newest best of the demo and of the quality report's full model on synth),
starts `python -m serve` on 127.0.0.1 with an admin token, and drives it from ``conns`` keep-alive connections
over known and unknown users. A third of the way in it swaps to v2; two thirds in it adds a new item. Every
answer is checked against the answer its reported version gives (computed in-process beforehand), so a
response mixing versions is caught, not only an error. A quarter of the connections ask POST /candidates with
fixed fresh events (checked the same way), and a feeder posts events for ever new users to /events, so the
in-process live store (capped at 2,000 users) evicts all along. Writes the "soak" section of docs/benchmarks.md.

With --workers N (N > 1) the service runs N processes (`python -m serve --workers N`) and the section is
"soak_workers": the swap and the add reach one of them, and every answer that starts after the admin request
has answered must carry the new version, whichever process answers it. (No /events feeder there: several
processes keep live histories in Redis only.)
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import ROOT, publish, table  # noqa: E402
from bench.serve_load import tree_rss, wait_ready  # noqa: E402
from index.build import build  # noqa: E402
from serve.load import load_served  # noqa: E402

TOKEN = "soak-token"
NEW_ITEM = {"item_id": 9_999_001, "category": "c3", "brand": "b20", "price": 25.0, "rating": 4.8}


def live_bodies(root: Path, n: int = 20, k: int = 50) -> list[dict]:
    """POST /candidates bodies of a new user each, with a few fresh events of catalogue items."""
    items = pq.read_table(root / "v1" / "items.parquet", columns=["item_id"]).column("item_id").to_pylist()
    rng = random.Random(1)
    return [{"k": k, "events": [{"item_id": rng.choice(items), "event": "view", "ts": 1_900_000_000 + 40 * j}
                                for j in range(5)]} for _ in range(n)]


def expected_answers(root: Path, users: list[str], k: int, bodies: list[dict]) -> dict:
    """(model_version, user or live body index) -> item ids; v2 also after the new item (its version says so)."""
    out = {}
    for v in ("v1", "v2"):
        s = load_served(root / v)
        for served in [s] + ([s.with_items([NEW_ITEM])[0]] if v == "v2" else []):
            for u in users:
                out[(served.model_version, u)] = served.candidates(served.users.parse(u), k, False)[1]
            for i, b in enumerate(bodies):
                out[(served.model_version, i)] = served.candidates_live(None, served.fresh_tail(b["events"])[0],
                                                                        b["k"], False)[1]
    return out


def client(port: int, users: list[str], k: int, stop: threading.Event, log: list, seed: int,
           bodies: list[dict] | None = None) -> None:
    """GET for users, or (bodies given) POST /candidates with fresh events; every answer logged."""
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while not stop.is_set():
        u = rng.randrange(len(bodies)) if bodies else rng.choice(users)
        t = time.perf_counter()
        try:
            if bodies:
                conn.request("POST", "/candidates", json.dumps(bodies[u]), {"Content-Type": "application/json"})
            else:
                conn.request("GET", f"/candidates?user={u}&k={k}")
            r = conn.getresponse()
            body = r.read()
            status = r.status
        except (OSError, http.client.HTTPException) as e:
            log.append((t, time.perf_counter() - t, f"error {type(e).__name__}", None, u, None))
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            continue
        b = json.loads(body) if status == 200 else {}
        log.append((t, time.perf_counter() - t, status, b.get("model_version"), u,
                    [c["item_id"] for c in b.get("candidates", [])]))


def feeder(port: int, stop: threading.Event, out: dict, items: list) -> None:
    """Events for ever new users, 50 a request, as fast as the service takes them."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    user = 10**12
    while not stop.is_set():
        events = [{"user_id": user + j // 5, "item_id": items[(user + j) % len(items)], "event": "view",
                   "ts": 1_900_000_000 + j} for j in range(50)]
        user += 10
        try:
            conn.request("POST", "/events", json.dumps({"events": events}),
                         {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            out["posted"] += 50 if r.status == 200 else 0
            out["non-2xx"] += r.status != 200
        except (OSError, http.client.HTTPException):
            out["errors"] += 1
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)


def admin(port: int, path: str, payload: dict) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", path, json.dumps(payload), {"Authorization": f"Bearer {TOKEN}",
                                                      "Content-Type": "application/json"})
    r = conn.getresponse()
    return r.status, r.read().decode()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--seconds", type=int, default=60)
    p.add_argument("--conns", type=int, default=16)
    p.add_argument("--port", type=int, default=8766)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args()
    found = [*(ROOT / "work").glob("demo/runs/demo/version_*/checkpoints/best.ckpt"),
             *(ROOT / "work").glob("bench/synth/runs/two-tower_full/select/log/version_*/checkpoints/best.ckpt")]
    if not a.checkpoint and not found:
        sys.exit("no checkpoint: run `make demo` first or pass --checkpoint")
    ckpt = a.checkpoint or str(max(found, key=lambda x: x.stat().st_mtime))
    root = Path(tempfile.mkdtemp(prefix="soak-"))
    build(ckpt, root / "v1", "Flat", progress=False)
    build(ckpt, root / "v2", "HNSW32", progress=False)
    ids = pq.read_table(root / "v1" / "users.parquet", columns=["user_id"]).column("user_id").to_pylist()
    users = [str(u) for u in random.Random(0).sample(ids, 150)] + [f"unknown-{i}" for i in range(50)]
    bodies = live_bodies(root, k=a.k)
    expected = expected_answers(root, users, a.k, bodies)
    items = pq.read_table(root / "v1" / "items.parquet", columns=["item_id"]).column("item_id").to_pylist()
    feed = a.workers == 1
    srv = subprocess.Popen([sys.executable, "-m", "serve", "--artifacts", str(root / "v1"), "--port", str(a.port),
                            "--admin_token", TOKEN, *(["--events_token", TOKEN] if feed else []),
                            "--live_max_users", "2000", "--log_level", "warning", "--workers", str(a.workers)],
                            cwd=ROOT)
    fed = {"posted": 0, "non-2xx": 0, "errors": 0}
    log: list = []
    events = {}
    try:
        wait_ready(a.port)
        time.sleep(5 if a.workers > 1 else 0)  # every worker up
        rss_before = tree_rss(srv.pid)
        stop = threading.Event()
        threads = [threading.Thread(target=client, args=(a.port, users, a.k, stop, log, i, bodies if i % 4 == 3 else None))
                   for i in range(a.conns)]
        if feed:
            threads.append(threading.Thread(target=feeder, args=(a.port, stop, fed, items)))
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(a.seconds / 3)
        events["swap_start"] = time.perf_counter()
        events["swap"] = admin(a.port, "/admin/swap", {"path": "v2"})
        events["swap_end"] = time.perf_counter()
        time.sleep(a.seconds / 3)
        events["add_start"] = time.perf_counter()
        events["add"] = admin(a.port, "/admin/items", {"items": [NEW_ITEM]})
        events["add_end"] = time.perf_counter()
        time.sleep(max(0.0, a.seconds - (time.perf_counter() - t0)))
        stop.set()
        for t in threads:
            t.join()
        rss_after = tree_rss(srv.pid)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{a.port}/metrics").read().decode()
    finally:
        srv.terminate()
        srv.wait()
    bad_status = [r for r in log if r[2] != 200]
    mixed = []
    for _, _, status, version, u, got in log:
        if status != 200:
            continue
        if expected.get((version, u)) != got:  # the version names the catalogue too (+1items after the add)
            mixed.append((version, u))
    # Across processes: once an admin request has answered, every answer that starts later carries its result.
    versions = {k: json.loads(events[k][1]).get("model_version") for k in ("swap", "add") if events[k][0] == 200}
    stale = [r for r in log if r[2] == 200 and (
        (r[0] >= events["swap_end"] and r[0] < events["add_start"] and r[3] != versions.get("swap"))
        or (r[0] >= events["add_end"] and r[3] != versions.get("add")))]
    evicted = next((line.split()[-1] for line in metrics.splitlines()
                    if line.startswith("retrieval_live_evictions_total ")), "?")
    lat = np.array([r[1] for r in log]) * 1e3
    ts = np.array([r[0] for r in log])
    windows = {"before the swap": ts < events["swap_start"],
               "during the swap (its load and 1 s after)": (ts >= events["swap_start"]) & (ts < events["swap_end"] + 1),
               "after the swap": ts >= events["swap_end"] + 1}
    rows = [[name, int(m.sum()), f"{np.percentile(lat[m], 50):.2f}", f"{np.percentile(lat[m], 99):.2f}"]
            for name, m in windows.items() if m.any()]
    many = a.workers > 1
    publish("soak_workers" if many else "soak", "Soak: load with a hot swap and a new item"
            + (f", {a.workers} service processes" if many else ""), [
          (f"`python -m serve --workers {a.workers}` (no /events feeder: several processes keep live histories in "
           "Redis only). " if many else "") +
          f"{a.seconds} s at {a.conns} keep-alive connections (Python clients on the same machine), k={a.k}, "
          f"150 known and 50 unknown users. Swap v1 (Flat) -> v2 (HNSW32) at {a.seconds // 3} s: answered "
          f"{events['swap'][0]} in {events['swap_end'] - events['swap_start']:.2f} s; new item added at "
          f"{2 * a.seconds // 3} s: answered {events['add'][0]} in {events['add_end'] - events['add_start']:.2f} s.", "",
          table(["window", "requests", "p50 ms", "p99 ms"], rows), "",
          table(["check", "result"], [
              ["requests", f"{len(log):,}"],
              ["non-2xx or transport errors", f"{len(bad_status)}"],
              ["live queries (POST /candidates with 5 fresh events) among them",
               f"{sum(isinstance(r[4], int) for r in log):,}"],
              ["events posted to /events for new users (non-2xx, errors)",
               f"{fed['posted']:,} ({fed['non-2xx']}, {fed['errors']})"],
              ["users evicted from the in-memory live store (cap 2,000)", evicted],
              ["answers not equal to their version's own answer (mixed or wrong)", f"{len(mixed)}"],
              ["answers started after the swap (or the add) answered that carry an older version", f"{len(stale)}"],
              ["the swap's and the add's answers: processes that applied them",
               "; ".join(f"{k}: {json.loads(events[k][1]).get('processes')}" for k in ("swap", "add")
                         if events[k][0] == 200)],
              ["resident memory before / after", f"{rss_before:,.0f} MiB / {rss_after:,.0f} MiB"]]), ""])
    if bad_status or mixed or stale or fed["non-2xx"] or fed["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
