"""What every evaluation protocol shares: a scorer maps evaluation users to scores over the whole catalogue."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from retrieval.corpus import Corpus, EvalSet
from retrieval.events import CONVERSION

Scorer = Callable[[np.ndarray, EvalSet], np.ndarray]  # (positions into the eval set [B]) -> scores [B, N]


def popularity_scorer(corpus: Corpus, now: int, kind: int = CONVERSION) -> Scorer:
    """Everyone gets the items most converted on (or engaged with) before the window."""
    pop = corpus.item_counts(kind, now).astype(np.float32)

    def score(i: np.ndarray, es: EvalSet) -> np.ndarray:
        return np.broadcast_to(pop, (len(i), len(pop)))

    return score
