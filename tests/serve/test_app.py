"""The candidates service through TestClient (lifespan on): answers, bad requests, admin, swap, new items."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from helpers import AUTH, TOKEN

from index.artifact import read_manifest
from serve.app import create_app
from serve.settings import Settings


def known_users(root, n=5):
    return pq.read_table(root / "v1" / "users.parquet", columns=["user_id"]).column("user_id").to_pylist()[:n]


def test_response_shape_and_exact_answer(client, root):
    user = known_users(root)[0]
    r = client.get("/candidates", params={"user": str(user), "k": 7})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"user", "k", "model_version", "fallback", "candidates"}
    assert body["user"] == user and body["k"] == 7 and body["fallback"] is None
    assert body["model_version"] == read_manifest(root / "v1").model_version
    cands = body["candidates"]
    assert len(cands) == 7 and all(isinstance(c["item_id"], int) for c in cands)  # ids typed as in the data
    scores = [c["score"] for c in cands]
    assert scores == sorted(scores, reverse=True)
    # Exactly the brute-force top 7 of the user's full scores: the best interest's inner product, and history
    # items' own scores.
    users = pq.read_table(root / "v1" / "users.parquet")
    items = pq.read_table(root / "v1" / "items.parquet")
    iv = np.stack(items.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
    m = read_manifest(root / "v1")
    u = np.asarray(users.column("vector")[0].as_py(), np.float32).reshape(m.interests, iv.shape[1])
    assert m.interests == 2  # tiny.yaml: the served path with several user vectors
    full = (iv @ u.T).max(1)
    hist = users.column("history")[0].as_py()
    full[hist] = users.column("history_score")[0].as_py()
    top = np.argsort(-full, kind="stable")[:7]
    assert [c["item_id"] for c in cands] == items.column("item_id").to_numpy()[top].tolist()
    assert np.allclose(scores, full[top], atol=1e-5)


def test_default_k_and_unknown_user_fallback(client, root):
    body = client.get("/candidates", params={"user": "someone-new"}).json()
    assert body["fallback"] == "popular" and body["user"] == "someone-new"
    pop = pq.read_table(root / "v1" / "popular.parquet")
    assert [c["item_id"] for c in body["candidates"]] == pop.column("item_id").to_pylist()[:100]
    assert body["k"] == 100
    assert client.get("/candidates", params={"user": "999999999"}).json()["fallback"] == "popular"
    assert "retrieval_fallback_total 2.0" in client.get("/metrics").text


@pytest.mark.parametrize("query, loc", [
    ("", "user"), ("k=5", "user"), ("user=1&k=0", "k"), ("user=1&k=1001", "k"), ("user=1&k=abc", "k"),
    ("user=1&k=2.5", "k"), ("user=", "user"), ("user=1&K=5", "K"), ("user=1&user=2", "user"),
    ("user=1&exclude_purchased=maybe", "exclude_purchased"), ("user=" + "x" * 300, "user"),
])
def test_bad_requests_get_422_naming_the_parameter(client, query, loc):
    r = client.get(f"/candidates?{query}")
    assert r.status_code == 422
    assert any(d["loc"][-1] == loc for d in r.json()["detail"]), r.json()


def test_exclude_purchased(client, root):
    users = pq.read_table(root / "v1" / "users.parquet")
    items = pq.read_table(root / "v1" / "items.parquet", columns=["item_id"]).column("item_id").to_numpy()
    bought = users.column("purchased").to_pylist()
    row = next(i for i, b in enumerate(bought) if b)
    uid, own = users.column("user_id")[row].as_py(), set(items[bought[row]].tolist())
    k = 200  # the whole tiny catalogue: everything the user bought is in the plain answer
    plain = [c["item_id"] for c in client.get("/candidates", params={"user": uid, "k": k}).json()["candidates"]]
    assert own <= set(plain)
    ex = client.get("/candidates", params={"user": uid, "k": 20, "exclude_purchased": "true"}).json()["candidates"]
    got = [c["item_id"] for c in ex]
    assert len(got) == 20 and not own & set(got)
    assert got == [i for i in plain if i not in own][:20]


def test_health_ready_metrics_docs(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    client.get("/candidates", params={"user": "1", "k": 3})
    text = client.get("/metrics").text
    assert 'retrieval_requests_total{endpoint="/candidates",status="200"}' in text
    assert "retrieval_request_seconds_bucket" in text and "retrieval_artifact_info{model_version=" in text
    assert client.get("/docs").status_code == 200
    assert "/candidates" in client.get("/openapi.json").json()["paths"]


def test_admin_requires_token_and_is_off_without_one(root):
    with TestClient(create_app(Settings(artifacts=root / "v1"))) as c:
        r = c.post("/admin/swap", json={"path": "v2"}, headers=AUTH)
        assert r.status_code == 403 and "disabled" in r.json()["detail"]
    with TestClient(create_app(Settings(artifacts=root / "v1", admin_token=TOKEN))) as c:
        assert c.post("/admin/swap", json={"path": "v2"}).status_code == 401
        assert c.post("/admin/swap", json={"path": "v2"}, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.post("/admin/swap", json={"path": "../../etc"}, headers=AUTH).status_code == 422
        assert c.post("/admin/swap", json={"path": "/etc"}, headers=AUTH).status_code == 422


def test_model_is_loaded_and_checked_with_the_artifact_before_ready(root):
    """The model in model.pt (the towers that embed added items) loads with the artifact, at start and on a swap,
    so a first add does not pay for it and an artifact whose model cannot load never serves."""
    with TestClient(create_app(Settings(artifacts=root / "v1"))) as c:
        assert c.get("/readyz").status_code == 200
        assert c.app.state.service.served.model.model.embedding_dim == read_manifest(root / "v1").embedding_dim
    with TestClient(create_app(Settings(artifacts=root / "v1", admin_token=TOKEN))) as c:
        first = c.app.state.service.served.model
        assert c.post("/admin/swap", json={"path": "v2"}, headers=AUTH).status_code == 200
        served = c.app.state.service.served
        assert served.path.name == "v2" and served.model is not first


def test_hot_swap_under_concurrent_requests(client, root):
    """Requests keep flowing while versions swap: no failure, and every answer is wholly one version's."""
    users = [str(u) for u in known_users(root, 20)]
    expected = {}
    for v in ("v1", "v2"):
        with TestClient(create_app(Settings(artifacts=root / v))) as c:
            for u in users:
                b = c.get("/candidates", params={"user": u, "k": 50}).json()
                expected[(b["model_version"], u)] = b["candidates"]
    errors, seen = [], set()
    stop = threading.Event()

    def hammer():
        i = 0
        while not stop.is_set():
            u = users[i % len(users)]
            i += 1
            r = client.get("/candidates", params={"user": u, "k": 50})
            if r.status_code != 200:
                errors.append(r.status_code)
                continue
            b = r.json()
            seen.add(b["model_version"])
            if b["candidates"] != expected[(b["model_version"], u)]:
                errors.append(("mixed", b["model_version"], u))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for path in ("v2", "v1", "v2", "v1"):
        assert client.post("/admin/swap", json={"path": path}, headers=AUTH).status_code == 200
    stop.set()
    for t in threads:
        t.join()
    assert errors == [] and len(seen) == 2


