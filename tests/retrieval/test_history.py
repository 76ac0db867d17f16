"""History bags: merging an item's repeated events into one slot."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from retrieval.history import merge_repeats


def test_merge_repeats_sums_each_items_weight_against_a_loop():
    rng = np.random.default_rng(0)
    items = rng.integers(0, 6, (50, 9))  # 0 = padding
    items[3] = 0  # a row of padding only
    weights = np.where(items > 0, rng.random((50, 9)), 0).astype(np.float32)
    weights[items == 5] = 0  # events that weigh nothing keep their item's slot, at 0
    out_items, out_weights = merge_repeats(items, weights)
    assert out_items.shape[1] == max(len(set(r[r > 0])) for r in items) and out_weights.dtype == np.float32
    for r in range(len(items)):
        want = defaultdict(float)
        for i, w in zip(items[r], weights[r], strict=True):
            if i > 0:
                want[int(i)] += float(w)
        got = {int(i): float(w) for i, w in zip(out_items[r], out_weights[r], strict=True) if i > 0}
        assert got.keys() == want.keys() and np.allclose([got[i] for i in want], list(want.values()), atol=1e-6)
        n = len(want)  # slots packed right, padding (weight 0) left
        assert (out_items[r, : out_items.shape[1] - n] == 0).all() and (out_weights[r, : out_items.shape[1] - n] == 0).all()


def test_merge_repeats_of_an_empty_batch_keeps_one_padding_column():
    items, weights = merge_repeats(np.zeros((2, 4), np.int64), np.zeros((2, 4), np.float32))
    assert items.shape == weights.shape == (2, 1) and not items.any() and not weights.any()
