"""The repeat term's history lookups against brute-force loops, and the term's place in the served score."""

from __future__ import annotations

import numpy as np
import torch

from retrieval.repeat import history_affinity, history_affinity_dense, history_items


def bag(seed=0, B=5, L=9, n_items=12):
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, n_items + 1, (B, L), generator=g)  # catalogue row + 1, 0 = padding
    rows[0] = 0  # a user with no history
    weights = torch.rand(B, L, generator=g) * (rows > 0)
    return rows, weights


def brute(rows, weights, cands):
    out = torch.zeros(rows.shape[0], len(cands))
    for b in range(rows.shape[0]):
        for n, c in enumerate(cands.tolist()):
            for l in range(rows.shape[1]):
                if int(rows[b, l]) > 0 and int(rows[b, l]) - 1 == c:
                    out[b, n] += weights[b, l]
    return out


def test_affinity_matches_brute_force_with_repeated_and_absent_candidates():
    for seed in range(4):
        rows, weights = bag(seed)
        cands = torch.tensor([3, 0, 3, 11, 7, 25, 0, 5])  # repeats, and row 25 no history can hold
        assert torch.allclose(history_affinity(rows, weights, cands), brute(rows, weights, cands), atol=1e-6)


def test_dense_affinity_matches_brute_force_over_the_catalogue():
    rows, weights = bag(1)
    dense = history_affinity_dense(rows, weights, 12)
    assert dense.shape == (5, 12)
    assert torch.allclose(dense, brute(rows, weights, torch.arange(12)), atol=1e-6)
    assert (dense[0] == 0).all()
    assert torch.allclose(history_affinity_dense(rows, weights, 6), dense[:, :6])  # a partial catalogue


def test_history_items_are_distinct_rows_with_summed_weights():
    rows, weights = bag(2)
    dense = brute(rows, weights, torch.arange(12)).numpy()
    for b, (items, w) in enumerate(history_items(rows.numpy(), weights.numpy())):
        assert (np.diff(items) > 0).all()
        assert set(items.tolist()) == set(np.flatnonzero(dense[b] > 0).tolist())
        assert np.allclose(w, dense[b, items], atol=1e-6)
