"""The live protocol: each test user at the moment of their first conversion in the window, with the window's
events before it as fresh events, scored as the live service answers (retrieval/live.py), against baselines
given the same fresh events: conversion popularity, ALS with the fresh events folded in, item co-occurrence.

Targets: the user's distinct conversions (and engagements) from that moment to the window's end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from retrieval.corpus import Corpus, EvalSet
from retrieval.embed import embed_items
from retrieval.events import CONVERSION, ENGAGEMENT
from retrieval.inference import TwoTower, to_torch
from retrieval.live import EventTail, LiveState, blank_user, stored_tails
from retrieval.scorers import Scorer, fit_als, popularity_scorer


@dataclass
class LiveSet(EvalSet):
    """An EvalSet whose users stand at their first conversion in the window, with their fresh events."""

    fresh: list[EventTail] = field(default_factory=list)  # per user, the window's events before that moment
    fresh_pos: list[np.ndarray] = field(default_factory=list)  # their event positions in the corpus
    moment: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [U] ts of the first conversion

    @property
    def with_fresh(self) -> np.ndarray:
        return np.array([len(f) > 0 for f in self.fresh], bool)


def live_set(corpus: Corpus, window: int, max_users: int | None = None, seed: int = 0) -> LiveSet:
    """The users converting in ``window`` (1 validation, 2 test), as the live protocol sees them."""
    es = corpus.eval_users(window, max_users, seed)
    ev, inwin = corpus.events, corpus.window == window
    out = LiveSet(users=es.users, end=es.end, now=es.now)
    moments = []
    for u, end in zip(es.users, es.end, strict=True):
        lo, hi = end, corpus.user_end[u]  # the user's events from the window's start
        mine = np.arange(lo, hi)[inwin[lo:hi]]
        t = int(ev.ts[mine][ev.kind[mine] == CONVERSION].min())
        before, after = mine[ev.ts[mine] < t], mine[ev.ts[mine] >= t]
        out.fresh_pos.append(before)
        out.fresh.append(EventTail(corpus.event_row[before], ev.event[before].astype(np.int16), ev.ts[before],
                                   np.where(ev.derived[before], np.nan, ev.dwell[before]).astype(np.float32)))
        for kind, target in ((CONVERSION, out.conversions), (ENGAGEMENT, out.engagement)):
            target.append(np.unique(corpus.event_row[after[ev.kind[after] == kind]]))
        moments.append(t)
    out.moment = np.array(moments, np.int64)
    return out


def live_two_tower_scorer(model: TwoTower, corpus: Corpus, batch_scorer: Scorer, as_new_users: bool = False) -> Scorer:
    """Exact full scores of the live service's answer: users with fresh events through the user tower on their
    stored tail (the events before the window) followed by the fresh ones; users without fresh events get
    ``batch_scorer``'s (the stored answer, popularity for a user with no event at all). as_new_users: every user
    as one the service has never seen (no stored events, no features), from their fresh events alone."""
    model.eval()
    items = torch.from_numpy(embed_items(model, corpus, progress=False))
    state = LiveState(corpus.config, corpus.hist_lookup)
    blank = blank_user(corpus.user_vocab)

    def score(i: np.ndarray, es: LiveSet) -> np.ndarray:
        out = np.array(batch_scorer(i, es), np.float32)
        live = i[es.with_fresh[i]]
        if len(live) == 0:
            return out
        users, end = es.users[live], es.end[live]
        if as_new_users:
            end = corpus.user_start[users]
        tails = stored_tails(corpus, users, end)
        known = end > corpus.user_start[users]  # in an artifact built at the window's start
        static = {k: np.where(known.reshape(-1, *[1] * (v.ndim - 1)), v[users], blank[k])
                  for k, v in corpus.user_inputs.items()}
        x = state.inputs(static, [tails.of(j).then(es.fresh[p]) for j, p in enumerate(live)])
        with torch.inference_mode():
            xt = to_torch(x)
            out[es.with_fresh[i]] = model.served_scores(model.embed_users(xt), items, xt).numpy()
        return out

    return score


def cooccurrence_scorer(corpus: Corpus, now: int) -> Scorer:
    """Items scored by how often they share a training session (before ``now``) with the user's fresh events
    (session-kNN's core): score(i) = sum over fresh items f of the sessions holding both f and i (i != f); users
    without fresh events get conversion popularity."""
    ev = corpus.events
    m = ev.ts < now
    pairs = np.unique(np.stack([ev.session[m], corpus.event_row[m]]), axis=1)  # distinct (session, item), sorted
    by_item = np.lexsort((pairs[0], pairs[1]))
    item_start = np.searchsorted(pairs[1][by_item], np.arange(corpus.n_items + 1))  # item -> its sessions
    session_ids, session_start = np.unique(pairs[0], return_index=True)  # session -> its items
    session_start = np.append(session_start, pairs.shape[1])
    pop = popularity_scorer(corpus, now)

    def score(i: np.ndarray, es: LiveSet) -> np.ndarray:
        out = np.array(pop(i, es), np.float32)
        for b, p in enumerate(i):
            fresh = np.unique(es.fresh[p].rows)
            if len(fresh) == 0:
                continue
            sess = np.concatenate([pairs[0][by_item[item_start[f]: item_start[f + 1]]] for f in fresh])
            if len(sess) == 0:  # fresh items never seen in a training session (new items): nothing co-occurs
                continue
            s = np.searchsorted(session_ids, sess)  # each (fresh item, session) once
            items = pairs[1][np.concatenate([np.arange(session_start[j], session_start[j + 1]) for j in s])]
            counts = np.bincount(items, minlength=corpus.n_items).astype(np.float32)
            counts[fresh] -= np.diff(item_start)[fresh]  # an item does not co-occur with itself
            out[b] = counts
        return out

    return score


def als_foldin_scorer(corpus: Corpus, now: int, factors: int = 64, iterations: int = 20, regularization: float = 0.05,
                      alpha: float = 20.0, seed: int = 0) -> Scorer:
    """implicit's dual-weighted ALS fitted before ``now``; each user's factors recomputed (``recalculate_user``)
    from their events before the window plus the fresh ones, with the same weights."""
    import scipy.sparse as sp  # the bench extra's (with implicit), imported only when ALS is asked for

    model, conf = fit_als(corpus, now, True, factors, iterations, regularization, alpha, seed)
    itf = np.asarray(model.item_factors)
    pop = popularity_scorer(corpus, now)

    def score(i: np.ndarray, es: LiveSet) -> np.ndarray:
        out = np.array(pop(i, es), np.float32)
        for b, p in enumerate(i):
            u, f, w = es.users[p], es.fresh[p], corpus.weight[es.fresh_pos[p]]
            row = conf[u] + sp.csr_matrix((w * alpha, (np.zeros(len(f), int), f.rows)), shape=(1, corpus.n_items))
            if row.nnz:
                out[b] = model.recalculate_user(0, sp.csr_matrix(row)) @ itf.T
        return out

    return score
