"""FAISS indexes against exact search on seeded synthetic vectors."""

from __future__ import annotations

import numpy as np
import pytest

from index.faiss_index import (
    apply_search_params,
    build_index,
    default_search_params,
    exact_topk,
    gpu_count,
    isin_few,
    measure_recall,
    merge_answer,
    merge_history,
    merge_interests,
)


def vectors(n=2000, d=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_topk_matches_brute_force():
    x, q = vectors(300), vectors(20, seed=1)
    scores, rows = exact_topk(q, x, 7)
    full = q @ x.T
    for i in range(len(q)):
        want = np.argsort(-full[i], kind="stable")[:7]
        assert rows[i].tolist() == want.tolist()
        assert np.allclose(scores[i], full[i][want])
    s5, r5 = exact_topk(q, x[:5], 7)  # k past the catalogue: all of it, ranked
    assert r5.shape == (len(q), 5) and (r5 == np.argsort(-full[:, :5], axis=1, kind="stable")).all()


def test_flat_index_equals_exact_search():
    x, q = vectors(), vectors(50, seed=1)
    index = build_index(x, "Flat")
    s, r = index.search(q, 10)
    es, er = exact_topk(q, x, 10)
    assert (r == er).all() and np.allclose(s, es, atol=1e-5)
    assert measure_recall(index, x, q, 10) == 1.0


@pytest.mark.parametrize("factory", ["HNSW32", "IVF32,Flat"])
def test_ann_recall_is_measured_and_high(factory):
    x, q = vectors(), vectors(100, seed=2)
    index = build_index(x, factory)
    apply_search_params(index, default_search_params(factory))
    r = measure_recall(index, x, q, 20)
    assert 0.85 <= r <= 1.0


def test_ann_recall_drops_when_search_is_starved():
    x, q = vectors(), vectors(100, seed=2)
    index = build_index(x, "IVF32,Flat")
    apply_search_params(index, {"nprobe": 1})
    assert measure_recall(index, x, q, 20) < 0.8  # the check can fail: it measures, it does not assume


def test_gpu_requested_without_gpu_is_an_error():
    if gpu_count() > 0:
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="no GPU"):
        build_index(vectors(100), "Flat", use_gpu=True)


@pytest.mark.gpu
def test_gpu_build_equals_cpu_build():
    if gpu_count() == 0:
        pytest.skip("no GPU visible to faiss")
    x, q = vectors(5000), vectors(64, seed=3)
    cpu, gpu = build_index(x, "Flat", use_gpu=False), build_index(x, "Flat", use_gpu=True)
    assert (cpu.search(q, 10)[1] == gpu.search(q, 10)[1]).all()
    ivf = build_index(x, "IVF64,Flat", use_gpu=True)
    apply_search_params(ivf, {"nprobe": 16})
    assert measure_recall(ivf, x, q, 10) > 0.9


def test_isin_few_matches_numpy_isin():
    rng = np.random.default_rng(5)
    for n_members in (0, 1, 3, 40):
        values = rng.integers(-1, 60, 200)  # -1: a search's empty slot
        members = rng.choice(60, n_members, replace=False)
        assert np.array_equal(isin_few(values, members), np.isin(values, members))


def test_merge_history_is_the_exact_top_k_of_the_full_scores():
    """Search results with history items re-scored = the brute-force top k of inner product + repeat term."""
    rng = np.random.default_rng(3)
    items = rng.normal(size=(300, 8)).astype(np.float32)
    index = build_index(items, "Flat")
    for _ in range(20):
        u = rng.normal(size=(1, 8)).astype(np.float32)
        hist = rng.choice(300, rng.integers(0, 15), replace=False)
        full = items @ u[0]
        full[hist] += rng.uniform(0, 3, len(hist)).astype(np.float32)  # the repeat term
        k = 10
        s, r = index.search(u, k + len(hist))
        rows, scores = merge_history(r[0], s[0], hist, full[hist], k)
        want = np.argsort(-full, kind="stable")[:k]
        assert np.allclose(scores, full[want], atol=1e-5) and set(rows) == set(want)


def test_merge_interests_is_the_exact_top_of_the_best_interest():
    """K interest searches merged = the brute-force top M of each item's best interest score, each item once."""
    rng = np.random.default_rng(5)
    items = rng.normal(size=(300, 8)).astype(np.float32)
    index = build_index(items, "Flat")
    for K in (1, 2, 4):
        for _ in range(10):
            u = rng.normal(size=(K, 8)).astype(np.float32)
            s, r = index.search(u, 25)
            rows, scores = merge_interests(r, s)
            best = (items @ u.T).max(1)  # [300]
            want = np.argsort(-best, kind="stable")[:25]
            assert len(set(rows.tolist())) == len(rows) >= 25  # each item once, at least the top 25
            assert np.allclose(scores[:25], best[want], atol=1e-5) and set(rows[:25]) == set(want)
            assert (np.diff(scores) <= 0).all()
    r = np.array([[3, 1, -1], [1, 2, -1]])
    rows, scores = merge_interests(r, np.array([[0.9, 0.5, -np.inf], [0.7, 0.6, -np.inf]], np.float32))
    assert rows.tolist() == [3, 1, 2] and np.allclose(scores, [0.9, 0.7, 0.6])  # -1 (none) dropped


def test_merge_answer_is_the_exact_top_k_over_interests_and_history():
    """K interest searches + history items with their repeat term = the brute-force top k of the full score."""
    rng = np.random.default_rng(8)
    items = rng.normal(size=(300, 8)).astype(np.float32)
    index = build_index(items, "Flat")
    for K in (1, 3):
        for _ in range(10):
            u = rng.normal(size=(K, 8)).astype(np.float32)
            hist = rng.choice(300, rng.integers(0, 12), replace=False)
            full = (items @ u.T).max(1)  # [300] best interest
            full[hist] += rng.uniform(0, 3, len(hist)).astype(np.float32)
            k = 15
            s, r = index.search(u, k + len(hist))
            rows, scores = merge_answer(r, s, hist, full[hist], k)
            want = np.argsort(-full, kind="stable")[:k]
            assert np.allclose(scores, full[want], atol=1e-5) and set(rows) == set(want)
