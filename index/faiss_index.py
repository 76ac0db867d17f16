"""FAISS inner-product indexes from a factory string: build (GPU when present), search, measure recall."""

from __future__ import annotations

import logging
from typing import Any

import faiss
import numpy as np

log = logging.getLogger(__name__)
FLT_MAX = float(np.finfo(np.float32).max)  # faiss's score of a padding result (-FLT_MAX, row -1)

def gpu_count() -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def build_index(vectors: np.ndarray, factory: str = "Flat", use_gpu: bool | None = None,
                train_size: int = 262_144, seed: int = 0) -> faiss.Index:
    """A trained CPU index holding ``vectors`` [N, D] float32 (inner product).

    use_gpu: None = when a GPU is present. Training and adding run on the GPU where faiss supports the
    index type there (Flat, IVF*); the result comes back to the CPU to be saved and served.
    """
    n, d = vectors.shape
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    gpus = gpu_count()
    if use_gpu is None:
        use_gpu = gpus > 0
        if not use_gpu:
            log.info("index: no GPU found (faiss.get_num_gpus() = 0): building on the CPU")
    if use_gpu and gpus == 0:
        raise RuntimeError("index: use_gpu requested but faiss sees no GPU (is faiss-gpu installed?)")
    work = index
    if use_gpu:
        try:
            res = faiss.StandardGpuResources()
            work = faiss.index_cpu_to_gpu(res, 0, index)
            log.info("index: building %s on GPU 0", factory)
        except (RuntimeError, AttributeError) as e:  # index type without a GPU implementation (e.g. HNSW)
            log.info("index: %s cannot be built on the GPU (%s); building on the CPU", factory, e)
            work = index
    if not work.is_trained:
        rng = np.random.default_rng(seed)
        sample = vectors if n <= train_size else vectors[np.sort(rng.choice(n, train_size, replace=False))]
        work.train(np.ascontiguousarray(sample))
    for lo in range(0, n, 1 << 16):
        work.add(np.ascontiguousarray(vectors[lo: lo + (1 << 16)]))
    return faiss.index_gpu_to_cpu(work) if work is not index else index


class FactoryError(ValueError):
    """A factory string faiss cannot build for the embedding dimension."""


def check_factory(factory: str, dim: int) -> None:
    """A FactoryError saying why, before any work, when faiss cannot build ``factory`` for ``dim`` (parsing the
    string builds an empty index: no training, no memory to speak of)."""
    try:
        faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:  # faiss: "Error in ... at index_factory.cpp:N: could not parse index string X"
        reason = str(e).splitlines()[0].rsplit(": ", 1)[-1]
        raise FactoryError(f"index factory {factory!r} cannot be built for dim {dim}: {reason}") from None


def default_search_params(factory: str) -> dict[str, Any]:
    """Search-time knobs that give high recall at low latency for the index type."""
    if "IVF" in factory:
        return {"nprobe": 32}
    if "HNSW" in factory:
        return {"efSearch": 128}
    return {}


def apply_search_params(index: faiss.Index, params: dict[str, Any]) -> None:
    for name, value in params.items():
        faiss.ParameterSpace().set_index_parameter(index, name, value)


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``index.search`` for the few queries of one request: ([Q, k] scores, [Q, k] rows), best first (rows -1 and score
    -FLT_MAX past the catalogue's end, as faiss pads).

    An exact CPU index (IndexFlatIP) is scored as one matrix product over its stored vectors and a partial sort:
    for fewer queries than ``distance_compute_blas_threshold`` faiss scores item by item into a heap instead of
    calling BLAS, several times slower at a served catalogue's size. Ties at equal score go to the lower row.
    Other indexes (HNSW, IVF, GPU) search as faiss does."""
    if type(index) is not faiss.IndexFlatIP or len(queries) == 0:
        return index.search(queries, k)
    n = index.ntotal
    xb = faiss.rev_swig_ptr(index.get_xb(), n * index.d).reshape(n, index.d)  # [N, D] a view, no copy
    scores = queries @ xb.T  # [Q, N]
    m = min(k, n)
    part = np.argpartition(-scores, m - 1, axis=1)[:, :m] if m < n else np.broadcast_to(np.arange(n), scores.shape)
    part = np.sort(part, axis=1)  # rows ascending, so the stable sort below breaks ties by row
    top = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    rows, top = np.take_along_axis(part, order, axis=1), np.take_along_axis(top, order, axis=1)
    if m < k:  # faiss pads past the catalogue with -1 rows and -inf scores
        pad = ((0, 0), (0, k - m))
        rows, top = np.pad(rows, pad, constant_values=-1), np.pad(top, pad, constant_values=-FLT_MAX)
    return top.astype(np.float32, copy=False), rows.astype(np.int64, copy=False)


def exact_topk(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k by inner product: ([Q, k] scores, [Q, k] rows), best first.

    faiss.knn blocks the queries and the vectors, so its memory stays bounded where a numpy [Q, N] score matrix
    of many queries against a large catalogue does not."""
    k = min(k, len(vectors))
    if len(queries) == 0 or k == 0:
        return np.zeros((len(queries), k), np.float32), np.zeros((len(queries), k), np.int64)
    return faiss.knn(np.ascontiguousarray(queries, np.float32), np.ascontiguousarray(vectors, np.float32), k,
                     metric=faiss.METRIC_INNER_PRODUCT)


def measure_recall(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Mean share of the index's top-k that belongs in the exact top-k.

    Tie-aware: a returned item counts when its true score reaches the exact k-th score (two float paths may
    order near-ties differently at the boundary); true scores are recomputed from the vectors, so a quantised
    index is judged on what it returns, not on its own approximate distances.
    """
    if len(queries) == 0:
        return float("nan")
    k = min(k, len(vectors))
    exact_scores, _ = exact_topk(queries, vectors, k)
    # faiss sends batches with batch x dim under this threshold to its slower non-BLAS path.
    faiss.cvar.distance_compute_blas_threshold = 1
    _, approx = index.search(np.ascontiguousarray(queries), k)
    valid = approx >= 0
    true = np.einsum("qd,qkd->qk", queries, vectors[np.where(valid, approx, 0)])  # [Q, k]
    tol = 1e-5 * np.maximum(1.0, np.abs(exact_scores[:, -1:]))
    hits = (valid & (true >= exact_scores[:, -1:] - tol)).sum(1)
    return float(np.mean(hits) / k)
