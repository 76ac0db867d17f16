"""Calibrated head scores: the probability that a served candidate at a given score is converted on (engaged
with) in the horizon, and how well such probabilities match what happened. numpy and the served scores only;
the fit itself (scikit-learn) is the index job's (index/calibrate.py).

The pairs a calibration is fitted and measured on are what the service serves: for each user active in a
window who has an earlier event (users without one get the popularity fallback, not model scores), the top
``k`` of one head's full served score at the window's start, each labelled 1 when the user has one of the
head's target events on that item in the window. The window is the horizon. Negatives are the served
candidates themselves, not sampled items, so no downsampling correction applies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from retrieval.corpus import VALIDATION, Corpus
from retrieval.embed import embed_items, states_from_inputs_heads
from retrieval.heads import Head, event_names, target_events
from retrieval.history import positions_before
from retrieval.inference import TwoTower
from retrieval.losses import interest_scores


@dataclass(frozen=True)
class Platt:
    """p = sigmoid(a * score + b) (Platt scaling of a head's served score); a > 0 keeps the ranking, a = 0 is a
    flat calibration (the base rate: the score said nothing on the calibration window)."""

    a: float
    b: float

    def __call__(self, score: np.ndarray | float) -> np.ndarray:
        z = self.a * np.asarray(score, np.float64) + self.b
        return 1.0 / (1.0 + np.exp(-z))

    def to_dict(self) -> dict[str, float]:
        return {"kind": "platt", "a": self.a, "b": self.b}

    @staticmethod
    def from_dict(d: dict) -> Platt:
        if not isinstance(d, dict) or d.get("kind") != "platt":
            raise ValueError(f"calibration: expected {{kind: platt, a, b}}, got {d!r}")
        a, b = d.get("a"), d.get("b")
        if not all(isinstance(v, int | float) and np.isfinite(v) for v in (a, b)) or a < 0:
            raise ValueError(f"calibration: a must be a finite number >= 0 and b finite, got a={a!r} b={b!r}")
        return Platt(float(a), float(b))


@dataclass
class Pairs:
    """Served (user, candidate) pairs of one head in one window: the head's score, the label, the user (index
    into ``users``) and the catalogue row."""

    scores: np.ndarray  # [P] float32 full served score
    labels: np.ndarray  # [P] bool: a target event on the item in the window
    user: np.ndarray  # [P] int64 position in ``users``
    rows: np.ndarray  # [P] int64 catalogue rows
    users: np.ndarray  # [U] user codes


def window_users(corpus: Corpus, window: int, max_users: int | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """(user codes [U], their history end [U], window start): users with an event in ``window`` (1 validation, 2
    test) and one before it, a seeded sample of at most ``max_users``."""
    ev = corpus.events
    now = int(corpus.split.val_start if window == VALIDATION else corpus.split.test_start)
    users = np.unique(ev.user[corpus.window == window])
    end = positions_before(ev.user, ev.ts, users, now)
    known = end > corpus.user_start[users]
    users, end = users[known], end[known]
    if max_users is not None and len(users) > max_users:
        keep = np.sort(np.random.default_rng(seed).choice(len(users), max_users, replace=False))
        users, end = users[keep], end[keep]
    return users, end, now


def window_targets(corpus: Corpus, window: int, users: np.ndarray, events: list[int]) -> list[np.ndarray]:
    """Per user, the distinct catalogue rows with one of ``events`` (event codes) in the window."""
    ev = corpus.events
    m = (corpus.window == window) & np.isin(ev.event, events)
    return [np.unique(corpus.event_row[lo:hi][m[lo:hi]]) for lo, hi in
            zip(corpus.user_start[users], corpus.user_end[users], strict=True)]


def served_pairs(model: TwoTower, corpus: Corpus, window: int, head: str, events: list[int], k: int = 100,
                 max_users: int | None = 2000, seed: int = 0, batch: int = 256,
                 items: np.ndarray | None = None) -> Pairs:
    """The top ``k`` of ``head``'s exact served score (inner product + repeat term, the answer a Flat index
    gives) for each active known user of ``window`` at its start, labelled by ``events`` in the window. items:
    the head's item vectors [N, D] when the caller has them (else embedded here)."""
    users, end, now = window_users(corpus, window, max_users, seed)
    targets = window_targets(corpus, window, users, events)
    if items is None:
        items = embed_items(model, corpus, progress=False, head=head)
    k = min(k, corpus.n_items)
    out = {n: [] for n in ("scores", "labels", "user", "rows")}
    for lo in range(0, len(users), batch):
        i = np.arange(lo, min(lo + batch, len(users)))
        x = corpus.user_batch(users[i], end[i], np.full(len(i), now, np.int64))
        vecs, hist = states_from_inputs_heads(model, x, {head: items})[head]  # [B, K, D], history full scores
        # The full served score: inner products, and each history item's own score with its repeat term (the
        # term is 0 elsewhere), rather than the repeat term over the whole catalogue ([B, N] twice more).
        s = interest_scores(torch.from_numpy(vecs), torch.from_numpy(items))  # [B, N]
        owner = np.repeat(np.arange(len(i)), np.diff(hist.offsets))
        s[torch.from_numpy(owner), torch.from_numpy(hist.rows.astype(np.int64))] = torch.from_numpy(hist.scores)
        # torch's topk: argpartition would write a [B, N] int64 array first (2 GB a batch at 1M items).
        top_s, top_t = s.topk(k, dim=1)
        top, top_s = top_t.numpy(), top_s.numpy()  # [B, k]
        for b, j in enumerate(i):
            out["scores"].append(top_s[b])
            out["labels"].append(np.isin(top[b], targets[j]))
            out["user"].append(np.full(k, j, np.int64))
            out["rows"].append(top[b].astype(np.int64))
    cat = {n: np.concatenate(v) if v else np.zeros(0) for n, v in out.items()}
    return Pairs(cat["scores"].astype(np.float32), cat["labels"].astype(bool), cat["user"].astype(np.int64),
                 cat["rows"].astype(np.int64), users)


