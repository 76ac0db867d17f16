"""FAISS indexes against exact search on seeded synthetic vectors."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from index.faiss_index import (
    apply_search_params,
    build_index,
    default_search_params,
    exact_topk,
    gpu_count,
    measure_recall,
    onehot_tail,
    search,
    stored_vectors,
)
from retrieval.answer import merge_interests


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


@pytest.mark.parametrize("queries", [1, 4])
@pytest.mark.parametrize("k", [1, 37, 500, 505])
def test_search_of_a_flat_index_is_faiss_merged_by_best_query(queries, k):
    """The service's search of an exact index (one matrix product, a max over the queries, a partial sort) is
    faiss's per-query answer merged by best score: the same rows in the same order, the same scores, faiss's
    padding past the catalogue's end."""
    rng = np.random.default_rng(queries * 1000 + k)
    xb = rng.standard_normal((500, 24)).astype(np.float32)
    q = rng.standard_normal((queries, 24)).astype(np.float32)
    index = faiss.IndexFlatIP(24)
    index.add(xb)
    want_s, want_r = index.search(q, k)
    want_r, want_s = merge_interests(want_r, want_s)
    got_s, got_r = search(index, q, k)
    assert got_r.shape == got_s.shape == (1, k) and got_r.dtype == np.int64
    real = got_r[0] >= 0
    np.testing.assert_array_equal(got_r[0][real], want_r[:k][want_r[:k] >= 0])
    np.testing.assert_allclose(got_s[0][real], want_s[:k][want_r[:k] >= 0], rtol=1e-5, atol=1e-5)
    assert (got_r[0][~real] == -1).all() and (got_s[0][~real] == -np.finfo(np.float32).max).all()
    assert real.sum() == min(k, 500)


def test_search_breaks_ties_by_row_and_passes_other_indexes_to_faiss():
    index = faiss.IndexFlatIP(2)
    index.add(np.array([[1, 0], [0, 1], [1, 0], [0.5, 0]], np.float32))
    _, rows = search(index, np.array([[1, 0]], np.float32), 3)
    assert rows.tolist() == [[0, 2, 3]]
    hnsw = faiss.IndexHNSWFlat(2, 8, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(np.array([[1, 0], [0, 1]], np.float32))
    scores, rows = search(hnsw, np.array([[0, 1], [1, 0]], np.float32), 1)  # one list per query
    assert rows.tolist() == [[1], [0]]


@pytest.mark.parametrize("factory", ["Flat", "HNSW8"])
def test_stored_vectors_are_the_index_vectors_without_a_copy(factory):
    x = vectors(300)
    index = build_index(x, factory)
    view = stored_vectors(index)
    assert view.shape == x.shape and (view == x).all()
    assert not view.flags.owndata  # a view of the index's memory
    rows = np.array([5, 0, 299, 5])
    assert (view[rows] == index.reconstruct_batch(rows)).all()


@pytest.mark.parametrize("factory", ["IVF8,Flat", "PQ4"])
def test_stored_vectors_of_other_indexes_is_none(factory):
    assert stored_vectors(build_index(vectors(500), factory)) is None


def test_a_one_hot_block_closing_the_vectors_is_found_and_searched_as_a_gather():
    """The category prior's block (one 1 per row) is found whole, and search through it as a gather ranks as the
    full product does; vectors without such a block, or with a row of two 1s in it, have none."""
    rng = np.random.default_rng(0)
    n, d, c = 500, 9, 6
    codes = rng.integers(0, c, n)
    xb = np.hstack([rng.normal(size=(n, d)), np.eye(c)[codes]]).astype(np.float32)
    tail = onehot_tail(xb)
    assert tail is not None and tail[0] == d and np.array_equal(tail[1], codes)
    index = faiss.IndexFlatIP(d + c)
    index.add(xb)
    for k_queries in (1, 3):
        q = rng.normal(size=(k_queries, d + c)).astype(np.float32)
        got_s, got_r = search(index, q, 20, tail)
        want_s, want_r = search(index, q, 20)
        assert np.array_equal(got_r, want_r) and np.allclose(got_s, want_s, atol=1e-5)
    assert onehot_tail(xb[:, :d]) is None  # dense columns only
    two = xb.copy()
    two[0, d:] = 1  # a row with several 1s: no one-hot block
    assert onehot_tail(two) is None
    assert onehot_tail(np.zeros((0, 4), np.float32)) is None
