"""What every evaluation protocol shares: a scorer maps evaluation users to scores over the whole catalogue."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from retrieval.corpus import Corpus, EvalSet
from retrieval.events import CONVERSION, ENGAGEMENT

Scorer = Callable[[np.ndarray, EvalSet], np.ndarray]  # (positions into the eval set [B]) -> scores [B, N]


def popularity_scorer(corpus: Corpus, now: int, kind: int = CONVERSION) -> Scorer:
    """Everyone gets the items most converted on (or engaged with) before the window."""
    pop = corpus.item_counts(kind, now).astype(np.float32)

    def score(i: np.ndarray, es: EvalSet) -> np.ndarray:
        return np.broadcast_to(pop, (len(i), len(pop)))

    return score


def feature_share(corpus: Corpus, code: np.ndarray, n_codes: int, user: int, end: int, smooth: float) -> np.ndarray:
    """[n_codes] a user's (code) summed event weight before history position ``end`` on each value of an item
    feature (code [N], its value per catalogue row), plus ``smooth`` per value."""
    lo = corpus.user_start[user]
    return np.bincount(code[corpus.event_row[lo:end]], weights=corpus.weight[lo:end], minlength=n_codes) + smooth


def feature_popularity_scorer(corpus: Corpus, now: int, feature: str = "category", conv_mix: float = 0.5,
                              smooth: float = 0.01) -> Scorer:
    """A baseline that knows only a categorical item feature, popularity and the user's own items: an item's score
    is the share of the user's weighted events before the window whose item has the item's ``feature`` value
    (plus ``smooth`` per value), times the item's popularity (its share of all weighted events before ``now``,
    plus ``conv_mix`` times its share of conversions), plus the user's own summed event weight on the item."""
    if feature not in corpus.item_inputs:
        raise ValueError(f"feature_popularity_scorer: no item feature {feature!r}; the config has "
                         f"{sorted(k for k in corpus.item_inputs if k != 'id')}")
    code = np.asarray(corpus.item_inputs[feature], np.int64)  # [N] the feature's code per catalogue row
    n_codes = int(code.max()) + 1
    ev, row, w = corpus.events, corpus.event_row, corpus.weight
    before = ev.ts < now
    eng = np.bincount(row[before], weights=w[before], minlength=corpus.n_items)
    conv = np.bincount(row[before & (ev.kind == CONVERSION)], minlength=corpus.n_items)
    pop = eng / max(eng.sum(), 1e-12) + conv_mix * conv / max(conv.sum(), 1)  # [N]

    def score(i: np.ndarray, es: EvalSet) -> np.ndarray:
        out = np.empty((len(i), corpus.n_items), np.float32)
        for j, u in enumerate(i):
            lo, hi = corpus.user_start[es.users[u]], es.end[u]  # the user's events before the window
            share = feature_share(corpus, code, n_codes, es.users[u], hi, smooth)
            out[j] = share[code] / share.sum() * pop + np.bincount(row[lo:hi], weights=w[lo:hi],
                                                                    minlength=corpus.n_items)
        return out

    return score


def fit_als(corpus: Corpus, now: int, dual: bool, factors: int = 64, iterations: int = 20,
            regularization: float = 0.05, alpha: float = 20.0, seed: int = 0):
    """implicit's ALS on the user x item matrix of events before ``now``: conversions only, or conversions plus
    dwell-weighted engagement (each event's weight, times ``alpha``). Returns (model, that matrix as CSR)."""
    # implicit and scipy are the bench extra's, imported only when ALS is asked for.
    import scipy.sparse as sp
    from implicit.als import AlternatingLeastSquares

    ev = corpus.events
    m = (ev.ts < now) & ((ev.kind == CONVERSION) | (dual & (ev.kind == ENGAGEMENT)))
    conf = sp.csr_matrix((corpus.weight[m] * alpha, (ev.user[m], corpus.event_row[m])),
                         shape=(len(ev.user_vocab), corpus.n_items), dtype=np.float32)
    conf.sum_duplicates()
    model = AlternatingLeastSquares(factors=factors, iterations=iterations, regularization=regularization,
                                    random_state=seed, calculate_training_loss=False)
    model.fit(conf, show_progress=False)
    return model, conf