def head_pairs(model: TwoTower, corpus: Corpus, heads: list[Head], roles: dict[str, dict[str, float]], window: int,
               k: int = 100, max_users: int | None = 2000, seed: int = 0,
               items: dict[str, np.ndarray] | None = None) -> dict[str, Pairs]:
    """:func:`served_pairs` of every head, each labelled by its calibration target events (heads.target_events)."""
    names = event_names(roles)
    return {h.name: served_pairs(model, corpus, window, h.name, [names.index(e) for e in target_events(h, roles)],
                                 k, max_users, seed, items=None if items is None else items[h.name])
            for h in heads}


def brier(p: np.ndarray, y: np.ndarray) -> float:
    """Mean squared error of probabilities ``p`` against 0/1 outcomes ``y``."""
    return float(np.mean((np.asarray(p, np.float64) - y) ** 2)) if len(p) else float("nan")


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean predicted, observed rate, count) per bin of about equal count (edges at quantiles of ``p``; equal
    values share a bin): a reliability diagram's points. Equal-count bins, since served probabilities crowd near
    the base rate, where equal-width bins would put nearly all of them in one."""
    p, y = np.asarray(p, np.float64), np.asarray(y, np.float64)
    edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)))
    b = np.searchsorted(edges[1:-1], p, side="right")  # [P] bin of each
    n = np.bincount(b, minlength=len(edges) - 1 or 1)
    keep = n > 0
    with np.errstate(invalid="ignore"):
        pred = np.bincount(b, p, len(n)) / n
        obs = np.bincount(b, y, len(n)) / n
    return pred[keep], obs[keep], n[keep]


def ece(p: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: the count-weighted mean |predicted - observed| over :func:`reliability`'s bins."""
    if len(p) == 0:
        return float("nan")
    pred, obs, n = reliability(np.asarray(p, np.float64), np.asarray(y, np.float64), bins)
    return float((n * np.abs(pred - obs)).sum() / n.sum())
