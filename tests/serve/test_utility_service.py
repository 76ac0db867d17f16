"""Heads at query time: the default answer is the conversion head's, with its calibrated probability; a utility
ranks by the weighted sum of calibrated probabilities, exactly as brute force over the artifact's own vectors;
bad utilities and artifacts whose heads disagree are refused, naming what is wrong."""

from __future__ import annotations

import json
import shutil

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from helpers import TOKEN

import serve.store
from index.artifact import ArtifactError, read_manifest
from index.build import build
from retrieval.calibration import Platt
from serve.app import create_app
from serve.load import load_served
from serve.settings import Settings

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def brute_force(folder, user_row: int):
    """Every catalogue item's full score per head for one stored user, from the artifact's files alone."""
    m = read_manifest(folder)
    users = pq.read_table(folder / "users.parquet")
    hist = np.asarray(users.column("history")[user_row].as_py(), np.int64)
    out = {}
    for h, spec in m.heads.items():
        index = faiss.read_index(str(folder / spec["index"]))
        items = index.reconstruct_n(0, index.ntotal)  # [N, D] (Flat: exact)
        col = "vector" if h == "conversion" else f"vector_{h}"
        vecs = np.asarray(users.column(col)[user_row].as_py(), np.float32).reshape(m.interests, -1)
        s = (items @ vecs.T).max(1)
        s[hist] = users.column("history_score" if h == "conversion" else f"history_score_{h}")[user_row].as_py()
        out[h] = s
    return out, {h: Platt.from_dict(spec["calibration"]) for h, spec in m.heads.items()}


def user_id(folder, row: int) -> str:
    return str(pq.read_table(folder / "users.parquet", columns=["user_id"]).column("user_id")[row].as_py())


@pytest.mark.parametrize("row", [0, 7, 31])
def test_default_answer_is_the_conversion_heads_with_its_probability(client, root, row):
    full, cal = brute_force(root / "v1", row)
    r = client.get("/candidates", params={"user": user_id(root / "v1", row), "k": 20}).json()
    got = [c["item_id"] for c in r["candidates"]]
    ids = pq.read_table(root / "v1" / "items.parquet", columns=["item_id"]).column("item_id").to_pylist()
    assert got == [ids[i] for i in np.argsort(-full["conversion"], kind="stable")[:20]]
    assert "utility" not in r and all(set(c) == {"item_id", "score", "p_conversion"} for c in r["candidates"])
    for c in r["candidates"]:
        assert c["p_conversion"] == pytest.approx(float(cal["conversion"](c["score"])), rel=1e-6)
    # A utility of the conversion head alone ranks the same items (a calibration keeps the order).
    alone = client.get("/candidates", params={"user": user_id(root / "v1", row), "k": 20, "utility": "conversion:2"})
    assert [c["item_id"] for c in alone.json()["candidates"]] == got


@pytest.mark.parametrize("row", [0, 7, 31])
@pytest.mark.parametrize("w", [0.05, 0.5, 3.0])
def test_utility_answer_is_brute_force_over_the_catalogue(client, root, row, w):
    full, cal = brute_force(root / "v1", row)
    u = cal["conversion"](full["conversion"]) + w * cal["engagement"](full["engagement"])
    ids = pq.read_table(root / "v1" / "items.parquet", columns=["item_id"]).column("item_id").to_pylist()
    r = client.get("/candidates", params={"user": user_id(root / "v1", row), "k": 30, "scores": "true",
                                          "utility": f"conversion:1,engagement:{w}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["utility"] == {"conversion": 1.0, "engagement": w}
    want = np.argsort(-u, kind="stable")[:30]
    assert [c["item_id"] for c in body["candidates"]] == [ids[i] for i in want]
    for c, i in zip(body["candidates"], want, strict=True):
        assert c["score"] == pytest.approx(u[i], rel=1e-5)
        assert c["scores"]["engagement"] == pytest.approx(full["engagement"][i], abs=1e-5)
        assert c["p_engagement"] == pytest.approx(cal["engagement"](full["engagement"][i]), rel=1e-5)


def test_post_takes_the_same_utility_as_a_string_or_an_object(client, root):
    user = user_id(root / "v1", 3)
    get = client.get("/candidates", params={"user": user, "k": 10, "utility": "conversion:1,engagement:0.4"}).json()
    for utility in ("conversion:1,engagement:0.4", {"conversion": 1, "engagement": 0.4}):
        post = client.post("/candidates", json={"user": int(user), "k": 10, "utility": utility}).json()
        assert post["candidates"] == get["candidates"]
    # With fresh events: the live state is scored on every head, and the answer still ranks by the utility.
    item = get["candidates"][0]["item_id"]
    live = client.post("/candidates", json={"user": int(user), "k": 10, "utility": "engagement:1", "scores": True,
                                            "events": [{"item_id": item, "event": "view", "ts": 1_900_000_000}]})
    assert live.status_code == 200, live.text
    c = live.json()["candidates"]
    assert [x["score"] for x in c] == sorted((x["score"] for x in c), reverse=True)
    assert all(set(x["scores"]) == {"conversion", "engagement"} for x in c)


@pytest.mark.parametrize("utility, message", [
    ("conversion:1,clicks:1", "unknown head 'clicks'"),
    ("conversion:-0.5", "weight of 'conversion' is -0.5"),
    ("conversion:nan", "weight of 'conversion' is nan"),
    ("conversion:0,engagement:0", "every weight is 0"),
    ("conversion=1", "is not head:weight"),
])
def test_bad_utilities_get_422_naming_the_parameter(client, utility, message):
    r = client.get("/candidates", params={"user": "1", "utility": utility})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "utility"], r.text
    assert message in r.json()["detail"][0]["msg"]
    r = client.post("/candidates", json={"user": 1, "utility": utility})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "utility"], r.text
    for body in ({"conversion": -1}, {"conversion": 0}, {"clicks": 1}, {}):
        assert client.post("/candidates", json={"user": 1, "utility": body}).status_code == 422


