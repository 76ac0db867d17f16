"""The synthetic world's planted properties."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq

from retrieval.corpus import SplitConfig
from retrieval.events import EventRoles, load_events
from retrieval.split import temporal_split
from retrieval.synth import WorldConfig, generate


def test_planted_properties(tiny_world):
    summary = json.loads((tiny_world / "world.json").read_text())
    assert 0.01 < summary["conversion_rate"] < 0.08  # sparse conversions: a few per cent of engagement
    ev = pq.read_table(tiny_world / "events.parquet")
    items = pq.read_table(tiny_world / "items.parquet")
    assert set(ev.column("event").to_pylist()) == {"view", "click", "add_to_cart", "purchase"}
    dwell = ev.column("dwell_s").to_numpy(zero_copy_only=False)
    assert 0.15 < np.isnan(dwell).mean() < 0.45  # a share of rows leave dwell to be derived
    # Items launched during the log have features but no event before their launch; some launch after the
    # default training window ends, so they are new to a trained model.
    split = temporal_split(ev.column("ts").to_numpy(), SplitConfig().val_fraction, SplitConfig().test_fraction)
    launch = dict(zip(items.column("item_id").to_pylist(), items.column("launch_ts").to_pylist(), strict=True))
    ts, item = ev.column("ts").to_numpy(), ev.column("item_id").to_numpy()
    assert (ts >= np.array([launch[i] for i in item.tolist()])).all()
    late = np.array([t >= split.val_start for t in launch.values()])
    assert late.any() and not late.all()
    # Zipf-like popularity: the top 10% of items get a large share of views.
    views = np.bincount(item[ev.column("event").to_numpy(zero_copy_only=False) == "view"] - 100_000)
    top = np.sort(views)[::-1]
    assert top[: len(top) // 10].sum() > 0.3 * top.sum()


def test_dwell_reveals_what_is_bought(tiny_world):
    """Engagement followed by a purchase of the same item dwells longer: dwell carries signal."""
    e = load_events(tiny_world / "events.parquet", EventRoles({"purchase": 1.0}, {"view": 1.0}))
    bought = set(zip(e.user[e.kind == 1].tolist(), e.item[e.kind == 1].tolist(), strict=True))
    views = e.kind == 0
    mask = np.array([(u, i) in bought for u, i in zip(e.user[views], e.item[views], strict=True)])
    d = e.dwell[views]
    assert np.median(d[mask]) > 1.3 * np.median(d[~mask])


def test_deterministic_for_a_seed(tmp_path):
    cfg = WorldConfig(users=50, items=40, seed=3)
    generate(tmp_path / "a", cfg)
    generate(tmp_path / "b", cfg)
    for f in ("events.parquet", "items.parquet", "users.parquet"):
        assert pq.read_table(tmp_path / "a" / f).equals(pq.read_table(tmp_path / "b" / f))
    generate(tmp_path / "c", WorldConfig(users=50, items=40, seed=4))
    assert not pq.read_table(tmp_path / "a" / "events.parquet").equals(pq.read_table(tmp_path / "c" / "events.parquet"))



def test_interest_drift_moves_late_sessions_to_other_categories(tmp_path):
    """With drift, a user's sessions late in the log leave the categories of their early ones more often."""
    def late_share_outside_early_categories(drift: float) -> float:
        generate(tmp_path / str(drift), WorldConfig(users=300, items=400, categories=20, interest_drift=drift, seed=5))
        ev = pq.read_table(tmp_path / str(drift) / "events.parquet").to_pydict()
        items = pq.read_table(tmp_path / str(drift) / "items.parquet").to_pydict()
        cat = dict(zip(items["item_id"], items["category"], strict=True))
        mid = (min(ev["ts"]) + max(ev["ts"])) / 2
        early, late = {}, {}
        for u, i, t in zip(ev["user_id"], ev["item_id"], ev["ts"], strict=True):
            (early if t < mid else late).setdefault(u, []).append(cat[i])
        outside = [c not in set(early[u]) for u in late if u in early for c in late[u]]
        return float(np.mean(outside))

    assert late_share_outside_early_categories(1.0) > late_share_outside_early_categories(0.0) + 0.1
