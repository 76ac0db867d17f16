"""A normal client's latency, quiet and beside a hostile client, on the real service (bounded, loopback only).

    python bench/hostile.py [--checkpoint CKPT] [--seconds 15] [--rounds 4] [--pin] [--port 8767]

Builds a Flat artifact from the checkpoint (default: the newest demo checkpoint), starts two `python -m serve` on
127.0.0.1 (the defaults as shipped, and the admission of new connections off) and, against each, measures one
keep-alive client asking for candidates back to back: alone, and while a second process attacks, in alternating
rounds (the machine's drift falls on every condition alike). The attack is what the adversarial pass used: GETs
with 12,000 parameter names, 30 MB bodies to the admin endpoint without a token (declared and chunked), 200
silent connections and 100 slowloris connections (a header byte every 0.5 s), each reopened when the server
closes it. Every loop stops by itself after the phase. Writes the "hostile" section of docs/benchmarks.md
("hostile-pinned" with --pin); exits 1 when the normal client's p99 beside the attack is over 2x its quiet p99
on the service as shipped, or any of its requests failed.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing as mp
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import ROOT, publish, table  # noqa: E402
from bench.serve_load import rss_mib, wait_ready  # noqa: E402
from index.build import build  # noqa: E402
from serve.settings import Settings  # noqa: E402

TOKEN = "hostile-bench-token"


def run_delay_ns(fd: int) -> int:
    """Nanoseconds this thread has spent runnable but waiting for a CPU (the second field of its schedstat)."""
    return int(os.pread(fd, 128, 0).split()[1])


def normal(port: int, seconds: float, realtime: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """Latencies (ms) of back-to-back requests on one connection, the part of each the client itself spent
    waiting for a CPU (ms; the attacker's loops on its core cause it, not the server), and the count of failures.
    realtime: the loop runs under SCHED_FIFO, ahead of any ordinary process on its CPU, and only the loop: a
    process spawned meanwhile would inherit it."""
    if realtime:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
    lat, waited, failed, end, i = [], [], 0, time.monotonic() + seconds, 0
    while time.monotonic() < end:
        w = run_delay_ns(fd)
        t = time.perf_counter()
        try:
            conn.request("GET", f"/candidates?user={i % 500}&k=100")
            r = conn.getresponse()
            r.read()
            failed += r.status != 200
        except (OSError, http.client.HTTPException):
            failed += 1
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        lat.append((time.perf_counter() - t) * 1e3)
        waited.append((run_delay_ns(fd) - w) / 1e6)
        i += 1
    os.close(fd)
    conn.close()
    if realtime:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    return np.array(lat), np.array(waited), failed


def _big_bodies(port: int, end: float) -> dict[str, int]:
    """30 MB to /admin/items without a token: declared (Content-Length) and chunked; statuses counted."""
    seen: dict[str, int] = {}
    chunk = b"x" * 65536
    while time.monotonic() < end:
        for chunked in (False, True):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                head = b"POST /admin/items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                head += b"Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {30 << 20}\r\n\r\n".encode()
                s.sendall(head)
                sent = 0
                while sent < 30 << 20 and time.monotonic() < end:
                    s.sendall(b"10000\r\n" + chunk + b"\r\n" if chunked else chunk)
                    sent += len(chunk)
                    s.settimeout(0.0)
                    try:
                        if s.recv(1, socket.MSG_PEEK):
                            break  # the server answered before the body was sent
                    except BlockingIOError:
                        pass
                    s.settimeout(5)
                s.settimeout(5)
                status = s.recv(64).split(b" ")[1].decode()
                key = f"30 MB body ({'chunked' if chunked else 'declared'}): {status}"
                seen[key] = seen.get(key, 0) + 1
                s.close()
            except (OSError, IndexError):
                key = f"30 MB body ({'chunked' if chunked else 'declared'}): no answer"
                seen[key] = seen.get(key, 0) + 1
    return seen


def _slow_and_silent(port: int, end: float, silent: int, slow: int) -> int:
    """Hold ``silent`` connections that send nothing and ``slow`` that send a header byte every 0.5 s, reopening
    each when the server closes it; returns how many times the server closed one."""
    header = b"GET /candidates?user=1 HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 10_000

    def opened() -> socket.socket | None:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            s.setblocking(False)
            return s
        except OSError:
            return None

    conns = [[opened(), 0, kind] for kind in ["silent"] * silent + ["slow"] * slow]
    closed = 0
    while time.monotonic() < end:
        for c in conns:
            s = c[0]
            if s is None:
                c[0], c[1] = opened(), 0
                continue
            try:
                if s.recv(1024) == b"":
                    raise ConnectionResetError
            except BlockingIOError:
                if c[2] == "slow" and c[1] < len(header):
                    try:
                        s.send(header[c[1]: c[1] + 1])
                        c[1] += 1
                    except OSError:
                        pass
                continue
            except OSError:
                pass
            closed += 1
            s.close()
            c[0], c[1] = opened(), 0
        time.sleep(0.5)
    for c in conns:
        if c[0] is not None:
            c[0].close()
    return closed


def attack(port: int, seconds: float, cpus: set[int] | None, out) -> None:
    """The hostile client: its loops in threads of one process, each ending after ``seconds``."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    end = time.monotonic() + seconds
    result: dict = {}

    def params():
        query = "user=1&" + "&".join(f"{i:x}" for i in range(12_000))
        while time.monotonic() < end:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                c.request("GET", f"/candidates?{query}")
                status = c.getresponse().status
                result[f"12,000 parameters: {status}"] = result.get(f"12,000 parameters: {status}", 0) + 1
                c.close()
            except (OSError, http.client.HTTPException):
                result["12,000 parameters: no answer"] = result.get("12,000 parameters: no answer", 0) + 1

    def bodies():
        result.update(_big_bodies(port, end))

    def slow():
        result["connections closed by the server (silent or slowloris)"] = _slow_and_silent(port, end, 200, 100)

    threads = [threading.Thread(target=f) for f in (params, bodies, slow)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(result)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--seconds", type=float, default=15, help="the normal client's time in each of the two conditions")
    p.add_argument("--rounds", type=int, default=4, help="quiet and attacked phases alternate this many times")
    p.add_argument("--port", type=int, default=8767)
    p.add_argument("--pin", action="store_true", help=(
        "server alone on CPU 0; the normal client (under SCHED_FIFO) and the attacker share CPU 1: the server's "
        "handling of hostile requests is then what the normal client feels, not the attacker's own loops"))
    a = p.parse_args()
    if a.pin and (os.cpu_count() or 1) < 2:
        sys.exit("--pin needs 2 CPUs")
    if a.pin:
        try:  # the normal client's loop will need it: fail now, not after the services started
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        except PermissionError:
            sys.exit("--pin runs the normal client under SCHED_FIFO: it needs root or CAP_SYS_NICE")
    found = list((ROOT / "work").glob("demo/runs/demo/version_*/checkpoints/best.ckpt"))
    if not a.checkpoint and not found:
        sys.exit("no checkpoint: run `make demo` first or pass --checkpoint")
    ckpt = a.checkpoint or str(max(found, key=lambda x: x.stat().st_mtime))
    art = Path(tempfile.mkdtemp(prefix="hostile-")) / "v1"
    m = build(ckpt, art, "Flat", progress=False)
    pin = ["taskset", "-c", "0"] if a.pin else []
    # Two services on the same artifact: the defaults as shipped, and the same with the admission of new
    # connections off, so that one run compares them; only one of them is under load at a time.
    servers = {"as shipped": a.port, "admission off": a.port + 1}
    procs = [subprocess.Popen([*pin, sys.executable, "-m", "serve", "--artifacts", str(art), "--port", str(port),
                               "--admin_token", TOKEN, "--log_level", "error"], cwd=ROOT,
                              env={**os.environ, **({"RETRIEVAL_CONNECTION_RATE": "0"} if name == "admission off"
                                                    else {})})
             for name, port in servers.items()]
    if a.pin:
        os.sched_setaffinity(0, {1})
    phase = a.seconds / a.rounds
    lat = {(name, cond): [] for name in servers for cond in ("quiet", "attacked")}
    waited = {key: [] for key in lat}
    failed = dict.fromkeys(lat, 0)
    seen: dict[str, dict[str, int]] = {name: {} for name in servers}
    try:
        for port in servers.values():
            wait_ready(port)
            normal(port, 2, a.pin)  # warm-up
        for _ in range(a.rounds):  # interleaved, so that the machine's drift falls on every condition alike
            for name, port in servers.items():
                x, w, f = normal(port, phase, a.pin)
                lat[name, "quiet"].append(x)
                waited[name, "quiet"].append(w)
                failed[name, "quiet"] += f
                queue = mp.get_context("spawn").Queue()
                hostile = mp.get_context("spawn").Process(target=attack, args=(port, phase + 1,
                                                                               {1} if a.pin else None, queue))
                hostile.start()
                time.sleep(1)  # the attack under way
                x, w, f = normal(port, phase, a.pin)
                lat[name, "attacked"].append(x)
                waited[name, "attacked"].append(w)
                failed[name, "attacked"] += f
                for key, n in queue.get(timeout=phase + 30).items():
                    seen[name][key] = seen[name].get(key, 0) + n
                hostile.join()
                time.sleep(1)  # the attacker's connections closed
        rss = rss_mib(procs[0].pid)
        for name, port in servers.items():
            scraped = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            for metric, label in (("delayed", "new connections paced (waited for their turn)"),
                                  ("refused", "new connections refused unread (429)")):
                found = re.search(rf"^retrieval_connections_{metric}_total (\S+)$", scraped, re.M)
                seen[name][f"server: {label}"] = int(float(found.group(1)))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
    lat = {key: np.concatenate(x) for key, x in lat.items()}
    waited = {key: np.concatenate(x) for key, x in waited.items()}
    p99 = {key: np.percentile(x, 99) for key, x in lat.items()}
    ratio = {name: p99[name, "attacked"] / p99[name, "quiet"] for name in servers}
    rows = [[name, cond, f"{len(x):,}", f"{np.percentile(x, 50):.2f}", f"{p99[name, cond]:.2f}",
             f"{np.percentile(waited[name, cond], 99):.2f}", f"{failed[name, cond]}"] for (name, cond), x in lat.items()]
    ok = ratio["as shipped"] <= 2 and not any(failed.values())
    d = Settings(artifacts=art)  # the defaults the service ran with
    kinds = sorted(set(seen["as shipped"]) | set(seen["admission off"]))
    publish("hostile-pinned" if a.pin else "hostile",
            "Hostile client: a normal client's latency beside an attack" + (" (pinned)" if a.pin else ""), [
        f"Two services on the demo-world artifact ({m.n_items:,} items, Flat, {m.interests} interest vectors), one "
        f"process each: one with the default limits as shipped (new connections: {d.connection_rate:g} a second "
        f"per address after {d.connection_burst} at once, then paced, refused beyond {d.connection_max_wait_s:g} s "
        "of waiting: serve/admission.py), one the same with that admission off. Against each in turn, one "
        f"keep-alive client asks for k=100 back to back, {a.seconds:g} s alone and {a.seconds:g} s beside a second "
        f"process ({a.rounds} rounds, alternating) that, as fast as it can, sends GETs with 12,000 parameter names, "
        "30 MB bodies to /admin/items without a token (declared and chunked), and holds 200 silent and 100 "
        "slowloris connections, each hostile request on a new connection from the normal client's address. "
        + ("Pinned: the services on CPU 0; the normal client and the attacker on CPU 1, the normal client's loop "
           "under SCHED_FIFO so that the attacker's loops run only while it waits for an answer: the figure is "
           "what the server's handling of hostile requests costs a normal client." if a.pin else
           "Client, attacker and server share the machine's cores (the attacker's own loops take CPU from both)."), "",
        table(["service", "normal client", "requests", "p50 ms", "p99 ms", "client's own CPU wait p99 ms", "failed"],
              rows), "",
        "The client's own CPU wait: per request, the time the normal client was ready to run but waited for a CPU "
        "(its thread's run delay in /proc/thread-self/schedstat), a part of its latency the server does not cause.",
        "",
        f"p99 beside the attack / quiet p99: **{ratio['as shipped']:.2f}x** as shipped (goal: at most 2x: "
        f"{'met' if ratio['as shipped'] <= 2 else 'not met'}), {ratio['admission off']:.2f}x with the admission "
        f"off. Resident memory of the service as shipped after the attacks: {rss:,.0f} MiB.", "",
        table(["what the hostile client got", "as shipped", "admission off"],
              [[k, f"{seen['as shipped'].get(k, 0):,}", f"{seen['admission off'].get(k, 0):,}"] for k in kinds]), ""])
    if not ok:
        sys.exit(1)

if __name__ == "__main__":
    main()
