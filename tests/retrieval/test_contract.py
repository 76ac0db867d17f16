"""Every bad input gets a DataError naming the file, the column and the problem."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import write_events

from retrieval.contract import DataError
from retrieval.events import EventRoles, load_events

ROLES = EventRoles({"purchase": 1.0}, {"view": 0.5})


def row(u=1, i=10, e="view", ts=100, d=5.0):
    return {"user_id": u, "item_id": i, "event": e, "ts": ts, "dwell_s": d}


def ok_rows():
    return [row(1, 10, "view", 100), row(1, 10, "purchase", 110), row(2, 11, "view", 120)]


def check(path, match, roles=ROLES):
    with pytest.raises(DataError, match=match) as e:
        load_events(path, roles)
    assert str(path) in str(e.value) or "config" in str(e.value)


def test_missing_file(tmp_path):
    check(tmp_path / "nope.parquet", "no such file")


def test_not_parquet(tmp_path):
    p = tmp_path / "e.parquet"
    p.write_text("user_id,item_id\n1,2\n")
    check(p, "not a readable Parquet")


def test_truncated_parquet(tmp_path):
    p = write_events(tmp_path / "e.parquet", ok_rows())
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    check(p, "not a readable Parquet")


def test_missing_column(tmp_path):
    p = write_events(tmp_path / "e.parquet", [{k: v for k, v in r.items() if k != "ts"} for r in ok_rows()])
    check(p, "missing column 'ts'")


def test_wrong_type(tmp_path):
    rows = [{**r, "ts": float(r["ts"])} for r in ok_rows()]
    check(write_events(tmp_path / "e.parquet", rows), "column 'ts' has type double")
    rows = [{**r, "user_id": float(r["user_id"])} for r in ok_rows()]
    check(write_events(tmp_path / "f.parquet", rows), "column 'user_id' has type double")


def test_null_ids(tmp_path):
    rows = ok_rows()
    rows[1]["item_id"] = None
    check(write_events(tmp_path / "e.parquet", rows), "column 'item_id' has 1 null")


def test_negative_and_infinite_dwell(tmp_path):
    rows = ok_rows()
    rows[0]["dwell_s"] = -3.0
    check(write_events(tmp_path / "e.parquet", rows), "column 'dwell_s'.*negative")
    rows[0]["dwell_s"] = float("inf")
    check(write_events(tmp_path / "f.parquet", rows), "column 'dwell_s'.*infinite")


def test_empty_log(tmp_path):
    schema = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("event", pa.string()),
                        ("ts", pa.int64()), ("dwell_s", pa.float32())])
    check(write_events(tmp_path / "e.parquet", [], schema), "empty")


def test_no_conversion(tmp_path):
    rows = [r for r in ok_rows() if r["event"] != "purchase"]
    check(write_events(tmp_path / "e.parquet", rows), "no conversion at all")


def test_unknown_event_strict_and_counted(tmp_path):
    rows = [*ok_rows(), row(3, 12, "wishlist", 130)]
    p = write_events(tmp_path / "e.parquet", rows)
    check(p, "'wishlist' \\(1 rows\\)", EventRoles({"purchase": 1.0}, {"view": 0.5}, strict=True))
    ev = load_events(p, ROLES)  # not strict: dropped and counted, never silently
    assert ev.counts["ignored_event:wishlist"] == 1 and len(ev) == 3


def test_only_unknown_events(tmp_path):
    check(write_events(tmp_path / "e.parquet", [row(1, 1, "wishlist")]), "none of the 1 rows")


def test_mixed_id_types_across_files(tmp_path):
    write_events(tmp_path / "d" / "a.parquet", ok_rows())
    write_events(tmp_path / "d" / "b.parquet", [{**r, "user_id": str(r["user_id"])} for r in ok_rows()])
    with pytest.raises(DataError, match="user_id|not a readable"):
        load_events(tmp_path / "d", ROLES)


def test_directory_dataset_and_timestamp_type(tmp_path):
    for n, rows in enumerate([ok_rows()[:2], ok_rows()[2:]]):
        t = pa.Table.from_pylist(rows)
        t = t.set_column(3, "ts", pa.array([r["ts"] * 1000 for r in rows], pa.timestamp("ms")))
        (tmp_path / "d").mkdir(exist_ok=True)
        pq.write_table(t, tmp_path / "d" / f"{n}.parquet")
    ev = load_events(tmp_path / "d", ROLES)
    assert len(ev) == 3 and sorted(ev.ts.tolist()) == [100, 110, 120]


def test_config_errors():
    with pytest.raises(DataError, match="both conversion and engagement"):
        EventRoles({"purchase": 1.0}, {"purchase": 1.0})
    with pytest.raises(DataError, match="names no event"):
        EventRoles({}, {"view": 1.0})


def test_timestamps_in_milliseconds_are_not_taken_as_seconds(tmp_path):
    """A log in milliseconds read as seconds would span centuries and cut every event into its own session."""
    ms = [dict(r, ts=1_700_000_000_000 + 1000 * r["ts"]) for r in ok_rows()]
    p = write_events(tmp_path / "e.parquet", ms)
    with pytest.raises(DataError, match="ts_unit: ms") as e:
        load_events(p, ROLES)
    assert str(p) in str(e.value) and "'ts'" in str(e.value)
    ev = load_events(p, ROLES, ts_unit="ms")  # said so: read as milliseconds
    assert ev.ts.tolist() == [1_700_000_100, 1_700_000_110, 1_700_000_120]
    assert ev.session[0] == ev.session[1]  # 10 s apart: one session, as in seconds


def test_a_timestamp_column_carries_its_own_unit(tmp_path):
    rows = [dict(r, ts=(1_700_000_000 + r["ts"]) * 1000) for r in ok_rows()]
    t = pa.Table.from_pylist(rows).set_column(3, "ts", pa.array([r["ts"] for r in rows], pa.timestamp("ms")))
    pq.write_table(t, tmp_path / "e.parquet")
    assert load_events(tmp_path / "e.parquet", ROLES).ts.tolist() == [1_700_000_100, 1_700_000_110, 1_700_000_120]


def test_ids_without_features_and_empty_feature_columns_are_counted(tmp_world_with_gaps, caplog):
    from retrieval.corpus import Corpus, CorpusConfig

    events, items = tmp_world_with_gaps
    cfg = CorpusConfig(str(events), str(items), item_features=({"name": "category", "kind": "categorical"},
                                                               {"name": "colour", "kind": "categorical"}))
    with caplog.at_level("WARNING"):
        Corpus(cfg)
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "1 of the events' 3 item_ids have no row" in msg and "['colour'] hold no value" in msg
    with pytest.raises(DataError, match="1 of the events' 3 item_ids have no row"):
        Corpus(CorpusConfig.from_dict({**cfg.to_dict(), "missing_features": "error"}))


@pytest.fixture()
def tmp_world_with_gaps(tmp_path):
    rows = [row(1, 10, "view", 100), row(1, 10, "purchase", 110), row(2, 11, "view", 120), row(2, 12, "purchase", 900),
            row(3, 10, "purchase", 2000)]
    events = write_events(tmp_path / "e.parquet", rows)
    items = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_id": [10, 11], "category": ["a", "b"], "colour": pa.nulls(2, pa.string())}), items)
    return events, items
