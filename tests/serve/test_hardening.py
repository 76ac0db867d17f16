"""Inputs an adversarial pass found answered wrongly: each now gets a specific answer (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from helpers import AUTH, TOKEN

from index.artifact import read_manifest
from serve.app import create_app
from serve.settings import Settings

NEW = {"item_id": 9_000_001, "category": "c1", "brand": "b9", "price": 30.0, "rating": 4.5}


def known_int_user(root) -> int:
    ids = pq.read_table(root / "v1" / "users.parquet", columns=["user_id"]).column("user_id").to_pylist()
    return next(u for u in ids if 10 <= u < 100)


def test_only_the_canonical_spelling_of_an_int_id_matches_it(client, root):
    u = known_int_user(root)
    assert client.get("/candidates", params={"user": str(u)}).json()["fallback"] is None
    arabic = "".join(chr(0x660 + int(d)) for d in str(u))
    fullwidth = "".join(chr(0xFF10 + int(d)) for d in str(u))
    under = str(u)[0] + "_" + str(u)[1:]
    for spelling in (f"0{u}", f"+{u}", f" {u} ", f"{u} ", under, arabic, fullwidth, f"{u}.0"):
        body = client.get("/candidates", params={"user": spelling}).json()
        assert body["fallback"] == "popular" and body["user"] == spelling, spelling


@pytest.mark.parametrize("field, value, says", [
    ("item_id", 2**63, "int64"), ("item_id", 2**64, "int64"), ("item_id", "abc", "integer"),
    ("item_id", True, "integer"), ("category", ["c1"], "category"), ("brand", {"a": 1}, "brand"),
    ("price", "cheap", "price"), ("price", [1.0], "price"),
])
def test_bad_new_item_values_get_422_naming_the_field(client, field, value, says):
    r = client.post("/admin/items", json={"items": [{**NEW, field: value}]}, headers=AUTH)
    assert r.status_code == 422 and says in r.json()["detail"] and f"items[0].{field}" in r.json()["detail"]
    assert client.get("/readyz").json()["n_items"] == read_manifest(client.app.state.service.served.path).n_items


def test_a_null_feature_means_missing_alone_or_beside_other_items(root):
    with TestClient(create_app(Settings(artifacts=root / "v1", admin_token=TOKEN))) as c:
        alone = c.post("/admin/items", json={"items": [{**NEW, "brand": None}]}, headers=AUTH)
        beside = c.post("/admin/items", json={"items": [{**NEW, "item_id": 9_000_002, "brand": None},
                                                         {**NEW, "item_id": 9_000_003}]}, headers=AUTH)
        assert alone.status_code == beside.status_code == 200
        index = c.app.state.service.served.index
        n = index.ntotal
        # The null brand embeds as missing in both requests: the same vector for the same other features.
        assert np.allclose(index.reconstruct(n - 3), index.reconstruct(n - 2), atol=1e-6)
        assert not np.allclose(index.reconstruct(n - 2), index.reconstruct(n - 1), atol=1e-3)


def test_an_add_changes_the_version_and_says_it_is_not_persisted(root):
    with TestClient(create_app(Settings(artifacts=root / "v1", admin_token=TOKEN))) as c:
        base = c.get("/readyz").json()["model_version"]
        r = c.post("/admin/items", json={"items": [NEW]}, headers=AUTH).json()
        assert r["persisted"] is False and r["model_version"].startswith(base + "+1items.")
        assert c.get("/candidates", params={"user": "x"}).json()["model_version"] == r["model_version"]
        other = c.post("/admin/items", json={"items": [{**NEW, "item_id": 9_000_005}], "extra": 1}, headers=AUTH)
        assert other.json()["model_version"].startswith(base + "+2items.")
        assert 'model_version="' + other.json()["model_version"] in c.get("/metrics").text
        extra = c.post("/admin/items", json={"items": [{**NEW, "item_id": 9_000_006, "title": "t"}]}, headers=AUTH)
        assert extra.json()["ignored_fields"] == ["rating", "title"]  # tiny.yaml has no rating feature
        # A swap loads the artifact as built: the added items are gone, and the version says so.
        c.post("/admin/swap", json={"path": "v1"}, headers=AUTH)
        assert c.get("/readyz").json()["model_version"] == base
    with TestClient(create_app(Settings(artifacts=root / "v1", admin_token=TOKEN))) as c:
        other = c.post("/admin/items", json={"items": [{**NEW, "item_id": 9_000_007}]}, headers=AUTH).json()
        assert other["model_version"] != r["model_version"]  # another process, other items: another version


def test_the_fallback_fills_from_the_catalogue(client, root):
    n = read_manifest(root / "v1").n_items
    body = client.get("/candidates", params={"user": "someone-new", "k": 1000}).json()
    ids = [c["item_id"] for c in body["candidates"]]
    assert body["k"] == 1000 and len(ids) == len(set(ids)) == n  # the whole catalogue, each item once
    pop = pq.read_table(root / "v1" / "popular.parquet").column("item_id").to_pylist()
    assert ids[: len(pop)] == pop


def damaged(root, name, damage):
    bad = root / name
    shutil.rmtree(bad, ignore_errors=True)
    shutil.copytree(root / "v2", bad)
    m = json.loads((bad / "manifest.json").read_text())
    if damage == "link_outside":
        outside = root.parent / f"{name}-outside.parquet"
        shutil.copy(bad / "items.parquet", outside)
        (bad / "items.parquet").unlink()
        os.symlink(outside, bad / "items.parquet")
    elif damage == "zeroed_model":
        size = (bad / "model.pt").stat().st_size
        (bad / "model.pt").write_bytes(b"\0" * size)
    elif damage == "no_files_entry":
        del m["files"]
    (bad / "manifest.json").write_text(json.dumps(m))
    return bad


@pytest.mark.parametrize("damage, says", [("link_outside", "outside the artifact folder"),
                                          ("zeroed_model", "model.pt"), ("no_files_entry", "lists no size")])
def test_swaps_refuse_artifacts_that_are_not_what_was_built(client, root, damage, says):
    bad = damaged(root, f"bad-{damage}", damage)
    r = client.post("/admin/swap", json={"path": bad.name}, headers=AUTH)
    assert r.status_code == 409 and says in r.json()["detail"], r.json()


@pytest.mark.parametrize("path", ["v2\x00", "a" * 10_000, "x/" * 600])
def test_unusable_swap_paths_get_422(client, path):
    r = client.post("/admin/swap", json={"path": path}, headers=AUTH)
    assert r.status_code == 422, r.text
