"""The Redis live store against a real redis-server: shared by service processes, kept across a SIGKILL.

The server is started here; where redis-server is missing the tests fail in CI (CI=true) and skip elsewhere
(`make setup` installs it)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import pyarrow.parquet as pq
import pytest
import redis
from fastapi.testclient import TestClient
from helpers import AUTH, ROOT, TOKEN, free_port

from serve.app import create_app
from serve.live_store import RedisStore
from serve.settings import Settings


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    exe = shutil.which("redis-server")
    if exe is None:
        msg = "redis-server is not installed (make setup installs Debian's redis-server)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    port, folder = free_port(), tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                             "--appendfsync", "always", "--dir", str(folder)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail("redis-server did not start")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def start(root, redis_url: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "RETRIEVAL_REDIS_URL": redis_url, "RETRIEVAL_EVENTS_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "serve", "--artifacts", str(root / "v1"), "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the service did not become ready")


def test_processes_share_live_events_and_keep_them_across_a_sigkill(root, redis_url):
    items = pq.read_table(root / "v1" / "items.parquet", columns=["item_id"]).column("item_id").to_pylist()
    plain = [{"item_id": items[i], "event": "view", "ts": 1_700_000_000 + 30 * i} for i in (4, 8, 15)]
    a, base_a = start(root, redis_url)
    b, base_b = start(root, redis_url)
    try:
        assert httpx.get(f"{base_b}/candidates", params={"user": "900123"}).json()["fallback"] == "popular"
        r = httpx.post(f"{base_a}/events", json={"events": [{"user_id": 900_123, **e} for e in plain]}, headers=AUTH)
        assert r.status_code == 200 and r.json()["store"] == "redis"
        want = httpx.post(f"{base_a}/candidates", json={"k": 20, "events": plain}).json()["candidates"]
        got = httpx.get(f"{base_b}/candidates", params={"user": "900123", "k": 20}).json()  # the other process
        assert got["fallback"] is None and got["candidates"] == want
        a.send_signal(signal.SIGKILL)  # every accepted event is in Redis already
        a.wait(10)
        a, base_a = start(root, redis_url)
        again = httpx.get(f"{base_a}/candidates", params={"user": "900123", "k": 20}).json()
        assert again["fallback"] is None and again["candidates"] == want
    finally:
        for p in (a, b):
            p.kill()
            p.wait(10)


def test_the_service_refuses_to_start_without_its_redis(root):
    port = free_port()  # nothing listens there
    r = subprocess.run([sys.executable, "-m", "serve", "--artifacts", str(root / "v1"), "--port", str(free_port())],
                       cwd=ROOT, env={**os.environ, "RETRIEVAL_REDIS_URL": f"redis://127.0.0.1:{port}/0"},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "Redis at redis://127.0.0.1" in r.stderr and "Traceback" not in r.stderr


def test_reads_of_one_round_share_one_round_trip(redis_url):
    """Users read in one round of the event loop come back from one pipeline, each with their own events."""

    async def go():
        store = RedisStore(redis_url, per_user=5, prefix="test:coalesce:")
        await store.append({"a": [{"x": 1}], "b": [{"x": i} for i in range(2, 9)]})
        got = await asyncio.gather(store.get("a"), store.get("b"), store.get("nobody"), store.get("a"))
        together = store.round_trips
        alone = await store.get("b")
        trips = store.round_trips
        await store.close()
        return got, together, alone, trips

    got, together, alone, trips = asyncio.run(go())
    assert got == [[{"x": 1}], [{"x": i} for i in range(4, 9)], [], [{"x": 1}]]  # the last 5 of b's 7
    assert together == 1 and alone == got[1] and trips == 2


def test_a_failed_read_reaches_every_request_of_its_round():
    async def go():
        store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", per_user=5)  # nothing listens there
        out = await asyncio.gather(store.get("a"), store.get("b"), return_exceptions=True)
        await store.close()
        return out

    assert all(isinstance(r, redis.exceptions.ConnectionError) for r in asyncio.run(go()))


def test_requests_that_need_a_redis_that_went_away_get_503(root, tmp_path):
    """Redis stops under a running service: a known user's answer (their live events unknown) and new events
    (not stored) get 503 saying so, never an answer without them or an event that looks accepted."""
    port = free_port()
    proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        app = create_app(Settings(artifacts=root / "v1", redis_url=f"redis://127.0.0.1:{port}/0", events_token=TOKEN))
        with TestClient(app) as c:
            assert c.get("/candidates", params={"user": "900123"}).status_code == 200
            proc.terminate()
            proc.wait(10)
            r = c.get("/candidates", params={"user": "900123"})
            assert r.status_code == 503 and "live store (Redis)" in r.json()["detail"]
            items = pq.read_table(root / "v1" / "items.parquet", columns=["item_id"]).column("item_id").to_pylist()
            r = c.post("/events", json={"events": [{"user_id": 1, "item_id": items[0], "event": "view", "ts": 1}]},
                       headers=AUTH)
            assert r.status_code == 503
            assert c.get("/healthz").status_code == 200
    finally:
        proc.kill()
        proc.wait(10)
