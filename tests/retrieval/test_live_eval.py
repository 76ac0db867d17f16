"""The live protocol scores what the live service answers; its baselines read the same fresh events."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from index.build import build
from retrieval.checkpoint import load_trained
from retrieval.evaluate import two_tower_scorer, with_popularity_fallback
from retrieval.live_eval import cooccurrence_scorer, live_set, live_two_tower_scorer
from retrieval.scorers import popularity_scorer
from serve.app import create_app
from serve.settings import Settings


@pytest.fixture(scope="module")
def setting(trained, tmp_path_factory):
    t = load_trained(trained)
    corpus = t.corpus(split=True)
    es = live_set(corpus, 2)
    # The artifact a service would hold at the test window's start: built from the events before it.
    tmp = tmp_path_factory.mktemp("live_eval")
    raw = pq.read_table(corpus.config.events)
    pq.write_table(raw.filter(pc.less(raw.column("ts"), es.now)), tmp / "events.parquet")
    build(trained, tmp / "art" / "v1", "Flat", events=str(tmp / "events.parquet"), progress=False)
    return t, corpus, es, tmp / "art" / "v1"


def test_the_live_protocol_scores_what_the_live_service_answers(setting):
    t, corpus, es, art = setting
    scorer = live_two_tower_scorer(t.model, corpus, with_popularity_fallback(two_tower_scorer(t.model, corpus), corpus))
    as_new = live_two_tower_scorer(t.model, corpus, popularity_scorer(corpus, es.now), as_new_users=True)
    picks = np.flatnonzero(es.with_fresh)[:8]
    scores, new_scores = scorer(picks, es), as_new(picks, es)
    names, k = corpus.config.roles.names, 20
    with TestClient(create_app(Settings(artifacts=art))) as c:
        for b, p in enumerate(picks):
            f = es.fresh[p]
            events = [{"item_id": corpus.catalogue[int(r)].as_py(), "event": names[e], "ts": int(ts),
                       "dwell_s": None if np.isnan(d) else float(d)}
                      for r, e, ts, d in zip(f.rows, f.events, f.ts, f.dwell, strict=True)]
            user = corpus.events.user_vocab[int(es.users[p])].as_py()
            body = c.post("/candidates", json={"user": str(user), "k": k, "events": events}).json()
            assert body["fallback"] is None and body["ignored_events"] == 0
            want = np.argsort(-scores[b], kind="stable")[:k]
            got = [c_["item_id"] for c_ in body["candidates"]]
            assert got == corpus.catalogue.take(want).to_pylist(), user
            assert np.allclose([c_["score"] for c_ in body["candidates"]], scores[b][want], atol=1e-4)
            anonymous = c.post("/candidates", json={"k": k, "events": events}).json()  # no user: a new one
            assert [c_["item_id"] for c_ in anonymous["candidates"]] == corpus.catalogue.take(
                np.argsort(-new_scores[b], kind="stable")[:k]).to_pylist()


def test_targets_start_at_the_first_conversion_and_fresh_events_precede_it(setting):
    _, corpus, es, _ = setting
    ev = corpus.events
    for p in range(len(es.users)):
        f = es.fresh[p]
        assert (f.ts < es.moment[p]).all() and (f.ts >= es.now).all()
        u = es.users[p]
        lo, hi = corpus.user_start[u], corpus.user_end[u]
        conv = (corpus.window[lo:hi] == 2) & (ev.kind[lo:hi] == 1) & (ev.ts[lo:hi] >= es.moment[p])
        assert set(es.conversions[p]) == set(corpus.event_row[lo:hi][conv])


def test_cooccurrence_scores_the_items_that_share_sessions_with_the_fresh_events(setting):
    _, corpus, es, _ = setting
    p = int(np.flatnonzero(es.with_fresh)[0])
    s = cooccurrence_scorer(corpus, es.now)(np.array([p]), es)[0]
    ev = corpus.events
    before = ev.ts < es.now
    fresh = set(es.fresh[p].rows.tolist())
    want = np.zeros(corpus.n_items)
    for sess in np.unique(ev.session[before]):
        items = set(corpus.event_row[before & (ev.session == sess)].tolist())
        for f in fresh & items:
            for i in items - {f}:
                want[i] += 1
    assert np.allclose(s, want)


def test_cooccurrence_falls_back_to_popularity_for_items_no_session_holds(setting):
    _, corpus, es, _ = setting
    ev = corpus.events
    trained_rows = set(corpus.event_row[ev.ts < es.now].tolist())
    cold = next(r for r in range(corpus.n_items) if r not in trained_rows)  # only in the items table or later
    p = int(np.flatnonzero(es.with_fresh)[0])
    f = es.fresh[p]
    es.fresh[p] = type(f)(np.full(len(f), cold), f.events, f.ts, f.dwell)
    try:
        got = cooccurrence_scorer(corpus, es.now)(np.array([p]), es)[0]
    finally:
        es.fresh[p] = f
    assert np.array_equal(got, popularity_scorer(corpus, es.now)(np.array([p]), es)[0])
