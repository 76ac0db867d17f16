"""Live user state in the service: POST /candidates with fresh events, POST /events, the live stores."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from helpers import AUTH, TOKEN

from retrieval.embed import states_from_inputs
from retrieval.live import EventTail
from serve.app import create_app
from serve.settings import Settings


@pytest.fixture()
def live(root):
    app = create_app(Settings(artifacts=root / "v1", admin_token=TOKEN, events_token=TOKEN, live_max_users=3))
    with TestClient(app) as c:
        yield c


def catalogue(root) -> list:
    return pq.read_table(root / "v1" / "items.parquet", columns=["item_id"]).column("item_id").to_pylist()


def brute_force(served, user_row, fresh: EventTail, k: int) -> list:
    """The top k of the full score over the whole catalogue for the live state: every item vector, exact."""
    static = served.blank_static if user_row is None else {n: v[user_row: user_row + 1] for n, v in served.user_static.items()}
    stored = EventTail.empty() if user_row is None else served.tails.of(user_row)
    x = served.live.inputs(static, [stored.then(fresh)])
    items = served.index.reconstruct_n(0, served.index.ntotal)
    vecs, hist = states_from_inputs(served.model.model, x, items)
    full = (items @ vecs[0].T).max(1)
    rows, scores = hist.of(0)
    full[rows] = scores
    return served.item_ids[np.argsort(-full, kind="stable")[:k]].tolist()


def test_a_new_user_with_fresh_events_gets_the_user_towers_answer(live, root):
    items = catalogue(root)
    events = [{"item_id": items[3], "event": "view", "ts": 1_700_000_000, "dwell_s": 40.0},
              {"item_id": items[3], "event": "click", "ts": 1_700_000_060},
              {"item_id": items[9], "event": "view", "ts": 1_700_000_100},
              {"item_id": 987_654_321, "event": "view", "ts": 1_700_000_120},  # not in the catalogue
              {"item_id": items[5], "event": "wishlist", "ts": 1_700_000_130}]  # not in the model's roles
    r = live.post("/candidates", json={"user": "someone-new", "k": 20, "events": events})
    body = r.json()
    assert r.status_code == 200 and body["fallback"] is None and body["ignored_events"] == 2
    assert body["user"] == "someone-new" and len(body["candidates"]) == 20
    served = live.app.state.service.served
    fresh, ignored = served.fresh_tail(events)
    assert ignored == 2 and len(fresh) == 3
    assert [c["item_id"] for c in body["candidates"]] == brute_force(served, None, fresh, 20)
    scores = [c["score"] for c in body["candidates"]]
    assert scores == sorted(scores, reverse=True)
    # Only events the model cannot read: nothing personal to say, the popularity fallback.
    only_bad = live.post("/candidates", json={"user": "someone-new", "events": events[3:]}).json()
    assert only_bad["fallback"] == "popular" and only_bad["ignored_events"] == 2


def test_a_known_user_without_events_is_answered_as_by_get(live, root):
    uid = pq.read_table(root / "v1" / "users.parquet", columns=["user_id"]).column("user_id")[4].as_py()
    get = live.get("/candidates", params={"user": str(uid), "k": 15}).json()
    post = live.post("/candidates", json={"user": str(uid), "k": 15}).json()
    assert post["candidates"] == get["candidates"] and post["ignored_events"] == 0


def test_fresh_events_follow_the_stored_ones(live, root):
    served = live.app.state.service.served
    row = int(np.argmax(np.diff(served.tails.offsets)))  # a user with a long stored history
    uid = served.users._sorted[np.flatnonzero(served.users._rows == row)[0]].item()
    items = catalogue(root)
    last = int(served.tails.of(row).ts.max())
    events = [{"item_id": items[i], "event": "view", "ts": last + 60 * (i + 1)} for i in (11, 12, 13)]
    body = live.post("/candidates", json={"user": uid, "k": 10, "events": events}).json()
    fresh, _ = served.fresh_tail(events)
    assert [c["item_id"] for c in body["candidates"]] == brute_force(served, row, fresh, 10)
    assert body["candidates"] != live.get("/candidates", params={"user": str(uid), "k": 10}).json()["candidates"]


def test_posted_events_are_used_by_get_and_post_and_survive_a_swap(live, root):
    items = catalogue(root)
    events = [{"user_id": 424_242, "item_id": items[i], "event": "view", "ts": 1_700_000_000 + i} for i in (1, 2, 3)]
    r = live.post("/events", json={"events": events}, headers=AUTH)
    assert r.status_code == 200 and r.json() == {"accepted": 3, "users": 1, "store": "memory", "readable_by_model": 3}
    get = live.get("/candidates", params={"user": "424242", "k": 10}).json()
    plain = [{k: v for k, v in e.items() if k != "user_id"} for e in events]
    post = live.post("/candidates", json={"user": "someone-else", "k": 10, "events": plain}).json()
    assert get["fallback"] is None and get["candidates"] == post["candidates"]
    assert live.post("/admin/swap", json={"path": "v2"}, headers=AUTH).status_code == 200
    after = live.get("/candidates", params={"user": "424242", "k": 10}).json()
    assert after["fallback"] is None and after["model_version"] != get["model_version"]
    assert "retrieval_live_events_total 3.0" in live.get("/metrics").text


@pytest.mark.parametrize("event, loc", [
    ({"item_id": "abc", "event": "view", "ts": 1}, "item_id"),  # a non-numeric id for an int-id artifact
    ({"item_id": 1, "event": "view", "ts": 1, "dwell_s": -1.0}, "dwell_s"),
    ({"item_id": 1, "event": "view", "ts": "soon"}, "ts"),
    ({"item_id": 1, "event": "view", "ts": 1_700_000_000_000}, "ts"),  # milliseconds
    ({"item_id": 1, "event": "", "ts": 1}, "event"),
    ({"item_id": 1, "ts": 1}, "event"),
    ({"item_id": 1, "event": "view", "ts": 1, "colour": "red"}, "colour"),
    ({"item_id": True, "event": "view", "ts": 1}, "item_id"),
    ({"item_id": 2**64, "event": "view", "ts": 1}, "item_id"),
])
def test_bad_events_get_422_naming_the_field_and_store_nothing(live, event, loc):
    item = catalogue(live.app.state.service.served.path.parent)[0]
    good = {"user_id": 900_007, "item_id": item, "event": "view", "ts": 1}
    assert live.get("/candidates", params={"user": "900007"}).json()["fallback"] == "popular"
    r = live.post("/events", json={"events": [good, {"user_id": 900_008, **event}]}, headers=AUTH)
    assert r.status_code == 422 and any(d["loc"][-1] == loc for d in r.json()["detail"]), r.text
    assert live.get("/candidates", params={"user": "900007"}).json()["fallback"] == "popular"  # nothing stored
    assert live.post("/events", json={"events": [good]}, headers=AUTH).status_code == 200  # alone, it is kept
    assert live.get("/candidates", params={"user": "900007"}).json()["fallback"] is None


def test_nan_dwell_and_non_numeric_users_are_refused(live):
    body = b'{"events": [{"user_id": 7, "item_id": 1, "event": "view", "ts": 1, "dwell_s": NaN}]}'
    r = live.post("/events", content=body, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 422
    for user in ("abc", "007", " 7"):
        r = live.post("/events", json={"events": [{"user_id": user, "item_id": 1, "event": "view", "ts": 1}]},
                      headers=AUTH)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-2:] in (["user_id", "int"], ["user_id", "str"]), r.text


def test_events_need_their_own_token_and_are_off_without_one(live, root):
    e = {"events": [{"user_id": 7, "item_id": 1, "event": "view", "ts": 1}]}
    assert live.post("/events", json=e).status_code == 401
    assert live.post("/events", json=e, headers={"Authorization": "Bearer nope"}).status_code == 401
    with TestClient(create_app(Settings(artifacts=root / "v1", admin_token=TOKEN))) as c:
        assert c.post("/events", json=e, headers=AUTH).status_code == 403


def test_too_many_events_are_refused(root):
    with TestClient(create_app(Settings(artifacts=root / "v1", events_token=TOKEN, max_post_events=3,
                                        max_request_events=2))) as c:
        e = [{"user_id": 7, "item_id": 1, "event": "view", "ts": i} for i in range(4)]
        assert c.post("/events", json={"events": e}, headers=AUTH).status_code == 422
        plain = [{"item_id": 1, "event": "view", "ts": i} for i in range(3)]
        assert c.post("/candidates", json={"events": plain}).status_code == 422


def test_the_memory_store_is_bounded_per_user_and_in_users(live, root):
    items = catalogue(root)
    length = live.app.state.service.served.live.config.history.length
    many = [{"user_id": 1, "item_id": items[i % 50], "event": "view", "ts": 1_700_000_000 + i} for i in range(length + 30)]
    assert live.post("/events", json={"events": many}, headers=AUTH).status_code == 200
    store = live.app.state.service.store
    import asyncio

    kept = asyncio.run(store.get("1"))
    assert len(kept) == length and kept[-1]["ts"] == many[-1]["ts"]  # the newest, at most the history length
    for u in (2, 3, 4, 5):
        live.post("/events", json={"events": [{"user_id": u, "item_id": items[0], "event": "view", "ts": 1}]},
                  headers=AUTH)
    assert len(store) == 3 and asyncio.run(store.get("1")) == []  # live_max_users=3: the oldest went first
    assert "retrieval_live_evictions_total 2.0" in live.get("/metrics").text


def test_fresh_purchases_are_excluded_when_asked(live, root):
    items = catalogue(root)
    events = [{"item_id": items[i], "event": "view", "ts": 1_700_000_000 + 10 * i} for i in (20, 21, 22)]
    events.append({"item_id": items[21], "event": "purchase", "ts": 1_700_000_100})
    served = live.app.state.service.served
    plain = [c["item_id"] for c in live.post("/candidates", json={"k": 40, "events": events}).json()["candidates"]]
    assert items[21] in plain  # bought, so in the history with its repeat term: near the top
    ex = live.post("/candidates", json={"k": 20, "events": events, "exclude_purchased": True}).json()["candidates"]
    got = [c["item_id"] for c in ex]
    fresh, _ = served.fresh_tail(events)
    assert items[21] not in got and got == [i for i in brute_force(served, None, fresh, 40) if i != items[21]][:20]
