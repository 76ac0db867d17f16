"""Several workers, one catalogue: admin operations reach every process through the journal (serve/journal.py).

In-process, each app stands for a worker (its own event loop, state and follower); the slow test runs the real
``python -m serve --workers 2``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import AUTH, ROOT, TOKEN, free_port

from index.artifact import read_manifest
from serve.__main__ import check, worker_env
from serve.app import create_app
from serve.journal import Journal, replay_from
from serve.settings import Settings

NEW = {"item_id": 7_777_777, "category": "c1", "brand": "b9", "price": 30.0, "rating": 4.5}


def worker(root: Path, control: Path, workers: int = 2) -> TestClient:
    return TestClient(create_app(Settings(artifacts=root / "v1", admin_token=TOKEN, control_dir=control,
                                          workers=workers, journal_poll_s=0.02, sync_timeout_s=10)))


def versions(clients: list[TestClient], user: str = "1") -> list[str]:
    return [c.get("/candidates", params={"user": user, "k": 3}).json()["model_version"] for c in clients]


def test_swap_and_add_reach_every_worker_and_a_late_one_replays_them(root, tmp_path):
    v1, v2 = read_manifest(root / "v1").model_version, read_manifest(root / "v2").model_version
    with ExitStack() as stack:
        a, b = (stack.enter_context(worker(root, tmp_path)) for _ in range(2))
        assert versions([a, b]) == [v1, v1]
        r = a.post("/admin/swap", json={"path": "v2"}, headers=AUTH)
        assert r.status_code == 200
        assert r.json()["processes"] == {"applied": 2, "of": 2, "versions": [v2]}  # b applied it before the answer
        assert versions([a, b]) == [v2, v2]
        r = b.post("/admin/items", json={"items": [NEW]}, headers=AUTH)  # the other worker receives this one
        assert r.status_code == 200
        added = r.json()["model_version"]
        assert added.startswith(f"{v2}+1items.") and r.json()["processes"]["versions"] == [added]
        assert versions([a, b]) == [added, added]
        # The item is in a's index too, embedded to the same vector.
        ia, ib = (c.app.state.service.served for c in (a, b))
        assert ia.items.row(7_777_777) == ib.items.row(7_777_777) is not None
        assert (ia.index.reconstruct(ia.index.ntotal - 1) == ib.index.reconstruct(ib.index.ntotal - 1)).all()
        # A refused operation is appended nowhere: the journal still holds two, each worker serves what it had.
        assert a.post("/admin/items", json={"items": [NEW]}, headers=AUTH).status_code == 422
        assert a.post("/admin/swap", json={"path": "missing"}, headers=AUTH).status_code == 409
        assert len(Journal(tmp_path, 2).pending()) == 2
        assert versions([a, b]) == [added, added]
        # A worker that starts now (uvicorn restarting a dead one) replays the journal before it is ready.
        with worker(root, tmp_path) as late:
            assert versions([late]) == [added]
            assert late.app.state.service.served.items.row(7_777_777) is not None


def test_a_worker_that_does_not_follow_is_reported_not_waited_for_forever(root, tmp_path):
    with worker(root, tmp_path, workers=3) as a:  # two of the three workers never start
        t = time.monotonic()
        a.app.state.service.settings.sync_timeout_s = 0.3
        r = a.post("/admin/swap", json={"path": "v2"}, headers=AUTH)
        assert r.status_code == 200 and r.json()["processes"]["applied"] == 1 and r.json()["processes"]["of"] == 3
        assert time.monotonic() - t < 5


def test_one_process_answers_without_a_journal(client):
    r = client.post("/admin/swap", json={"path": "v2"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["processes"]["applied"] == r.json()["processes"]["of"] == 1
    assert client.app.state.service.journal is None


def test_replay_keeps_the_last_swap_and_the_adds_after_it(tmp_path):
    ops = [{"op": "items", "items": [1]}, {"op": "swap", "path": "a"}, {"op": "items", "items": [2]},
           {"op": "swap", "path": "b"}, {"op": "items", "items": [3]}]
    assert replay_from(ops) == ops[3:]
    assert replay_from(ops[:1]) == ops[:1]
    j = Journal(tmp_path, 1)
    with open(j.path, "wb") as f:  # a line another process is still writing is left for the next read
        f.write(b'{"op":"swap","path":"a"}\n{"op":"items","it')
    assert j.pending() == [{"op": "swap", "path": "a"}] and j.applied == 1
    with open(j.path, "ab") as f:
        f.write(b'ems":[2]}\n')
    assert j.pending() == [{"op": "items", "items": [2]}] and j.applied == 2


def get(port: int, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", None if body is None else json.dumps(body).encode(),
                                 {"Content-Type": "application/json", **AUTH})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_two_real_workers_serve_one_version_through_swap_add_and_a_crash(root, tmp_path):
    """`python -m serve --workers 2`: after a swap and an add every answer carries the new version; /metrics sums
    both workers; a worker killed is restarted by uvicorn's supervisor, replays the journal, and serves it too."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serve", "--artifacts", str(root / "v1"), "--port", str(port),
                             "--workers", "2", "--admin_token", TOKEN, "--log_level", "warning"], cwd=ROOT,
                            env={**os.environ, "TMPDIR": str(tmp_path)}, start_new_session=True)

    def acks() -> dict[int, str]:  # worker pid -> the version it acknowledged
        return {a["pid"]: a["model_version"] for p in tmp_path.glob("retrieval-serve-*/ack-*.json")
                if (a := json.loads(p.read_text()))}

    def wait(cond, what: str) -> None:
        deadline = time.time() + 120
        while not cond():
            assert time.time() < deadline, what
            time.sleep(0.2)

    try:
        wait(lambda: len(acks()) == 2, "two workers up")
        wait(lambda: _up(port), "ready")
        swap = get(port, "/admin/swap", {"path": "v2"})
        assert swap["processes"]["applied"] == 2
        added = get(port, "/admin/items", {"items": [NEW]})["model_version"]
        assert set(acks().values()) == {added}
        assert {get(port, "/candidates?user=1&k=3")["model_version"] for _ in range(40)} == {added}
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert len(re.findall(rf'retrieval_artifact_info{{model_version="{re.escape(added)}",pid="\d+"}} 1.0', metrics)) == 2
        first = set(acks())
        os.kill(min(first), signal.SIGKILL)
        wait(lambda: any(pid not in first and v == added for pid, v in acks().items()), "replacement replays")
        assert {get(port, "/candidates?user=1&k=3")["model_version"] for _ in range(40)} == {added}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    assert not list(tmp_path.glob("retrieval-serve-*")), "the journal folder is removed at exit"


