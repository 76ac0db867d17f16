"""The service freezes what is alive after it loads an artifact (serve/service.py ``settle``), so the garbage
collector's full passes skip the libraries' and the artifact's objects; a swap still frees the old version, its
reference cycles included."""

from __future__ import annotations

import gc
import time
import weakref

import pytest
from fastapi.testclient import TestClient
from helpers import AUTH, TOKEN

from serve.app import create_app
from serve.settings import Settings


@pytest.fixture(autouse=True)
def thawed():
    """Each test starts and ends with nothing frozen: the freeze is the whole test process's."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def settled(c: TestClient) -> bool:
    """Wait (the app freezes again a moment after a swap or an add: serve/app.py keep_settled)."""
    end = time.monotonic() + 10
    while c.app.state.service.unsettled_since is not None and time.monotonic() < end:
        time.sleep(0.05)
    return c.app.state.service.unsettled_since is None


def collected(obj) -> bool:
    """True when the collector still walks ``obj`` (gc.get_objects leaves frozen objects out)."""
    return any(o is obj for o in gc.get_objects())


def test_the_loaded_artifact_is_frozen_and_a_swap_frees_the_old_one(root):
    with TestClient(create_app(Settings(artifacts=root / "v1", admin_token=TOKEN))) as c:
        old = c.app.state.service.served
        assert gc.get_freeze_count() > 0 and not collected(old) and not collected(old.items)
        # A reference cycle through the old version: frozen and never unfrozen, it would stay for good.
        object.__setattr__(old, "cycle", old)
        gone = weakref.ref(old)
        del old
        assert c.post("/admin/swap", json={"path": "v2"}, headers=AUTH).status_code == 200
        new = c.app.state.service.served
        assert new.path.name == "v2" and settled(c) and not collected(new)
        assert gone() is None
        assert c.get("/candidates", params={"user": 1, "k": 5}).status_code == 200


def test_an_add_freezes_the_grown_catalogue(root):
    with TestClient(create_app(Settings(artifacts=root / "v1", admin_token=TOKEN))) as c:
        before = c.app.state.service.served
        new = {"item_id": 7_777_777, "category": "c1", "brand": "b9", "price": 30.0, "rating": 4.5}
        assert c.post("/admin/items", json={"items": [new]}, headers=AUTH).status_code == 200
        served = c.app.state.service.served
        assert served is not before and served.added == 1 and settled(c) and not collected(served)


def test_without_the_freeze_the_collector_walks_the_artifact(root):
    with TestClient(create_app(Settings(artifacts=root / "v1", gc_freeze=False))) as c:
        assert gc.get_freeze_count() == 0 and collected(c.app.state.service.served)
