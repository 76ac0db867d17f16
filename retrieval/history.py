"""Event weights (role x dwell) and users' history bags, vectorised over numpy arrays."""

from __future__ import annotations

import numpy as np

from retrieval.contract import DataError
from retrieval.events import CONVERSION, Events

DWELL_KINDS = ("log", "step", "none")


def dwell_weight(dwell: np.ndarray, kind: str = "log", t_max: float = 120.0, threshold: float = 10.0) -> np.ndarray:
    """Engagement weight from dwell seconds in [0, 1].

    log: min(1, log1p(t) / log1p(t_max)); step: 1 if t >= threshold else 0; none: 1.
    """
    if kind == "log":
        return np.minimum(1.0, np.log1p(dwell) / np.log1p(t_max)).astype(np.float32)
    if kind == "step":
        return (dwell >= threshold).astype(np.float32)
    if kind == "none":
        return np.ones_like(dwell, np.float32)
    raise DataError(f"config: dwell weighting '{kind}' is not one of {DWELL_KINDS}")


def event_weights(events: Events, kind: str, t_max: float, threshold: float) -> np.ndarray:
    """[E] positive weight of each event: role weight, times the dwell weight for engagement."""
    w = events.base_weight * dwell_weight(events.dwell, kind, t_max, threshold)
    return np.where(events.kind == CONVERSION, events.base_weight, w).astype(np.float32)


def user_bounds(user: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """[U] first and one-past-last event position of each user code (events sorted by user)."""
    start = np.searchsorted(user, np.arange(n_users), side="left")
    end = np.searchsorted(user, np.arange(n_users), side="right")
    return start, end


def positions_before(user: np.ndarray, ts: np.ndarray, users: np.ndarray, cutoff: np.ndarray | int) -> np.ndarray:
    """[B] position one past each user's last event with ts < cutoff (events sorted by user, then ts)."""
    t0 = int(ts.min()) if len(ts) else 0
    span = int(ts.max()) - t0 + 2 if len(ts) else 1
    key = user.astype(np.int64) * span + (ts - t0)
    cut = np.clip(np.asarray(cutoff, np.int64) - t0, 0, span - 1)
    return np.searchsorted(key, users.astype(np.int64) * span + cut, side="left")


def gather_history(end: np.ndarray, start: np.ndarray, hist_item: np.ndarray, hist_weight: np.ndarray,
                   hist_ts: np.ndarray, now: np.ndarray, length: int, half_life_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The last ``length`` events in [start, end) of each row, as a bag.

    end, start, now: [B]; hist_*: [E] (hist_item > 0). Returns items [B, length] int64 (0 = padding) and
    weights [B, length] float32 = event weight x 0.5 ** (age / half_life) (0 on padding).
    """
    pos = end[:, None] - length + np.arange(length)[None, :]  # [B, L], oldest first
    valid = pos >= start[:, None]
    pos = np.where(valid, pos, 0)
    items = np.where(valid, hist_item[pos], 0)
    age = np.maximum(now[:, None] - hist_ts[pos], 0).astype(np.float32)
    decay = np.exp2(-age / np.float32(half_life_s)) if half_life_s > 0 else 1.0
    weights = np.where(valid & (items > 0), hist_weight[pos] * decay, 0.0).astype(np.float32)
    return items.astype(np.int64), weights
