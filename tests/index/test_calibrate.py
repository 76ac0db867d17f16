"""Calibration: Platt's fit recovers a known curve, the metrics give exact values on hand-made cases, and the
pairs a calibration is fitted on are the served candidates with their window's outcomes."""

from __future__ import annotations

import numpy as np
import pytest

from index.calibrate import calibrate_heads, fit_platt
from retrieval.calibration import Platt, brier, ece, reliability, served_pairs, window_targets, window_users
from retrieval.checkpoint import load_trained
from retrieval.embed import embed_items, user_state_scores
from retrieval.heads import heads_of, role_spec


def test_platt_fit_recovers_the_curve_that_drew_the_labels():
    rng = np.random.default_rng(0)
    s = rng.normal(0.4, 0.2, 200_000)
    y = rng.random(len(s)) < Platt(4.0, -6.0)(s)
    fit = fit_platt(s, y)
    assert fit.a == pytest.approx(4.0, rel=0.05) and fit.b == pytest.approx(-6.0, rel=0.03)
    assert ece(fit(s), y) < 0.003  # calibrated on its own draw


def test_platt_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError, match="0 of 10 served pairs are positive"):
        fit_platt(np.arange(10.0), np.zeros(10, bool))
    flat = fit_platt(np.arange(100.0), np.arange(100) < 30)  # higher scores less likely: flat at the rate
    assert flat.a == 0 and flat(np.array([0.0, 99.0])) == pytest.approx([0.3, 0.3])
    for bad in ({"kind": "isotonic"}, {"kind": "platt", "a": -0.1, "b": 0}, {"kind": "platt", "a": 1, "b": float("nan")}):
        with pytest.raises(ValueError):
            Platt.from_dict(bad)


def test_metrics_on_hand_made_cases():
    p, y = np.full(10, 0.1), np.array([1] + [0] * 9)
    assert ece(p, y) == pytest.approx(0.0) and brier(p, y) == pytest.approx((0.81 + 9 * 0.01) / 10)
    p2 = np.array([0.9, 0.9, 0.1, 0.1])
    y2 = np.array([0, 0, 1, 1])  # confidently wrong: each bin off by 0.9
    assert ece(p2, y2, bins=2) == pytest.approx(0.9)
    pred, obs, n = reliability(p2, y2, bins=2)
    assert pred.tolist() == pytest.approx([0.1, 0.9]) and obs.tolist() == [1.0, 0.0] and n.tolist() == [2, 2]


def test_served_pairs_are_each_known_users_top_k_with_window_outcomes(trained):
    t = load_trained(trained)
    corpus = t.corpus(split=True)
    pairs = served_pairs(t.model, corpus, 1, "conversion", [0], k=10, max_users=50)
    users, end, now = window_users(corpus, 1, 50)
    assert np.array_equal(users, pairs.users) and len(pairs.scores) == 10 * len(users) > 0
    assert (end > corpus.user_start[users]).all()  # known before the window: the model answers them
    full = user_state_scores(t.model, corpus, users, end, np.full(len(users), now), embed_items(t.model, corpus,
                                                                                                 progress=False))
    targets = window_targets(corpus, 1, users, [0])
    for j in range(len(users)):
        mine = pairs.user == j
        assert sorted(pairs.rows[mine].tolist()) == sorted(np.argsort(-full[j])[:10].tolist())
        assert np.allclose(pairs.scores[mine], full[j, pairs.rows[mine]], atol=1e-5)
        assert (pairs.labels[mine] == np.isin(pairs.rows[mine], targets[j])).all()
    # The targets are the window's purchases: each labelled pair has such an event in the window.
    ev = corpus.events
    for j in np.unique(pairs.user[pairs.labels]):
        u = users[j]
        inwin = (ev.user == u) & (corpus.window == 1) & (ev.event == 0)
        assert set(pairs.rows[(pairs.user == j) & pairs.labels]) <= set(corpus.event_row[inwin])


def test_heads_are_calibrated_on_validation_only_and_none_without_it(trained):
    t = load_trained(trained)
    heads = heads_of(t.hparams)
    cal = calibrate_heads(t.model, t.corpus(split=True), heads, role_spec(t.config.roles), max_users=100)
    assert set(cal) == {"conversion", "engagement"}
    assert all(c["window"] == "validation" and c["a"] > 0 and not c["flat"] and c["pairs"] == 100 * c["users"]
               for c in cal.values())
    assert cal["conversion"]["target"] == ["purchase"] and "view" in cal["engagement"]["target"]
    assert calibrate_heads(t.model, t.corpus(split=False), heads, role_spec(t.config.roles)) == {
        "conversion": None, "engagement": None}
