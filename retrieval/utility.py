"""A utility the caller weighs at query time: the top k by sum_h w_h * p_h(score_h), a weighted sum of the heads'
calibrated probabilities (retrieval/calibration.py), so that a weight is the value of one head's outcome
(a conversion, an engagement) in the units of the others; or, on the ``score`` scale, by sum_h w_h * score_h,
a weighted sum of the heads' raw served scores (a weight then means something within one model version only,
but needs no calibration). numpy alone; the service and evaluation share it.

With one user vector per head, a utility on raw scores is itself an inner product, [w_1 u_1, ..., w_H u_H] .
[v_1, ..., v_H], so the service answers it with one search of the artifact's joint index (serve/store.py).

How the answer is formed. A sum of calibrated probabilities is no inner product (the calibration bends each
head's score), and with several interest vectors a head's score is a max of inner products, so no one search
ranks by it. The answer is a threshold algorithm (Fagin, Lotem and Naor, 2001) over the heads' own searches:
search each weighted head for its top m, score the union (and the user's history items, which carry the repeat
term) exactly on every head, and stop when the k-th best utility is at least the utility an item outside every
list could reach: sum_h w_h * p_h(the m-th score of head h's list, best over interests). Otherwise m doubles,
up to ``max_width`` (16 times the first width by default: a deep search of an HNSW index is slow, and the
service answers on its event loop); an answer that reaches it unproven is the best of what was seen, and says so
(``certified`` False).
On the score scale each head's "calibration" below is the identity.
The utility is non-decreasing in every head's score (each calibration slope is >= 0, weights >= 0), so with exact
searches (a Flat index) the answer is the brute-force top k over the whole catalogue; through an approximate
index it is as exact as that index's searches.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np

from retrieval.answer import isin_few, search_width

MAX_TEXT = 512
TERM = re.compile(r"([a-z][a-z0-9_]{0,31}):([^,:]{1,32})")

PROBABILITY, SCORE = "probability", "score"  # what a utility's weights weigh: calibrated probabilities, raw scores
SCALES = (PROBABILITY, SCORE)

Search = Callable[[str, int], tuple[np.ndarray, np.ndarray]]  # (head, m) -> rows, scores [K, m] (-1 = none)
Calibrate = Callable[[np.ndarray | float], np.ndarray]  # a head's score -> what its weight weighs (non-decreasing)
Exact = Callable[[np.ndarray], dict[str, np.ndarray]]  # rows [n] -> {head: full served score [n]}


class UtilityError(ValueError):
    """A utility the artifact cannot answer: the message names the part that is wrong."""


class Utility(NamedTuple):
    """A caller's utility: checked weights (:func:`check_weights`) and the scale they weigh."""

    weights: dict[str, float]
    scale: str = PROBABILITY


def raw_score(score: np.ndarray | float) -> np.ndarray:
    """The score scale's "calibration" of every head: the score itself (float64, as a calibration returns)."""
    return np.asarray(score, np.float64)


def check_weights(weights: dict[str, float], heads: list[str]) -> dict[str, float]:
    """The weights of the heads with weight > 0; a UtilityError names an unknown head, a weight that is not a
    finite number >= 0, or weights that are all zero."""
    for h, w in weights.items():
        if h not in heads:
            raise UtilityError(f"utility: unknown head '{h}'; this artifact has {heads}")
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
            raise UtilityError(f"utility: weight of '{h}' is {w!r}; expected a finite number >= 0")
    out = {h: float(w) for h, w in weights.items() if w > 0}
    if not out:
        raise UtilityError("utility: every weight is 0; give one head a weight above 0")
    return out


def parse_utility(text: str, heads: list[str], presets: dict[str, dict[str, float]]) -> dict[str, float]:
    """``head:weight,head:weight`` (e.g. ``conversion:1,engagement:0.3``) or the name of one of the artifact's
    presets, as checked weights (:func:`check_weights`)."""
    if len(text) > MAX_TEXT:
        raise UtilityError(f"utility: {len(text)} characters; at most {MAX_TEXT}")
    if text in presets:
        return check_weights(presets[text], heads)
    weights: dict[str, float] = {}
    for part in text.split(","):
        m = TERM.fullmatch(part)
        if m is None:
            known = f"; presets: {sorted(presets)}" if presets else ""
            raise UtilityError(f"utility: '{part[:40]}' is not head:weight (e.g. conversion:1,engagement:0.3){known}")
        head, raw = m.groups()
        if head in weights:
            raise UtilityError(f"utility: head '{head}' is given twice")
        try:
            weights[head] = float(raw)
        except ValueError:
            raise UtilityError(f"utility: weight of '{head}' is '{raw}', not a number") from None
    return check_weights(weights, heads)


def utility_of(scores: dict[str, np.ndarray], weights: dict[str, float], calib: Mapping[str, Calibrate]) -> np.ndarray:
    """sum_h w_h * p_h(scores_h), over the weighted heads (any shape, float64)."""
    return sum(w * calib[h](scores[h]) for h, w in weights.items())


class UtilityAnswer(NamedTuple):
    rows: np.ndarray  # [<= k] catalogue rows, best first
    utility: np.ndarray  # [<= k] their utility
    per_head: dict[str, np.ndarray]  # {head: [<= k] full served score} for every head ``exact`` scores
    certified: bool  # the threshold proved the answer (else max_width stopped the widening)


def utility_answer(search: Search, exact: Exact, weights: dict[str, float], calib: Mapping[str, Calibrate],
                   hist_rows: np.ndarray, k: int, n_items: int, exclude: np.ndarray | None = None,
                   max_width: int | None = None) -> UtilityAnswer:
    """The top ``k`` catalogue rows by utility (see the module doc). hist_rows: the user's history items (scored
    by ``exact`` with their repeat term; always candidates); exclude: rows never answered."""
    exclude = np.zeros(0, np.int64) if exclude is None else np.asarray(exclude, np.int64)
    hist_rows = np.asarray(hist_rows, np.int64)
    m = search_width(k, len(hist_rows), len(exclude), n_items)
    max_width = min(n_items, 16 * m if max_width is None else max(max_width, m))
    certified = True
    while True:
        found, bound = [hist_rows], {}
        for h in weights:
            rows, scores = search(h, m)  # [K, m]
            found.append(rows[rows >= 0].astype(np.int64))
            # An item in no list scores at most the m-th result of its head's every interest search; a search
            # that returned fewer than m results returned everything, so nothing is left outside it.
            full = (rows >= 0).all(axis=1)
            bound[h] = float(np.max(np.where(full, scores[:, -1], -np.inf)))
        seen = np.unique(np.concatenate(found))
        seen = seen[~isin_few(seen, exclude)]
        per_head = exact(seen)
        u = utility_of(per_head, weights, calib)
        top = np.argsort(-u, kind="stable")[:k]
        if m >= n_items or any(np.isinf(b) for b in bound.values()):  # every item is in some list
            break
        ceiling = sum(w * calib[h](bound[h]) for h, w in weights.items())
        if len(top) == k and u[top[-1]] >= ceiling:
            break
        if m >= max_width:
            certified = False
            break
        m = min(2 * m, max_width)
    return UtilityAnswer(seen[top], u[top], {h: s[top] for h, s in per_head.items()}, certified)
