from __future__ import annotations

import torch

from retrieval.metrics import recall_at_k


def test_recall_at_k_exact():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.5], [0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.0, 1.0]])
    targets = torch.tensor([[1, 2], [0, -1], [-1, -1]])
    r = recall_at_k(scores, targets, [1, 2, 4])
    assert r[1][:2].tolist() == [0.0, 0.0] and r[2][:2].tolist() == [0.5, 0.0] and r[4][:2].tolist() == [1.0, 1.0]
    assert torch.isnan(r[1][2])
