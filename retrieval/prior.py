"""The user's mix over an item feature as a prior on the score: beta * log(share of the user's history on the
item's value of the feature).

Why: on the synthetic world the towers rank the items of a user's categories too low against the rest; adding
this prior to a trained model's scores raised validation recall (section "Headroom on synth's validation window"
of docs/benchmarks.md). Trained with it, the towers learn what the mix leaves over.

Served exactly by inner product: the user vector carries temperature * beta * log_share [C] and the item vector
the one-hot of its code [C], so the index ranks as training scores.
"""

from __future__ import annotations

import torch
from torch import Tensor


def log_share(codes: Tensor, weights: Tensor, width: int, smoothing: float) -> Tensor:
    """[B, C] log of each value's share of the user's weighted history, smoothed: codes, weights [B, L] (code 0 is
    padding or a missing value and counts nothing) -> log((w_c + s) / (sum_c w_c + s * C)) for c < C = width.
    A user with no history gets the uniform log(1 / C) everywhere."""
    w = (weights * (codes > 0)).to(torch.float32)
    counts = torch.zeros(codes.shape[0], width, dtype=w.dtype, device=w.device).scatter_add_(1, codes, w)
    return torch.log((counts + smoothing) / (counts.sum(1, keepdim=True) + smoothing * width))


def one_hot(codes: Tensor, width: int) -> Tensor:
    """[B, C] float one-hot of item codes [B]: the item side of the prior's inner product."""
    return torch.nn.functional.one_hot(codes.long(), width).to(torch.float32)
