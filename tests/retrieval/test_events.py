"""Dwell derivation, sessions, bursts and the temporal split on hand-built logs."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import write_events

from retrieval.contract import DataError
from retrieval.events import CONVERSION, EventRoles, SessionConfig, load_events
from retrieval.split import temporal_split

ROLES = EventRoles({"purchase": 1.0}, {"view": 0.5, "click": 1.0})


def ev(u, i, e, ts, d=None, s=None):
    r = {"user_id": u, "item_id": i, "event": e, "ts": ts, "dwell_s": d}
    if s is not None:
        r["session_id"] = s
    return r


def test_dwell_is_gap_to_next_event_in_session_capped_with_last_default(tmp_path):
    rows = [
        ev(1, 10, "view", 1000), ev(1, 11, "view", 1040), ev(1, 12, "click", 2000, 7.0),  # gap 960 s: capped
        ev(1, 13, "purchase", 2010),  # last of session: default
        ev(1, 14, "view", 9000),  # > 30 min later: new session, and last: default
        ev(2, 10, "view", 500),  # other user, out of order in the file: fine
    ]
    cfg = SessionConfig(session_gap_s=1800, cap_s=600, last_event_s=30)
    e = load_events(write_events(tmp_path / "e.parquet", rows[::-1]), ROLES, cfg)
    u1 = e.user == 0
    assert e.dwell[u1].tolist() == [40, 600, 7, 30, 30]  # given dwell (7) kept; derived where missing
    assert e.session[u1].tolist() == [0, 0, 0, 0, 1]
    assert e.dwell[~u1].tolist() == [30]
    assert e.counts["derived_dwell_rows"] == 5


def test_session_id_cuts_sessions(tmp_path):
    rows = [ev(1, 10, "view", 0, s="a"), ev(1, 11, "view", 20, s="b"), ev(1, 12, "purchase", 25, s="b")]
    e = load_events(write_events(tmp_path / "e.parquet", rows), ROLES, SessionConfig(last_event_s=3))
    assert e.dwell.tolist() == [3, 5, 3]  # 'a' ends at once despite the 20 s gap


def test_bursts_merge_into_first_row_with_summed_dwell(tmp_path):
    rows = [ev(1, 10, "view", 0), ev(1, 10, "view", 2), ev(1, 10, "view", 4), ev(1, 10, "click", 20),
            ev(1, 10, "view", 100), ev(1, 11, "purchase", 130)]
    e = load_events(write_events(tmp_path / "e.parquet", rows), ROLES, SessionConfig(burst_gap_s=5, last_event_s=1))
    assert e.ts.tolist() == [0, 20, 100, 130]
    assert e.dwell.tolist() == [20, 80, 30, 1]  # 2 + 2 + 16 merged; later view is a new run
    assert e.counts["merged_burst_rows"] == 2
    assert (e.kind == CONVERSION).sum() == 1


def test_string_ids_and_vocab_sorted(tmp_path):
    rows = [ev("b", "x", "view", 0), ev("a", "y", "purchase", 1)]
    e = load_events(write_events(tmp_path / "e.parquet", rows), ROLES)
    assert e.user_vocab.to_pylist() == ["a", "b"] and e.item_vocab.to_pylist() == ["x", "y"]
    assert e.user_id_type == "str"


def test_temporal_split_fractions_and_timestamps():
    ts = np.arange(0, 1000)
    s = temporal_split(ts, 0.1, 0.2)
    w = s.window(ts)
    assert s.test_start == 800 and s.val_start == 700
    assert w[:700].max() == 0 and (w[700:800] == 1).all() and (w[800:] == 2).all()
    s = temporal_split(ts, val_start=500, test_start=900)
    assert (s.val_start, s.test_start) == (500, 900)
    with pytest.raises(DataError, match="before the first event"):
        temporal_split(ts, val_start=0, test_start=900)
    with pytest.raises(DataError, match="fractions"):
        temporal_split(ts, 0.6, 0.5)
