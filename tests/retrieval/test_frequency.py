"""The streaming frequency estimator converges on a stream with known item probabilities."""

from __future__ import annotations

import numpy as np
import torch

from retrieval.frequency import StreamingFrequency


def test_converges_to_batch_probabilities():
    rng = np.random.default_rng(0)
    p = np.array([0.9, 0.5, 0.2, 0.05])  # chance of each item to be in a batch
    est = StreamingFrequency(buckets=1024, alpha=0.01)
    for _ in range(6000):
        keys = np.flatnonzero(rng.random(4) < p)
        est.update(torch.tensor(np.concatenate([keys, keys]), dtype=torch.long))  # duplicates count once
    got = est.log_prob(torch.arange(4)).exp().numpy()
    assert np.allclose(got, p, rtol=0.25), got
    assert got[0] > got[1] > got[2] > got[3]


def test_first_sighting_and_state_roundtrip():
    est = StreamingFrequency(buckets=16)
    for _ in range(9):
        est.update(torch.tensor([1]))
    est.update(torch.tensor([1, 2]))
    assert abs(est.log_prob(torch.tensor([2])).exp().item() - 1 / 10) < 1e-6  # unseen for 10 steps
    other = StreamingFrequency(buckets=16)
    other.load_state_dict(est.state_dict())  # buffers: resumed runs continue the estimate
    assert torch.equal(other.delta, est.delta) and other.step.item() == 10
