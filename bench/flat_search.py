"""The exact path of a served answer in-process: faiss's own search against the service's (one matrix product,
a max over the interests, one partial sort: index.faiss_index.search), on the same artifact and users.

    python bench/flat_search.py --artifact work/demo/artifacts/VERSION [--users 1000] [--rounds 5]

Times ``Served.candidates`` (k=100, known users: the whole default answer, merging and calibration included) and
the search alone, with BLAS and OpenMP held to one thread as in the service. The two paths take turns, round
after round, so a disturbance of this shared machine moves both; the table shows each round's median.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import serve.store as store  # noqa: E402
from bench.report import publish, table  # noqa: E402
from serve.app import one_thread  # noqa: E402
from serve.load import load_served  # noqa: E402


def faiss_search(index, queries, k):
    return index.search(queries, k)


def per_call_ms(fn, args: list) -> float:
    t = time.perf_counter()
    for a in args:
        fn(*a)
    return (time.perf_counter() - t) / len(args) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--artifact", type=Path, required=True)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    one_thread()
    served = load_served(a.artifact)
    ids = pq.read_table(a.artifact / "users.parquet", columns=["user_id"]).column("user_id").to_pylist()
    users = [served.users.parse(str(u)) for u in ids[: a.users]]
    rows = [served.users.row(u) for u in users]
    queries = [(served.index, served.user_vecs["conversion"][r], 100 + 20) for r in rows]
    ours = store.search
    paths = {"faiss IndexFlatIP.search": faiss_search, "matrix product + max + partial sort (the service's)": ours}
    answer, search = {n: [] for n in paths}, {n: [] for n in paths}
    for _ in range(a.rounds):
        for name, fn in paths.items():
            store.search = fn  # what Served._answer calls
            answer[name].append(per_call_ms(lambda u: served.candidates(u, 100, False), [(u,) for u in users]))
            search[name].append(per_call_ms(fn, queries))
    store.search = ours
    ref = next(iter(paths))
    out = [[name, f"{np.median(answer[n]):.3f}", f"{np.median(search[n]):.3f}",
            f"{np.median(answer[ref]) / np.median(answer[n]):.2f}"] for name, n in zip(paths, paths, strict=True)]
    m = served.manifest
    publish("flat_search", "The exact search of one answer, in-process", [
        f"Artifact {a.artifact.name}: {m.n_items:,} items, `{m.factory}`, {m.interests} interest vector(s) per user, "
        f"dim {m.embedding_dim}. {len(users):,} known users, k=100 (each interest searched for 100 + 20 results "
        f"in the search-only column), {a.rounds} rounds, paths taking turns; BLAS and OpenMP on one thread.", "",
        table(["search", "ms per answer (Served.candidates)", "ms per search alone", "answer speed-up"], out), ""])


if __name__ == "__main__":
    main()
