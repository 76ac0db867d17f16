"""The oracle of the synthetic world agrees with what the generator draws."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from retrieval.synth import DAY, World, WorldConfig, generate
from retrieval.synth_oracle import expected_purchases, user_traits


@pytest.fixture(scope="module")
def busy_world(tmp_path_factory):
    """Few users with many sessions each, so the generator's counts per user and item are large."""
    cfg = WorldConfig(users=40, items=150, categories=6, sessions_per_user=400.0, seed=2, chunk_users=16)
    out = tmp_path_factory.mktemp("busy")
    generate(out, cfg)
    ev = pq.read_table(out / "events.parquet").to_pydict()
    return World(cfg), {k: np.asarray(v) for k, v in ev.items()}


def test_traits_are_the_generators_per_chunk():
    w = World(WorldConfig(users=50, items=30, seed=1, chunk_users=16))
    got = user_traits(w, np.array([3, 17, 49, 17]))
    for j, u in enumerate((3, 17, 49, 17)):
        lo = u // 16 * 16
        ref = w.users(lo, min(lo + 16, 50))
        assert np.array_equal(got["fit"][j], ref["fit"][u - lo])
        assert np.array_equal(got["interest"][:, j], ref["interest"][:, u - lo])
    with pytest.raises(ValueError, match=r"\[0, 50\)"):
        user_traits(w, np.array([50]))
    with pytest.raises(ValueError, match="empty window"):
        expected_purchases(w, np.array([0]), 10, 10)


def test_expected_views_and_purchases_match_the_generator(busy_world):
    """Over a window, the generator's views per (user, item) follow the oracle's view shares, and its purchases
    per user its expected purchases per view (within Poisson noise)."""
    w, ev = busy_world
    lo, hi = w.cfg.t0 + 20 * DAY, w.cfg.t0 + 50 * DAY
    inwin = (ev["ts"] >= lo) & (ev["ts"] < hi)
    user, item = ev["user_id"] - 1, ev["item_id"] - 100_000
    n_users, n = w.cfg.users, w.cfg.items

    def counts(name):
        m = inwin & (ev["event"] == name)
        return np.bincount(user[m] * n + item[m], minlength=n_users * n).reshape(n_users, n)

    views, buys = counts("view"), counts("purchase")
    users = np.arange(n_users)
    share = expected_purchases(w, users, lo, hi, views=4000, views_only=True)
    per_view = expected_purchases(w, users, lo, hi, views=4000)
    n_views = views.sum(1, keepdims=True)  # [U, 1]
    # Views per item, summed over users (a user's views come in sessions of one category, so single cells
    # scatter more than Poisson): where the oracle expects 500 or more, 4% off on average and 15% at most.
    expect_views = (n_views * share).sum(0)
    big = expect_views >= 500
    off = np.abs(views.sum(0)[big] / expect_views[big] - 1)
    assert big.sum() >= 20 and off.mean() < 0.04 and off.max() < 0.15
    assert np.corrcoef(views.sum(0), expect_views)[0, 1] > 0.99
    # Purchases per user against views times the oracle's purchases per view; in all, within 5%.
    expect_buys = (n_views * per_view).sum(1)
    assert abs(buys.sum() / expect_buys.sum() - 1) < 0.05
    assert np.corrcoef(buys.sum(1), expect_buys)[0, 1] > 0.8
    # Without the funnel the oracle ranks what is viewed, not what is bought: the purchase oracle's top items
    # hold more of the purchases than the view oracle's.
    def top_share(score):
        top = np.argsort(-score, axis=1)[:, :10]
        return np.take_along_axis(buys, top, 1).sum() / buys.sum()

    assert top_share(per_view) > top_share(share) + 0.03
