"""Adapters on tiny hand-made samples in the Trivago and Diginetica formats (not the shared files)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retrieval.adapters import diginetica, trivago
from retrieval.contract import DataError
from retrieval.events import EventRoles, load_events


def trivago_rows():
    base = {"user_id": "U1", "session_id": "s1", "platform": "DE", "city": "Berlin, Germany", "device": "mobile",
            "current_filters": None, "impressions": None, "prices": None}
    return [
        {**base, "timestamp": 100, "step": 1, "action_type": "search for destination", "reference": "Berlin, Germany"},
        {**base, "timestamp": 110, "step": 2, "action_type": "interaction item image", "reference": "501"},
        {**base, "timestamp": 110, "step": 3, "action_type": "interaction item image", "reference": "501"},
        {**base, "timestamp": 150, "step": 4, "action_type": "filter selection", "reference": "Pool"},
        {**base, "timestamp": 160, "step": 5, "action_type": "clickout item", "reference": "501",
         "impressions": "501|502|503", "prices": "80|90|100"},
        {**base, "user_id": "U2", "session_id": "s2", "timestamp": 90, "step": 1, "action_type": "clickout item",
         "reference": "502", "impressions": "502|503", "prices": "70|110"},
    ]


def test_trivago(tmp_path):
    src = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist(trivago_rows()), src)
    s = trivago(src, tmp_path / "out")
    assert s["event:clickout"] == 2 and s["event:image"] == 2
    ev = pq.read_table(tmp_path / "out" / "events.parquet").to_pylist()
    first = [r for r in ev if r["user_id"] == "U1"]
    # dwell = gap to the next step of the session, whatever its action; the session's last step: null
    assert [r["dwell_s"] for r in first] == [0.0, 40.0, None]
    assert first[0]["item_id"] == 501 and first[-1]["event"] == "clickout"
    items = {r["item_id"]: r for r in pq.read_table(tmp_path / "out" / "items.parquet").to_pylist()}
    assert 70.0 <= items[502]["price"] <= 90.0 and items[501]["city"] == "Berlin, Germany"  # approximate median
    e = load_events(tmp_path / "out" / "events.parquet", EventRoles({"clickout": 1.0}, {"image": 0.3}))
    assert len(e) == 3  # the two image rows at the same second merge into one burst


def test_trivago_missing_columns(tmp_path):
    src = tmp_path / "t.parquet"
    pq.write_table(pa.table({"user_id": ["a"]}), src)
    with pytest.raises(DataError, match="missing column"):
        trivago(src, tmp_path / "out")


def test_diginetica(tmp_path):
    (tmp_path / "views.csv").write_text(
        "session_id;user_id;item_id;timeframe;eventdate\n"
        "1;NA;81766;1000;2016-05-09\n1;NA;31331;51000;2016-05-09\n2;77;81766;0;2016-05-10\n")
    (tmp_path / "purchases.csv").write_text(
        "sessionId;userId;timeframe;eventdate;ordernumber;itemId\n1;NA;60000;2016-05-09;1;31331\n"
        "3;77;5000;2016-05-11;2;81766\n")
    (tmp_path / "cats.csv").write_text("itemId;categoryId\n81766;1096\n31331;7\n")
    s = diginetica(tmp_path, tmp_path / "out", "views.csv", "purchases.csv", "cats.csv")
    assert s["event:view"] == 3 and s["event:purchase"] == 2
    ev = pq.read_table(tmp_path / "out" / "events.parquet").to_pylist()
    anon = [r for r in ev if r["user_id"] == "s1"]
    assert [r["event"] for r in anon] == ["view", "view", "purchase"]
    assert anon[0]["dwell_s"] == 50.0 and anon[1]["dwell_s"] is None  # gap to the next view only
    assert anon[0]["ts"] == 1462752000 + 1
    items = pq.read_table(tmp_path / "out" / "items.parquet").to_pylist()
    assert {"item_id": 31331, "category": "7"} in items
    e = load_events(tmp_path / "out" / "events.parquet", EventRoles({"purchase": 1.0}, {"view": 1.0}))
    assert e.user_vocab.to_pylist() == ["77", "s1"]


def test_diginetica_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        diginetica(tmp_path, tmp_path / "out")