def test_unknown_user_with_a_utility_gets_popularity(client):
    r = client.get("/candidates", params={"user": "no-such-user", "k": 5, "utility": "conversion:1,engagement:1"})
    assert r.status_code == 200 and r.json()["fallback"] == "popular"


def test_presets_are_declared_at_build_and_named_at_query(trained, root, tmp_path):
    folder = root / "v_presets"
    if not folder.exists():
        build(trained, folder, "Flat", progress=False, presets={"browse": "conversion:1,engagement:2"})
    assert read_manifest(folder).utility_presets == {"browse": {"conversion": 1.0, "engagement": 2.0}}
    with pytest.raises(ArtifactError, match="unknown head 'cart'"):
        build(trained, tmp_path / "bad", "Flat", progress=False, presets={"x": "cart:1"})
    with TestClient(create_app(Settings(artifacts=folder))) as c:
        named = c.get("/candidates", params={"user": user_id(folder, 2), "utility": "browse"}).json()
        spelled = c.get("/candidates", params={"user": user_id(folder, 2), "utility": "conversion:1,engagement:2"})
        assert named["candidates"] == spelled.json()["candidates"] and named["utility"] == {"conversion": 1.0,
                                                                                           "engagement": 2.0}
        assert c.get("/candidates", params={"user": "1", "utility": "browsing"}).status_code == 422


def damaged(root, name: str, edit, source=None) -> str:
    """A copy of ``source`` (default: root/v1) as root/name, its manifest changed by ``edit``; returns name."""
    bad = root / name
    if bad.exists():
        shutil.rmtree(bad)
    shutil.copytree(root / "v1" if source is None else source, bad)
    m = json.loads((bad / "manifest.json").read_text())
    edit(m)
    (bad / "manifest.json").write_text(json.dumps(m))
    return name


def test_heads_that_disagree_with_the_model_are_refused_at_load_and_swap(client, root):
    def drop_engagement(m):
        del m["heads"]["engagement"]
        del m["files"]["index_engagement.faiss"]

    def served_head_second(m):
        m["heads"] = dict(reversed(list(m["heads"].items())))

    for name, edit, message in (("bad_heads", drop_engagement, "model.pt has heads"),
                                ("bad_order", served_head_second, "do not start with the served head")):
        damaged(root, name, edit)
        with pytest.raises(ArtifactError, match=message):
            load_served(root / name)
        r = client.post("/admin/swap", json={"path": name}, headers=AUTH)
        assert r.status_code == 409 and message in r.json()["detail"], r.text


def test_an_uncalibrated_head_serves_no_probability_and_only_a_raw_score_utility(root):
    def uncalibrate(m):
        m["heads"]["engagement"]["calibration"] = None

    folder = root / damaged(root, "uncalibrated", uncalibrate)
    with TestClient(create_app(Settings(artifacts=folder))) as c:
        user = user_id(folder, 1)
        r = c.get("/candidates", params={"user": user, "scores": "true"}).json()
        assert all("p_engagement" not in x and "p_conversion" in x for x in r["candidates"])
        bad = c.get("/candidates", params={"user": user, "utility": "conversion:1,engagement:1"})
        assert bad.status_code == 422 and "no calibration" in bad.json()["detail"][0]["msg"]
        assert "utility_scale=score" in bad.json()["detail"][0]["msg"]
        assert c.get("/candidates", params={"user": user, "utility": "conversion:1"}).status_code == 200
        # On raw scores a weight needs no calibration.
        raw = c.get("/candidates", params={"user": user, "utility": "conversion:1,engagement:1",
                                           "utility_scale": "score"})
        assert raw.status_code == 200 and raw.json()["utility_scale"] == "score", raw.text