def _up(port: int) -> bool:
    try:
        get(port, "/readyz")
        return True
    except OSError:
        return False


def test_several_workers_with_events_and_no_redis_are_refused_at_start(root):
    """Each process would keep its own live histories: a user's next request may reach another."""
    with pytest.raises(SystemExit, match="RETRIEVAL_REDIS_URL"):
        check(Settings(artifacts=root / "v1", workers=2, events_token="t"))
    check(Settings(artifacts=root / "v1", workers=2))  # no /events: nothing to share
    check(Settings(artifacts=root / "v1", workers=1, events_token="t"))


def test_worker_env_carries_every_setting_to_the_spawned_workers(root, tmp_path):
    s = Settings(artifacts=root / "v1", workers=2, admin_token=TOKEN, gpu=True, max_k=50,
                 unlimited_addresses=frozenset({"10.0.0.1", "10.0.0.2"}))
    env = worker_env(s, tmp_path)
    assert env["RETRIEVAL_ADMIN_TOKEN"] == TOKEN and env["RETRIEVAL_CONTROL_DIR"] == str(tmp_path)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        again = Settings()  # what serve.app.from_env reads in each worker
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert again.model_dump(exclude={"control_dir"}) == s.model_dump(exclude={"control_dir"})
    assert again.control_dir == tmp_path
