"""Retrieval metrics over exact scores: recall@K per user against held-out targets."""

from __future__ import annotations

import torch
from torch import Tensor


def recall_at_k(scores: Tensor, targets: Tensor, ks: list[int]) -> dict[int, Tensor]:
    """Per-user recall@K: the share of a user's distinct targets found in their top K.

    scores: [B, N] over the whole catalogue; targets: [B, T] catalogue rows, -1 = padding.
    Returns {k: [B] recall}, NaN for users without targets.
    """
    kmax = min(max(ks), scores.shape[1])
    top = scores.topk(kmax, dim=1).indices  # [B, kmax]
    valid = targets >= 0
    n = valid.sum(1).to(scores.dtype)
    found_at = torch.full(targets.shape, kmax, dtype=torch.long, device=scores.device)  # rank of each target
    match = top[:, :, None] == targets[:, None, :]  # [B, kmax, T]
    hit = match.any(1)
    found_at[hit] = match.float().argmax(1)[hit]
    out = {}
    for k in ks:
        found = ((found_at < k) & valid).sum(1).to(scores.dtype)
        out[k] = torch.where(n > 0, found / n.clamp_min(1), torch.full_like(n, float("nan")))
    return out
