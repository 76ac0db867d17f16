"""What a hostile client can send: bounded work, auth before the body, slow clients closed (a real server)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from helpers import AUTH, ROOT, TOKEN, free_port

from serve.app import create_app
from serve.settings import Settings


def test_many_parameters_are_refused_whole_with_a_small_error(client):
    huge = "user=1&" + "&".join(f"{i:x}" for i in range(12_000))  # ~60 KB of distinct names
    r = client.get(f"/candidates?{huge}")
    assert r.status_code == 414 and len(r.content) < 1024  # refused before the query is parsed
    many = "user=1&" + "&".join(f"p{i}" for i in range(40))
    r = client.get(f"/candidates?{many}")
    assert r.status_code == 422 and len(r.content) < 1024
    assert [d["type"] for d in r.json()["detail"]] == ["too_many_parameters"]
    long_name = client.get("/candidates", params={"user": "1", "x" * 3000: "1"})
    assert long_name.status_code == 422 and len(long_name.content) < 1024  # the name is echoed cut short
    assert client.get("/healthz").status_code == 200


def test_admin_checks_the_token_before_reading_the_body(root):
    with TestClient(create_app(Settings(artifacts=root / "v1", admin_token=TOKEN))) as c:
        # Not JSON at all: a wrong or missing token is what the answer says, so the body was never parsed.
        assert c.post("/admin/items", content=b"{not json", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.post("/admin/swap", content=b"\xff" * 1000).status_code == 401
        assert c.post("/admin/swap", content=b"{not json", headers=AUTH).status_code == 422
    with TestClient(create_app(Settings(artifacts=root / "v1"))) as c:  # admin disabled: 403, body unread
        assert c.post("/admin/items", content=b"{not json", headers=AUTH).status_code == 403


def test_bodies_over_the_limit_are_refused_unread(root):
    with TestClient(create_app(Settings(artifacts=root / "v1", admin_token=TOKEN, max_body_bytes=4096))) as c:
        big = b'{"items": [' + b'{"item_id": 1},' * 2000 + b'{"item_id": 2}]}'
        r = c.post("/admin/items", content=big, headers={**AUTH, "content-type": "application/json"})
        assert r.status_code == 413 and "4096" in r.json()["detail"]  # declared length: refused unread
        assert c.post("/admin/items", content=big).status_code == 401  # no token: refused before the size

        def chunks():  # no Content-Length: counted as it streams in, refused once past the limit
            for _ in range(100):
                yield b" " * 1000

        r = c.post("/admin/swap", content=chunks(), headers=AUTH)
        assert r.status_code == 413
        assert c.post("/admin/swap", json={"path": "v2"}, headers=AUTH).status_code == 200  # small bodies pass
        text = c.get("/metrics").text
        assert 'retrieval_requests_total{endpoint="/admin/items",status="413"} 1.0' in text
        assert 'retrieval_requests_total{endpoint="/admin/swap",status="413"} 1.0' in text


def test_bearer_scheme_is_required_and_case_insensitive(root):
    with TestClient(create_app(Settings(artifacts=root / "v1", admin_token=TOKEN))) as c:
        assert c.post("/admin/swap", json={"path": "v2"}, headers={"Authorization": TOKEN}).status_code == 401
        assert c.post("/admin/swap", json={"path": "v2"}, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
        assert c.post("/admin/swap", json={"path": "v2"}, headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
        assert c.post("/admin/swap", json={"path": "v1"}, headers={"Authorization": f"BEARER  {TOKEN}"}).status_code == 200


def test_max_k_bounds_the_default_k(root):
    with TestClient(create_app(Settings(artifacts=root / "v1", max_k=50))) as c:
        body = c.get("/candidates", params={"user": "someone-new"}).json()
        assert body["k"] == 50 and len(body["candidates"]) == 50
        assert c.get("/candidates", params={"user": "someone-new", "k": 51}).status_code == 422
    with pytest.raises(ValueError, match="default_k"):
        Settings(artifacts=root / "v1", max_k=50, default_k=100)


@pytest.fixture(scope="module")
def server(root):
    """`python -m serve` on a free port with 1 s header and body deadlines."""
    port = free_port()
    env = {**os.environ, "RETRIEVAL_HEADER_TIMEOUT_S": "1", "RETRIEVAL_BODY_TIMEOUT_S": "1",
           "RETRIEVAL_ADMIN_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "serve", "--artifacts", str(root / "v1"), "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise AssertionError("the service did not become ready")
        yield port, base
    finally:
        proc.terminate()
        proc.wait(10)


def closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> float | None:
    """Seconds until the server closes ``sock`` (sending ``trickle`` a byte each 0.2 s meanwhile), or None."""
    start = time.monotonic()
    sock.settimeout(0.2)
    i = 0
    while time.monotonic() - start < seconds:
        try:
            if sock.recv(1024) == b"":
                return time.monotonic() - start
        except TimeoutError:
            pass
        except ConnectionResetError:
            return time.monotonic() - start
        if i < len(trickle):
            try:
                sock.send(trickle[i:i + 1])
            except OSError:
                return time.monotonic() - start
            i += 1
    return None


def test_silent_and_slow_clients_are_closed_while_others_are_answered(server):
    port, base = server
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    slow = socket.create_connection(("127.0.0.1", port))
    header = b"GET /candidates?user=1 HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 200
    # The slow client sends a header byte every 0.2 s: still closed at the deadline, though bytes keep coming.
    took = closed_within(slow, 5, trickle=header)
    assert took is not None and took < 3, took
    assert httpx.get(f"{base}/candidates", params={"user": "1", "k": 3}, timeout=2).status_code == 200
    assert all(closed_within(s, 3) is not None for s in silent)
    for s in [*silent, slow]:
        s.close()


def test_a_body_that_never_arrives_gets_408(server):
    port, _ = server
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /admin/swap HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                  + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        s.settimeout(5)
        assert s.recv(1024).startswith(b"HTTP/1.1 408")


def test_an_overlong_request_target_is_refused_while_it_arrives(server):
    port, base = server
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /candidates?user=1&" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        head, _, body = s.recv(4096).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 414")
        length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1])
        assert length == len(body) and b"8192" in body  # a well-formed answer: its length is the body's
    assert httpx.get(f"{base}/candidates", params={"user": "1", "k": 3}, timeout=2).status_code == 200