def test_added_items_join_every_heads_index(client, root):
    new = {"item_id": 8_888_888, "category": "c1", "brand": "b9", "price": 30.0, "rating": 4.5}
    assert client.post("/admin/items", json={"items": [new]}, headers=AUTH).status_code == 200
    served = client.app.state.service.served
    assert {ix.ntotal for ix in served.indexes.values()} == {len(served.item_ids)}
    r = client.get("/candidates", params={"user": user_id(root / "v1", 0), "k": len(served.item_ids),
                                          "utility": "conversion:1,engagement:1"})
    assert r.status_code == 200 and 8_888_888 in [c["item_id"] for c in r.json()["candidates"]]


def test_the_engagement_weight_moves_the_answer(client, root):
    """The trade-off a product owner picks from: more engagement weight, more of the engagement head's top."""
    user = user_id(root / "v1", 7)
    full, _ = brute_force(root / "v1", 7)
    ids = np.array(pq.read_table(root / "v1" / "items.parquet", columns=["item_id"]).column("item_id").to_pylist())
    eng_top = set(ids[np.argsort(-full["engagement"])[:20]].tolist())
    overlap = []
    for w in (0.0, 1.0, 100.0):
        utility = f"conversion:1,engagement:{w}" if w else "conversion:1"
        got = client.get("/candidates", params={"user": user, "k": 20, "utility": utility}).json()["candidates"]
        overlap.append(len(eng_top & {c["item_id"] for c in got}))
    assert overlap[0] < overlap[2] and overlap[0] <= overlap[1] <= overlap[2] and overlap[2] >= 18, overlap


@pytest.fixture(scope="module")
def one_vector(one_vector_artifact, tmp_path_factory):
    """An artifacts root holding the one-vector artifact (``joint``: it has a joint index) and a copy of it
    without its joint index (``per_head``: a raw-score utility then searches every head)."""
    r = tmp_path_factory.mktemp("one_vector_root")
    shutil.copytree(one_vector_artifact, r / "joint")

    def no_joint(m):
        m["joint"] = None
        del m["files"]["index_joint.faiss"]

    damaged(r, "per_head", no_joint, one_vector_artifact)
    (r / "per_head" / "index_joint.faiss").unlink()
    return r


def counting_searches(monkeypatch) -> list:
    """Record the dimension of every index the service searches."""
    calls, search = [], serve.store.search
    monkeypatch.setattr(serve.store, "search",
                        lambda index, q, k, tail=None: calls.append(index.d) or search(index, q, k, tail))
    return calls


