"""FAISS inner-product indexes from a factory string: build (GPU when present), search, measure recall."""

from __future__ import annotations

import functools
import logging
from typing import Any

import faiss
import numpy as np

log = logging.getLogger(__name__)
FLT_MAX = float(np.finfo(np.float32).max)  # faiss's score of a padding result (-FLT_MAX, row -1)

def gpu_count() -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


@functools.cache
def gpu_resources() -> faiss.StandardGpuResources:
    """One set of GPU resources (scratch memory, streams) per process, shared by its GPU indexes."""
    return faiss.StandardGpuResources()


def to_gpu(index: faiss.Index) -> tuple[faiss.Index, str | None]:
    """A copy of ``index`` on GPU 0 for searching (Flat and IVF have GPU types in faiss), or ``index`` itself and
    why not (no GPU that faiss sees; an index type without a GPU implementation, such as HNSW)."""
    if gpu_count() == 0:
        return index, "faiss sees no GPU (faiss-cpu installed, or no CUDA device)"
    try:
        return faiss.index_cpu_to_gpu(gpu_resources(), 0, index), None
    except (RuntimeError, AttributeError) as e:
        return index, f"{type(index).__name__} has no GPU implementation ({str(e).splitlines()[0]})"


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


def stored_vectors(index: faiss.Index) -> np.ndarray | None:
    """The vectors an exact-storage index holds (IndexFlat, or HNSW over one) as an [N, D] view of its memory,
    no copy; None for other indexes (quantised, IVF, GPU). The view lives as long as the index is not added to:
    the service never adds to an index it serves (serve/store.py clones one before an add)."""
    flat = faiss.downcast_index(index.storage) if isinstance(index, faiss.IndexHNSW) else index
    if not isinstance(flat, faiss.IndexFlat):
        return None
    n = flat.ntotal
    if n == 0:
        return np.zeros((0, flat.d), np.float32)
    return faiss.rev_swig_ptr(flat.get_xb(), n * flat.d).reshape(n, flat.d)


def onehot_tail(xb: np.ndarray | None) -> tuple[int, np.ndarray] | None:
    """(d, codes) where the last columns of vectors xb [N, D], xb[:, d:], hold exactly one 1 per row and 0
    elsewhere (the category prior's block, retrieval/prior.py), codes [N] each row's 1 in it; None where no such
    block of two columns or more closes the vectors. Then q . x = q[:d] . x[:d] + q[d + code] exactly."""
    if xb is None or len(xb) == 0:
        return None
    d = xb.shape[1]
    while d > 0 and np.all((xb[:, d - 1] == 0) | (xb[:, d - 1] == 1)):
        d -= 1
    while xb.shape[1] - d >= 2:  # 0/1 columns; drop any at the front until every row holds one 1
        if np.all(xb[:, d:].sum(1) == 1):
            return d, xb[:, d:].argmax(1)
        d += 1
    return None


def search(index: faiss.Index, queries: np.ndarray, k: int,
           tail: tuple[int, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` of one user's K interest queries [K, D]: (scores, rows) best first, either [K, k] (one list
    per query, as ``index.search`` returns) or [1, k] (each item once, scored by its best query: the lists
    already merged). ``served_answer`` and the utility's threshold take either. Rows -1 and scores -FLT_MAX past
    the catalogue's end, as faiss pads.

    An exact CPU index (IndexFlatIP) is scored as one matrix product over its stored vectors, a max over the
    queries and one partial sort: for fewer queries than ``distance_compute_blas_threshold`` faiss scores item
    by item into a heap per query instead, several times slower at a served catalogue's size. Ties at equal
    score go to the lower row. tail: the index's :func:`onehot_tail`, whose block is scored as a gather of the
    queries' columns instead of a product over it. Other indexes (HNSW, IVF, GPU) search as faiss does."""
    if type(index) is not faiss.IndexFlatIP or len(queries) == 0:
        return index.search(queries, k)
    n = index.ntotal
    xb = stored_vectors(index)  # [N, D] a view, no copy
    if tail is not None and len(tail[1]) == n:
        d, codes = tail
        scores = queries[:, :d] @ xb[:, :d].T + np.take(queries[:, d:], codes, axis=1)  # [K, N]; take, not [:, codes]: faster
    else:
        scores = queries @ xb.T  # [K, N]
    best = scores.max(axis=0)  # [N] each item's best query (max over contiguous rows)
    m = min(k, n)
    part = np.sort(np.argpartition(-best, m - 1)[:m]) if m < n else np.arange(n)  # rows ascending: ties by row
    rows = part[np.argsort(-best[part], kind="stable")]
    rows, scores = rows.astype(np.int64), best[rows].astype(np.float32)
    if m < k:  # faiss pads past the catalogue
        rows = np.concatenate([rows, np.full(k - m, -1, np.int64)])
        scores = np.concatenate([scores, np.full(k - m, -FLT_MAX, np.float32)])
    return scores[None], rows[None]


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
