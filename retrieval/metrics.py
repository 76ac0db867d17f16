"""Retrieval metrics from target ranks: the one definition of recall@K, for validation and the report alike."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def target_ranks(top: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Rank of each target in ``top`` (a user's retrieved rows, best first), len(top) where absent."""
    hit = top[:, None] == targets[None, :]  # [kmax, T]
    return np.where(hit.any(0), hit.argmax(0), len(top))


def recall(ranks: list[np.ndarray], k: int, select: list[np.ndarray] | None = None) -> np.ndarray:
    """Per user: the share of their (selected) distinct targets ranked < k; NaN where a user has none."""
    out = np.full(len(ranks), np.nan)
    for u, r in enumerate(ranks):
        r = r if select is None else r[select[u]]
        if len(r):
            out[u] = (r < k).mean()
    return out


def recall_at_k(scores: Tensor, targets: Tensor, ks: list[int]) -> dict[int, Tensor]:
    """Per-user recall@K of exact scores: scores [B, N] over the whole catalogue; targets [B, T] catalogue rows,
    -1 = padding. Returns {k: [B] recall} on the scores' device, NaN for users without targets."""
    kmax = min(max(ks), scores.shape[1])
    top = scores.topk(kmax, dim=1).indices.cpu().numpy()  # [B, kmax]
    t = targets.cpu().numpy()
    ranks = [target_ranks(top[b], t[b][t[b] >= 0]) for b in range(len(t))]
    return {k: torch.as_tensor(recall(ranks, k), dtype=scores.dtype, device=scores.device) for k in ks}
