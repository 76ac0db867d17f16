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
    measure_recall,
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
