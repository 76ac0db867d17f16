"""Fit each head's calibration on the checkpoint's validation window (scikit-learn's logistic regression on the
served score: Platt scaling, the logistic calibration layer of the home-feed write-up). The test window is
never read; a checkpoint whose split leaves no validation window gets no calibration, and says so."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from retrieval.calibration import Platt, head_pairs
from retrieval.corpus import VALIDATION, Corpus
from retrieval.heads import Head, target_events
from retrieval.inference import TwoTower

log = logging.getLogger(__name__)


def fit_platt(scores: np.ndarray, labels: np.ndarray) -> Platt:
    """Platt scaling of scores [P] against 0/1 labels [P]; a ValueError when the labels are all one class.

    Where the fit finds higher scores no likelier (slope <= 0: the head's score says nothing about the outcome
    among the candidates it serves), the calibration is flat at the observed rate: a = 0, every candidate gets
    the base rate, and a slope the other way is never served (a utility must be increasing in every score)."""
    if labels.all() or not labels.any():
        raise ValueError(f"{int(labels.sum())} of {len(labels)} served pairs are positive: nothing to fit")
    # C large: effectively unpenalised, as Platt's fit is (two parameters, hundreds of thousands of pairs).
    m = LogisticRegression(C=1e6).fit(np.asarray(scores, np.float64)[:, None], labels)
    a, b = float(m.coef_[0, 0]), float(m.intercept_[0])
    if a <= 0:
        rate = float(labels.mean())
        log.warning("index: the fitted slope is %.4g (higher scores are not likelier): flat calibration at the "
                    "observed rate %.4g", a, rate)
        return Platt(0.0, float(np.log(rate / (1 - rate))))
    return Platt(a, b)


def calibrate_heads(model: TwoTower, corpus: Corpus, heads: list[Head], roles: dict[str, dict[str, float]],
                    k: int = 100, max_users: int | None = 2000, seed: int = 0,
                    items: dict[str, np.ndarray] | None = None) -> dict[str, dict[str, Any] | None]:
    """{head: its calibration and what it was fitted on} for every head, None for a head it cannot be fitted
    for (no validation window, no positive pair): that artifact serves no probability for it. items: each head's
    item vectors when the caller has embedded them already ({head: [N, D]})."""
    out: dict[str, dict[str, Any] | None] = {}
    if corpus.split is None or not (corpus.window == VALIDATION).any():
        log.warning("index: the checkpoint's split has no validation window: heads are served uncalibrated")
        return {h.name: None for h in heads}
    for head in heads:
        events = target_events(head, roles)
        pairs = head_pairs(model, corpus, [head], roles, VALIDATION, k, max_users, seed, items)[head.name]
        try:
            platt = fit_platt(pairs.scores, pairs.labels)
        except ValueError as e:
            log.warning("index: head %s is served uncalibrated: %s", head.name, e)
            out[head.name] = None
            continue
        out[head.name] = {**platt.to_dict(), "flat": platt.a == 0, "window": "validation", "target": events, "k": k,
                          "users": int(len(pairs.users)), "pairs": int(len(pairs.labels)),
                          "positives": int(pairs.labels.sum())}
        log.info("index: head %s calibrated on %d served pairs of %d validation users (%d positive): p = "
                 "sigmoid(%.3f * score %+.3f)", head.name, len(pairs.labels), len(pairs.users),
                 pairs.labels.sum(), platt.a, platt.b)
    return out
