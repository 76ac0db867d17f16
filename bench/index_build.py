"""Index build on 1M items: embedding time, build time and size per FAISS index, recall@100, latency, throughput.

    python bench/index_build.py [--items 1000000] [--train-steps 300] [--gpu] [--scale 10]

Embeddings are learned: a model is trained briefly on the large synthetic world (bench/big_world.py), then the
real index job's pieces embed every item and build each index. Recall@100 is against exact search on 1000
users' vectors; single-query latency uses one thread (as the service does); batched throughput 1024 at a time.

--gpu builds on the GPU (faiss-gpu) the index types that have a GPU implementation (Flat, IVF) and measures their
search from a GPU copy (what `python -m serve --gpu` searches), in the section "index_build_gpu". --scale R tiles
the embedded items R times, each copy with small Gaussian noise (sd 0.01), to measure a catalogue R times larger
(10 for 10M items) without training on it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.big_world import train_big  # noqa: E402
from bench.report import publish, table  # noqa: E402
from index.faiss_index import (  # noqa: E402
    apply_search_params,
    build_index,
    default_search_params,
    measure_recall,
    to_gpu,
)
from retrieval.embed import embed_items, embed_users  # noqa: E402

FACTORIES = ["Flat", "HNSW32", "IVF1024,Flat", "IVF4096,SQ8"]


def latency_ms(index: faiss.Index, queries: np.ndarray, k: int = 100) -> tuple[float, float]:
    faiss.omp_set_num_threads(1)
    times = []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None, :], k)
        times.append(time.perf_counter() - t)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def throughput(index: faiss.Index, queries: np.ndarray, k: int = 100) -> float:
    faiss.cvar.distance_compute_blas_threshold = 1  # batched: take the BLAS path whatever the batch size
    t = time.perf_counter()
    index.search(queries, k)
    return len(queries) / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--gpu", action="store_true", help="build and search on the GPU (Flat and IVF only)")
    p.add_argument("--scale", type=int, default=1, help="tile the items this many times (with noise)")
    a = p.parse_args()
    trained, dm = train_big(a.train_steps, users=a.users, items=a.items)  # also reused by bench/serve_load.py
    model = trained.net.eval()  # the plain inference module the index job embeds with
    t = time.perf_counter()
    items = embed_items(model, dm.corpus, progress=False)
    t_embed = time.perf_counter() - t
    n_embedded = len(items)
    rng = np.random.default_rng(0)
    users = embed_users(model, dm.corpus, items, progress=False)[0][rng.choice(len(dm.corpus.events.user_vocab), 1000, replace=False)]
    users = users.reshape(-1, items.shape[1])  # one query per interest vector
    if a.scale > 1:  # [N * R, D]: each copy jittered, so the index holds distinct vectors
        items = np.concatenate([items] + [items + rng.normal(0, 0.01, items.shape).astype(np.float32)
                                          for _ in range(a.scale - 1)])
    rows = []
    for factory in [f for f in FACTORIES if not (a.gpu and "HNSW" in f)]:  # HNSW has no GPU type
        t = time.perf_counter()
        index = build_index(items, factory, use_gpu=a.gpu)
        t_build = time.perf_counter() - t
        apply_search_params(index, default_search_params(factory))
        size = faiss.serialize_index(index).nbytes / 2**20
        if a.gpu:
            index, why = to_gpu(index)
            if why:
                sys.exit(f"--gpu: {why}")
            apply_search_params(index, default_search_params(factory))
        rec = measure_recall(index, items, users, 100)
        p50, p99 = latency_ms(index, users[:300])
        qps = throughput(index, users)
        rows.append([factory, f"{t_build:.1f}", f"{size:,.0f}", f"{rec:.4f}", f"{p50:.2f}", f"{p99:.2f}", f"{qps:,.0f}",
                     str(default_search_params(factory) or "-")])
        print(rows[-1], flush=True)
    publish("index_build" + ("_gpu" if a.gpu else "") + (f"_x{a.scale}" if a.scale > 1 else ""),
            f"Index build ({len(items):,} items{', GPU' if a.gpu else ''})", [
          (f"{n_embedded:,} items tiled {a.scale} times with noise (sd 0.01); " if a.scale > 1 else "") +
          f"{n_embedded:,} items embedded by the item tower in {t_embed:.1f} s ({n_embedded / t_embed:,.0f} items/s, "
          f"batch 8192, dim {items.shape[1]}); model trained {a.train_steps} steps on the 1M-user world. "
          "Recall@100 against exact search on 1000 users; latency: one query at a time on one thread "
          "(300 queries); throughput: 1000 queries in one batch on all cores"
          + (" (built on the GPU, searched from a GPU copy; size: the CPU copy saved)" if a.gpu else "") + ".", "",
          table(["index", "build s", "size MiB", "recall@100", "p50 ms", "p99 ms", "batched queries/s",
                 "search params"], rows), ""])


if __name__ == "__main__":
    main()
