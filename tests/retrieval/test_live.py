"""Live user states follow the training rules: a user's events read live give the state training gives them."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from helpers import tiny_corpus

from retrieval.checkpoint import load_trained
from retrieval.corpus import Corpus, CorpusConfig
from retrieval.embed import states_from_inputs
from retrieval.live import EventTail, LiveState, stored_tails


def static(corpus: Corpus, users: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[users] for k, v in corpus.user_inputs.items()}


def test_a_stored_tail_read_live_is_the_users_training_state(trained, tiny_world):
    """Every user's last events, sessionised again and bagged live, give the inputs and vectors the corpus
    gives as of their last event."""
    t = load_trained(trained)
    corpus = t.corpus()
    users = np.arange(0, len(corpus.events.user_vocab), 7)
    users = users[corpus.user_end[users] > corpus.user_start[users]]
    tails = stored_tails(corpus, users, corpus.user_end[users])
    state = LiveState(corpus.config, corpus.hist_lookup)
    live = state.inputs(static(corpus, users), [tails.of(i) for i in range(len(users))])
    now = corpus.events.ts[corpus.user_end[users] - 1]
    want = corpus.user_batch(users, corpus.user_end[users], now)
    for k in want:
        assert np.array_equal(live[k], want[k]) if k != "hist_weights" else np.allclose(live[k], want[k], atol=1e-6), k
    a, ha = states_from_inputs(t.model, live, np.zeros((corpus.n_items, 1)))
    b, hb = states_from_inputs(t.model, want, np.zeros((corpus.n_items, 1)))
    assert np.allclose(a, b, atol=1e-5)


def test_fresh_events_after_a_stored_tail_are_read_as_the_whole_log_is(tiny_world, tmp_path):
    """Cut some users' logs in two: the first part stored, the second posted as fresh raw events (dwell as in
    the log, so missing dwell is derived across the cut). The live state equals the one the whole log gives."""
    full = tiny_corpus(tiny_world)
    raw = pq.read_table(tiny_world / "events.parquet")
    users = full.events.user_vocab.to_pylist()[:40:3]
    cut_at = {}
    keep = np.ones(raw.num_rows, bool)
    ts, uid = raw.column("ts").to_numpy(), raw.column("user_id").to_numpy()
    for u in users:
        mine = np.flatnonzero(uid == u)
        cut_at[u] = int(np.median(ts[mine]))
        keep[mine[ts[mine] >= cut_at[u]]] = False
    pq.write_table(raw.filter(keep), tmp_path / "events.parquet")
    cfg = CorpusConfig.from_dict(full.config.to_dict(), events=str(tmp_path / "events.parquet"))
    before = Corpus(cfg, state=full.state(), split=False)
    assert np.array_equal(before.catalogue.to_numpy(), full.catalogue.to_numpy())  # the items table holds all
    state = LiveState(full.config, full.hist_lookup)
    names = {n: i for i, n in enumerate(full.config.roles.names)}
    rows_of = {v: i for i, v in enumerate(full.catalogue.to_pylist())}
    checked = 0
    for u in users:
        code_b = before.events.user_vocab.index(u).as_py()
        code_f = full.events.user_vocab.index(u).as_py()
        stored = stored_tails(before, np.array([code_b]), before.user_end[[code_b]]).of(0)
        later = raw.filter(pc.and_(pc.equal(raw.column("user_id"), u), pc.greater_equal(raw.column("ts"), cut_at[u])))
        later = [r for r in later.to_pylist() if r["event"] in names]
        if not later or not len(stored):
            continue
        fresh = EventTail(np.array([rows_of[r["item_id"]] for r in later]), np.array([names[r["event"]] for r in later], np.int16),
                          np.array([r["ts"] for r in later]), np.array([np.nan if r["dwell_s"] is None else r["dwell_s"]
                                                                       for r in later], np.float32))
        live = state.inputs(static(full, np.array([code_f])), [stored.then(fresh)])
        end = full.user_end[[code_f]]
        want = full.user_batch(np.array([code_f]), end, full.events.ts[end - 1])
        assert np.array_equal(live["hist_rows"], want["hist_rows"]), u
        assert np.allclose(live["hist_weights"], want["hist_weights"], atol=1e-5), u
        checked += 1
    assert checked >= 5


def test_a_batch_of_tails_bags_each_as_alone(trained):
    """One bagging pass over many users' events (the service's batch) gives each user the bag of their events
    alone: sessions, derived dwell and bursts never cross users, and each is decayed as of its own last event."""
    t = load_trained(trained)
    corpus = t.corpus()
    state = LiveState(corpus.config, corpus.hist_lookup)
    rng = np.random.default_rng(3)
    tails = []
    for u in range(40):
        n = int(rng.integers(1, 60))
        gaps = rng.integers(0, 40, n) if u % 2 else rng.integers(0, 86_400, n)  # bursts and sessions, or days
        dwell = np.where(rng.random(n) < 0.5, np.nan, rng.random(n) * 60).astype(np.float32)
        tails.append(EventTail(rng.integers(0, len(corpus.hist_lookup["hist_items"]) - 1, n),
                               rng.integers(0, len(corpus.config.roles.names), n).astype(np.int16),
                               1_700_000_000 + u * 1000 + np.cumsum(gaps), dwell))
    rows, weights = state.bags(tails)
    for i, tail in enumerate(tails):
        alone_rows, alone_weights = state.bags([tail])
        np.testing.assert_array_equal(rows[i], alone_rows[0])
        np.testing.assert_array_equal(weights[i], alone_weights[0])
    assert (weights > 0).sum(axis=1).min() >= 1