@pytest.mark.parametrize("folder", ["joint", "per_head"])
@pytest.mark.parametrize("w", [0.05, 1.0, 4.0])
def test_a_utility_on_raw_scores_is_brute_force_and_one_search_with_the_joint_index(one_vector, folder, w,
                                                                                  monkeypatch):
    art = one_vector / folder
    ids = pq.read_table(art / "items.parquet", columns=["item_id"]).column("item_id").to_pylist()
    with TestClient(create_app(Settings(artifacts=art))) as c:
        calls = counting_searches(monkeypatch)
        for row in (0, 7, 31):
            full, _ = brute_force(art, row)
            u = full["conversion"].astype(np.float64) + w * full["engagement"]
            calls.clear()
            r = c.get("/candidates", params={"user": user_id(art, row), "k": 30, "scores": "true",
                                              "utility": f"conversion:1,engagement:{w}", "utility_scale": "score"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["utility"] == {"conversion": 1.0, "engagement": w} and body["utility_scale"] == "score"
            d = read_manifest(art).embedding_dim  # one search of the [N, 2D] joint index, or one per head
            assert calls == ([2 * d] if folder == "joint" else [d, d])
            got = body["candidates"]
            assert np.allclose([x["score"] for x in got], np.sort(u)[::-1][:30], rtol=1e-5, atol=1e-4)
            for x in got:
                i = ids.index(x["item_id"])
                assert x["score"] == pytest.approx(u[i], rel=1e-5, abs=1e-4)
                assert x["scores"]["engagement"] == pytest.approx(full["engagement"][i], abs=1e-5)
                assert "p_conversion" in x and "p_engagement" in x  # the calibrated probabilities still come


@pytest.mark.parametrize("row", [0, 7])
def test_a_utility_on_raw_scores_with_several_interest_vectors_is_brute_force(client, root, row):
    full, _ = brute_force(root / "v1", row)  # each head's score: its best interest's inner product
    u = full["conversion"].astype(np.float64) + 0.7 * full["engagement"]
    body = client.post("/candidates", json={"user": int(user_id(root / "v1", row)), "k": 25,
                                            "utility": {"conversion": 1, "engagement": 0.7},
                                            "utility_scale": "score"}).json()
    assert np.allclose([x["score"] for x in body["candidates"]], np.sort(u)[::-1][:25], rtol=1e-5, atol=1e-4)
    assert body["utility_scale"] == "score"


def test_added_items_join_the_joint_index(one_vector):
    from dataclasses import replace

    new = {"item_id": 7_777_777, "category": "c1", "brand": "b9", "price": 30.0, "rating": 4.5}
    with TestClient(create_app(Settings(artifacts=one_vector / "joint", admin_token=TOKEN))) as c:
        assert c.post("/admin/items", json={"items": [new]}, headers=AUTH).status_code == 200
        served = c.app.state.service.served
        assert served.joint.ntotal == len(served.item_ids) == served.index.ntotal
        user = served.users.parse(user_id(one_vector / "joint", 3))
        utility = served.utility("conversion:1,engagement:0.5", "score")
        everything = served.candidates(user, len(served.item_ids), False, utility)
        assert everything.fallback is None and 7_777_777 in everything.ids
        # The same answer as every head's search scored exactly, on the same catalogue.
        one = served.candidates(user, 40, False, utility)
        per_head = replace(served, joint=None).candidates(user, 40, False, utility)
        assert one.fallback is None and one.ids == per_head.ids and np.allclose(one.scores, per_head.scores, rtol=1e-5, atol=1e-4)


def test_a_bad_utility_scale_gets_422_naming_it(client):
    r = client.get("/candidates", params={"user": "1", "utility": "conversion:1", "utility_scale": "raw"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "utility_scale"], r.text
    r = client.post("/candidates", json={"user": 1, "utility": "conversion:1", "utility_scale": "logit"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "utility_scale"], r.text


def test_a_joint_index_that_disagrees_with_the_manifest_is_refused_at_load_and_swap(one_vector):
    def reverse_heads(m):
        m["joint"]["heads"] = list(reversed(m["joint"]["heads"]))

    def head_sized(m):  # the joint file replaced by one head's index: D columns, not 2D
        shutil.copyfile(one_vector / "bad_dim" / "index.faiss", one_vector / "bad_dim" / "index_joint.faiss")
        m["files"]["index_joint.faiss"] = m["files"]["index.faiss"]

    def two_interests(m):
        m["interests"] = 2

    with TestClient(create_app(Settings(artifacts=one_vector / "joint", admin_token=TOKEN))) as c:
        for name, edit, message in (("bad_joint_heads", reverse_heads, "manifest joint is"),
                                    ("bad_dim", head_sized, "index_joint.faiss has dim"),
                                    ("bad_interests", two_interests, "a joint index with 2 interest vectors")):
            damaged(one_vector, name, edit, one_vector / "joint")
            with pytest.raises(ArtifactError, match=message):
                load_served(one_vector / name)
            r = c.post("/admin/swap", json={"path": name}, headers=AUTH)
            assert r.status_code == 409 and message in r.json()["detail"], r.text


def test_a_live_user_on_raw_scores_gets_the_joint_indexs_answer_as_every_heads_search(one_vector):
    from dataclasses import replace

    served = load_served(one_vector / "joint")
    events = [{"item_id": int(i), "event": e, "ts": 1_900_000_000 + 60 * j}
              for j, (i, e) in enumerate(zip(served.item_ids[:4], ("view", "click", "view", "purchase"), strict=True))]
    fresh, ignored = served.fresh_tail(events)
    assert ignored == 0 and len(fresh) == 4
    utility = served.utility("conversion:1,engagement:2", "score")
    stored = served.users.parse(user_id(one_vector / "joint", 5))
    assert served.users.row(stored) == 5
    for user in (None, stored):  # a new user, and a stored one with fresh events
        one = served.candidates_live(user, fresh, 30, True, utility)
        per_head = replace(served, joint=None).candidates_live(user, fresh, 30, True, utility)
        assert one.ids == per_head.ids and np.allclose(one.scores, per_head.scores, rtol=1e-5, atol=1e-4)
        assert int(served.item_ids[3]) not in one.ids  # the fresh purchase is excluded
