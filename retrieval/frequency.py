"""Streaming estimate of how often each item appears in a training batch (Yi et al., RecSys 2019).

Each item hashes to a bucket that remembers the step it was last seen (``last``) and a running average of
the steps between sightings (``delta``); 1 / delta estimates the item's chance of being in a batch, the
probability that logQ correction needs for in-batch negatives. No pre-pass over the data: it adapts as
the stream goes, and lives in the checkpoint as buffers so a resumed run continues where it was.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class StreamingFrequency(nn.Module):
    def __init__(self, buckets: int, alpha: float = 0.01):
        super().__init__()
        self.buckets, self.alpha = int(buckets), float(alpha)
        self.register_buffer("last", torch.full((self.buckets,), -1, dtype=torch.long))
        self.register_buffer("delta", torch.ones(self.buckets))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def _bucket(self, keys: Tensor) -> Tensor:
        return torch.remainder(keys, self.buckets)

    @torch.no_grad()
    def update(self, keys: Tensor) -> None:
        """Record one batch's items (duplicates within the batch count once). keys: [B] int64."""
        self.step += 1
        h = torch.unique(self._bucket(keys))
        seen = self.last[h] >= 0
        gap = (self.step - self.last[h]).to(self.delta.dtype)
        # First sighting at step t: unseen for t steps, so 1 / t is the natural first estimate.
        first = self.step.to(self.delta.dtype).expand_as(gap)
        self.delta[h] = torch.where(seen, (1 - self.alpha) * self.delta[h] + self.alpha * gap, first)
        self.last[h] = self.step

    def log_prob(self, keys: Tensor) -> Tensor:
        """[B] log of each item's estimated chance to be in a batch (call after update with the batch)."""
        return -torch.log(self.delta[self._bucket(keys)].clamp_min(1.0))
