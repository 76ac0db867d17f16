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


def merge_repeats(items: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One slot per distinct item of each bag, with the summed weight of its events; as narrow as the widest row.

    items, weights: [B, L] (item 0 = padding, weight 0 there). Returns [B, W], W = most distinct items in a row
    (at least 1), slots packed to the right, padding on the left. Every reader of a bag weighs an item by its
    summed weight (the mean bag, the interests' attention: w * exp(key . x) summed over an item's events is
    (sum w) * exp(key . x); the repeat term's affinity), so each gets the same result from fewer positions.
    A slot whose events all weigh 0 stays, with weight 0.
    """
    b, length = items.shape
    order = np.argsort(items, axis=1, kind="stable")
    s_items = np.take_along_axis(items, order, 1)
    s_weights = np.take_along_axis(weights, order, 1)
    real = s_items > 0
    first = real.copy()
    first[:, 1:] &= s_items[:, 1:] != s_items[:, :-1]  # [B, L] first event of each distinct item
    n = first.sum(1)  # [B] distinct items per row
    width = max(int(n.max(initial=0)), 1)
    slot = np.cumsum(first, axis=1) - 1 + (width - n)[:, None]  # [B, L] column of each event's item
    row = np.broadcast_to(np.arange(b)[:, None], (b, length))
    out_items = np.zeros((b, width), items.dtype)
    out_items[row[first], slot[first]] = s_items[first]
    flat = (row * width + slot)[real]
    out_weights = np.bincount(flat, weights=s_weights[real], minlength=b * width).reshape(b, width)
    return out_items, out_weights.astype(weights.dtype)


def bag_inputs(rows: np.ndarray, weights: np.ndarray, lookups: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The user tower's history inputs from a bag of events: rows [B, L] catalogue row + 1 (0 = padding) and
    their weights; each distinct item once with its events' summed weight (:func:`merge_repeats`), read through
    ``lookups`` (input name -> [N + 1] value per catalogue row + 1: the item-ID row, history feature codes)."""
    rows, weights = merge_repeats(rows, weights)  # [B, W <= L]
    out = {k: lookup[rows] for k, lookup in lookups.items()}  # [B, W], 0 = padding or missing
    out["hist_weights"] = weights
    out["hist_rows"] = rows  # [B, W] catalogue row + 1, 0 = padding: the repeat term's keys
    return out
