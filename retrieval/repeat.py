"""The repeat term: how much a user has already engaged with an item, added to the two-tower score.

A mean-pooled history bag cannot say "this very item is in the history": its vector is one of 200 averaged
in. Yet a large share of purchases are of items the user looked at before (38 % of the synthetic world's test
conversions), and a factor model like ALS, which reconstructs the user's own row, ranks them high. So the
score of user u and item i is

    u . v_i + scale * log1p(a(u, i)),    a(u, i) = summed (decayed) weight of i's events in u's history bag,

with ``scale >= 0`` learned with the towers. The term is zero for items outside the history, so retrieval stays
an inner-product search plus an exact merge of the user's few history items (index.faiss_index.merge_history,
kept there so the service answers with numpy and FAISS alone).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from retrieval.history import merge_repeats
from retrieval.losses import matches


def history_affinity(hist_rows: Tensor, hist_weights: Tensor, cand_rows: Tensor) -> Tensor:
    """[B, N] summed weight of each candidate in each row's history bag.

    hist_rows: [B, L] catalogue row + 1 of each history event (0 = padding); hist_weights: [B, L];
    cand_rows: [N] catalogue rows (repeats allowed; torch.arange(n) for a whole catalogue). A sorted join over the
    distinct candidates, not a dense [B, L, N] comparison (200 M entries at batch 1024 with 1024 negatives).
    """
    uniq, inverse = torch.unique(cand_rows, return_inverse=True)  # [U], [N]
    item = hist_rows - 1  # [B, L]
    pos = torch.searchsorted(uniq, item).clamp_max(len(uniq) - 1)
    hit = (hist_rows > 0) & (uniq[pos] == item)
    out = torch.zeros(hist_rows.shape[0], len(uniq), dtype=hist_weights.dtype, device=hist_weights.device)
    out.scatter_add_(1, pos, torch.where(hit, hist_weights, torch.zeros_like(hist_weights)))
    return out[:, inverse]


def history_entries(hist_rows: Tensor, hist_weights: Tensor, cand_rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The non-zero entries of ``history_affinity(hist_rows, hist_weights, cand_rows)``, in (row, column) order:
    rows [P], columns [P], summed weights [P].

    A sorted join of the history events with the candidate columns, each (row, column) summed once: the dense
    [B, N] it replaces is almost all zeros, and scanning it for the few entries cost more than the rest of the
    repeat term."""
    L, N = hist_rows.shape[1], cand_rows.shape[0]
    event, column = matches(hist_rows.reshape(-1) - 1, cand_rows)  # [M] pairs; padding (-1) matches no row
    key, inverse = torch.unique(torch.div(event, L, rounding_mode="floor") * N + column, return_inverse=True)
    value = torch.zeros(key.shape[0], dtype=hist_weights.dtype, device=hist_weights.device).index_add_(
        0, inverse, hist_weights.reshape(-1)[event])
    keep = value != 0
    key = key[keep]
    return torch.div(key, N, rounding_mode="floor"), key % N, value[keep]


def history_items(hist_rows: np.ndarray, hist_weights: np.ndarray,
                  merged: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's distinct catalogue rows with their summed weight, as CSR over a history bag ([B, L] as above):
    offsets [B + 1], rows [H], weights [H]. Items whose events weigh nothing are left out. merged: the bag holds
    each item once already (history.bag_inputs' bags), so the merge is skipped."""
    items, weights = (hist_rows, hist_weights) if merged else merge_repeats(hist_rows, hist_weights)
    keep = weights > 0  # [B, W]; padding weighs 0
    offsets = np.concatenate([[0], np.cumsum(keep.sum(1))]).astype(np.int64)
    return offsets, items[keep] - 1, weights[keep]


def repeat_scale(raw: Tensor) -> Tensor:
    """The learned scale, kept >= 0 (more engagement never counts against an item)."""
    return torch.nn.functional.softplus(raw)
