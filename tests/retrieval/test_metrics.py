from __future__ import annotations

import torch

from retrieval.metrics import recall_at_k


def test_recall_at_k_exact():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.5], [0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.0, 1.0]])
    targets = torch.tensor([[1, 2], [0, -1], [-1, -1]])
    r = recall_at_k(scores, targets, [1, 2, 4])
    assert r[1][:2].tolist() == [0.0, 0.0] and r[2][:2].tolist() == [0.5, 0.0] and r[4][:2].tolist() == [1.0, 1.0]
    assert torch.isnan(r[1][2])


def test_validation_recall_agrees_with_the_offline_report():
    """Validation's torch recall@K and the report's numpy ranks (evaluate.rank_targets + recall) are two
    implementations of one metric: on the same scores and targets they must give the same per-user figures."""
    import numpy as np

    from retrieval import evaluate as E
    from retrieval.corpus import EvalSet

    rng = np.random.default_rng(0)
    n_users, n_items = 40, 700
    scores = rng.random((n_users, n_items)).astype(np.float32)
    targets = [rng.choice(n_items, rng.integers(0, 6), replace=False) for _ in range(n_users)]  # some users: none
    es = EvalSet(users=np.arange(n_users), end=np.zeros(n_users, np.int64), now=0, conversions=targets,
                 engagement=[np.zeros(0, np.int64)] * n_users)
    ranks = E.rank_targets(lambda i, es: scores[i], es, n_items).conv_ranks
    padded = torch.full((n_users, 6), -1, dtype=torch.long)
    for u, t in enumerate(targets):
        padded[u, :len(t)] = torch.as_tensor(t)
    ks = [1, 10, 100, 500]
    got = recall_at_k(torch.as_tensor(scores), padded, ks)
    for k in ks:
        assert np.allclose(got[k].numpy(), E.recall(ranks, k), equal_nan=True)
    assert any(len(t) == 0 for t in targets) and 0 < np.nanmean(E.recall(ranks, 100)) < 1
