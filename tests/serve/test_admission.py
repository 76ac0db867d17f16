"""New connections paced per client address (serve/admission.py): the schedule exactly, then a real server."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from helpers import ROOT, free_port

from serve.admission import Admission
from serve.metrics import Metrics


def test_burst_then_one_per_interval_then_refused():
    a = Admission(rate=10, burst=3, max_wait_s=0.35)
    a.metrics = Metrics()
    waits = [a.wait("1.2.3.4", 100.0) for _ in range(8)]  # eight connections at the same instant
    assert waits[:3] == [0.0, 0.0, 0.0]  # the burst
    assert waits[3:6] == pytest.approx([0.1, 0.2, 0.3])  # then one each 1/rate
    assert waits[6:] == [None, None]  # the next turn is 0.4 s away: over max_wait_s
    counted = a.metrics.registry.get_sample_value
    assert (counted("retrieval_connections_delayed_total"), counted("retrieval_connections_refused_total"),
            a.waiting) == (3, 2, 3)
    for _ in range(3):
        a.done_waiting()
    assert a.wait("5.6.7.8", 100.0) == 0.0  # another address has its own schedule
    assert a.wait("1.2.3.4", 100.35) == pytest.approx(0.05)  # the next turn is at 100.4: the refusals did not
    a.done_waiting()  # push the schedule on
    assert [a.wait("1.2.3.4", 102.0) for _ in range(4)] == [0.0, 0.0, 0.0, pytest.approx(0.1)]  # a full burst again


@pytest.mark.parametrize("now", [100.0, 67393.788, 1e6 + 0.123])
def test_a_burst_is_not_delayed_by_rounding_on_any_clock(now):
    # 67393.788 is the loop clock at which CI counted the third of a burst of three as delayed (by 1.5e-11 s)
    a = Admission(rate=10, burst=3, max_wait_s=0.3)
    a.metrics = Metrics()
    waits = [a.wait("1.2.3.4", now) for _ in range(6)]
    assert waits[:3] == [0.0, 0.0, 0.0] and waits[3:5] == pytest.approx([0.1, 0.2]) and waits[5] is not None
    assert a.metrics.registry.get_sample_value("retrieval_connections_delayed_total") == 3 and a.waiting == 3


def test_exempt_addresses_rate_zero_and_the_caps():
    a = Admission(rate=10, burst=1, max_wait_s=5, exempt=frozenset({"10.0.0.1"}), max_waiting=2, max_clients=3)
    assert all(a.wait("10.0.0.1", 0.0) == 0.0 for _ in range(100))
    assert a.wait(None, 0.0) == 0.0  # a transport without an address (a Unix socket): not paced
    assert [a.wait("x", 0.0) for _ in range(4)] == [0.0, pytest.approx(0.1), pytest.approx(0.2), None]  # 2 waiting
    assert a.waiting == 2 and a.wait("y", 0.0) == 0.0  # a connection with no wait needs no waiting slot
    a.wait("z", 0.0)
    assert len(a.tat) == 3
    a.wait("w", 10.0)  # the table is full: addresses whose schedule is past are forgotten
    assert set(a.tat) == {"w"}
    assert all(Admission(rate=0, burst=1, max_wait_s=0).wait("x", 0.0) == 0.0 for _ in range(100))
    with pytest.raises(ValueError, match="burst 0"):
        Admission(rate=1, burst=0, max_wait_s=1)


@pytest.fixture(scope="module")
def paced(root):
    """`python -m serve` allowing 10 new connections a second after 3 at once, waiting at most 0.45 s; 127.0.0.2
    unlimited."""
    port = free_port()
    env = {**os.environ, "RETRIEVAL_CONNECTION_RATE": "10", "RETRIEVAL_CONNECTION_BURST": "3",
           "RETRIEVAL_CONNECTION_MAX_WAIT_S": "0.45", "RETRIEVAL_UNLIMITED_ADDRESSES": '["127.0.0.2"]'}
    proc = subprocess.Popen([sys.executable, "-m", "serve", "--artifacts", str(root / "v1"), "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:  # one connection: in the burst
                    s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
                    if b" 200 " in s.recv(4096):
                        break
            except OSError:
                pass
            time.sleep(0.5)  # past any wait the polls above ran up
        else:
            raise AssertionError("the service did not become ready")
        time.sleep(1)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def flood(port: int, n: int, source: str = "127.0.0.1") -> list[tuple[str, float]]:
    """Open ``n`` connections at once, then ask /healthz on each: (status line or 'reset', seconds to answer)."""
    socks = [socket.create_connection(("127.0.0.1", port), source_address=(source, 0)) for _ in range(n)]
    time.sleep(0.05)  # a refused connection has its 429 by now, before it sends anything
    start, out = time.monotonic(), []
    for s in socks:
        s.setblocking(False)
        try:
            early = s.recv(4096, socket.MSG_PEEK)
        except BlockingIOError:
            early = b""
        s.setblocking(True)
        s.settimeout(5)
        if not early:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    for s in socks:
        try:
            line = s.recv(4096).split(b"\r\n")[0].decode()
        except ConnectionResetError:
            line = "reset"
        out.append((line, time.monotonic() - start))
        s.close()
    return out


def test_a_flood_of_new_connections_is_paced_then_refused_while_open_ones_are_answered(paced):
    port = paced
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as kept:  # a keep-alive client of the same address
        assert kept.get("/healthz").status_code == 200
        time.sleep(1)  # its connection's turn is past: the flood starts from a full burst
        with ThreadPoolExecutor(1) as pool:
            flooding = pool.submit(flood, port, 9)
            time.sleep(0.15)  # the flood's connections are waiting for their turns
            t0 = time.monotonic()
            assert kept.get("/candidates", params={"user": "1", "k": 3}).status_code == 200
            assert time.monotonic() - t0 < 0.3  # an open connection is never paced
            got = flooding.result()
    statuses = [line for line, _ in got]
    assert statuses[:7] == ["HTTP/1.1 200 OK"] * 7, got  # the burst of 3, then waits of 0.1 ... 0.4 s
    assert statuses[7:] == ["HTTP/1.1 429 Too Many Requests"] * 2, got  # their turns were 0.5 s away or more
    answered = [t for _, t in got[:7]]
    assert answered[-1] > 0.25 and answered[-1] > answered[2] + 0.2, got  # the waiting ones came in their turns
    time.sleep(1)
    assert all(line == "HTTP/1.1 200 OK" for line, _ in flood(port, 9, source="127.0.0.2"))  # unlimited address
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    counted = {name: float(value) for name, value in re.findall(r"^retrieval_connections_(\w+)_total (\S+)$", metrics, re.M)}
    assert counted == {"delayed": 4.0, "refused": 2.0}, got