@pytest.mark.parametrize("damage", ["corrupt_index", "missing_file", "dim_mismatch", "no_manifest", "no_history_column"])
def test_bad_artifact_is_refused_and_old_keeps_serving(client, root, tmp_path, damage):
    bad = root / f"bad-{damage}"
    shutil.rmtree(bad, ignore_errors=True)
    shutil.copytree(root / "v2", bad)
    if damage == "corrupt_index":
        data = (bad / "index.faiss").read_bytes()
        (bad / "index.faiss").write_bytes(data[:100] + b"\x00" * (len(data) - 100))
    elif damage == "missing_file":
        (bad / "users.parquet").unlink()
    elif damage == "no_history_column":  # a format-1 users.parquet under a format-2 manifest with matching sizes
        users = pq.read_table(bad / "users.parquet").drop_columns(["history", "history_score"])
        pq.write_table(users, bad / "users.parquet")
        m = json.loads((bad / "manifest.json").read_text())
        m["files"]["users.parquet"] = (bad / "users.parquet").stat().st_size
        (bad / "manifest.json").write_text(json.dumps(m))
    elif damage == "dim_mismatch":
        m = json.loads((bad / "manifest.json").read_text())
        m["embedding_dim"] += 16
        (bad / "manifest.json").write_text(json.dumps(m))
    else:
        (bad / "manifest.json").unlink()
    before = client.get("/candidates", params={"user": "1", "k": 5}).json()
    r = client.post("/admin/swap", json={"path": bad.name}, headers=AUTH)
    assert r.status_code == 409 and "still serving" in r.json()["detail"]
    assert client.get("/candidates", params={"user": "1", "k": 5}).json() == before
    assert "retrieval_swap_failures_total 1.0" in client.get("/metrics").text


def test_new_item_is_embedded_and_retrievable(client, root):
    items = pq.read_table(root / "v1" / "items.parquet", columns=["item_id"]).column("item_id").to_pylist()
    new = {"item_id": 7_777_777, "category": "c1", "brand": "b9", "price": 30.0, "rating": 4.5}
    r = client.post("/admin/items", json={"items": [new]}, headers=AUTH)
    assert r.status_code == 200 and r.json()["n_items"] == len(items) + 1
    served = client.app.state.service.served
    vec = served.index.reconstruct(len(items))
    users = pq.read_table(root / "v1" / "users.parquet")
    uv = np.stack(users.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
    uv = uv.reshape(len(uv), -1, len(vec))  # [U, K, D]: K interests
    fit = (uv @ vec).max(1)  # each user's best interest's score of the new item
    best = int(np.argmax(fit))  # the user this item suits best must get it back
    uid = users.column("user_id")[best].as_py()
    cands = client.get("/candidates", params={"user": uid, "k": 1000}).json()["candidates"]
    hit = [c for c in cands if c["item_id"] == 7_777_777]
    assert hit and hit[0]["score"] == pytest.approx(float(fit[best]), abs=1e-5)
    # Duplicates, missing ids and missing features are refused with a reason.
    assert client.post("/admin/items", json={"items": [new]}, headers=AUTH).status_code == 422
    assert client.post("/admin/items", json={"items": [{"category": "c1"}]}, headers=AUTH).status_code == 422
    r = client.post("/admin/items", json={"items": [{"item_id": 8, "category": "c1"}]}, headers=AUTH)
    assert r.status_code == 422 and "missing feature" in r.json()["detail"]
