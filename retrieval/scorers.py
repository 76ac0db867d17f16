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
