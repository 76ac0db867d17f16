"""The exact path of a served answer in-process: faiss's own search against the service's (one matrix product,
a max over the interests, one partial sort: index.faiss_index.search), on the same artifact and users.

    python bench/flat_search.py --artifact work/demo/artifacts/VERSION [--artifact ANOTHER] [--users 1000] [--rounds 5]

Times ``Served.candidates`` (k=100, known users: the whole default answer, merging and calibration included) and
the search alone (the service's with the category prior's one-hot block scored as a gather, where it has one), with BLAS and OpenMP held to one thread as in the service. The two paths take turns, round
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


def faiss_search(index, queries, k, tail=None):
    return index.search(queries, k)  # faiss's own: the full product, one-hot block or not


def per_call_ms(fn, args: list) -> float:
    t = time.perf_counter()
    for a in args:
        fn(*a)
    return (time.perf_counter() - t) / len(args) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--artifact", type=Path, action="append", required=True,
                   help="an artifact folder; repeat to compare artifacts in one run (rounds take turns over all)")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    one_thread()
    ours = store.search
    paths = {"faiss IndexFlatIP.search": faiss_search, "matrix product + max + partial sort (the service's)": ours}
    cases, loaded = {}, {}  # (artifact, path) -> (served, users, queries, fn); artifact -> its Served
    for art in a.artifact:
        served = loaded[art] = load_served(art)
        ids = pq.read_table(art / "users.parquet", columns=["user_id"]).column("user_id").to_pylist()
        users = [served.users.parse(str(u)) for u in ids[: a.users]]
        queries = [(served.index, served.user_vecs["conversion"][served.users.row(u)], 100 + 20, served.onehot["conversion"])
                   for u in users]
        for name, fn in paths.items():
            cases[(art, name)] = (served, users, queries, fn)
    answer, search = {c: [] for c in cases}, {c: [] for c in cases}
    for _ in range(a.rounds):
        for c, (served, users, queries, fn) in cases.items():
            store.search = fn  # what Served._answer calls
            answer[c].append(per_call_ms(lambda u, s=served: s.candidates(u, 100, False), [(u,) for u in users]))
            search[c].append(per_call_ms(fn, queries))
    store.search = ours
    first = {art: np.median(answer[(art, next(iter(paths)))]) for art in a.artifact}  # each artifact's faiss row
    base = np.median(answer[(a.artifact[0], list(paths)[1])])  # the first artifact's service path
    out = [[art.name, name, f"{np.median(answer[(art, name)]):.3f}", f"{np.median(search[(art, name)]):.3f}",
            f"{first[art] / np.median(answer[(art, name)]):.2f}", f"{np.median(answer[(art, name)]) / base:.2f}"]
           for art, name in cases]
    manifests = {art: s.manifest for art, s in loaded.items()}
    described = "; ".join(f"{art.name}: {m.n_items:,} items, `{m.factory}`, {m.interests} interest vector(s) per "
                          f"user, dim {m.embedding_dim}" for art, m in manifests.items())
    publish("flat_search", "The exact search of one answer, in-process", [
        f"Artifact(s) {described}. {a.users:,} known users each, k=100 (each interest searched for 100 + 20 results "
        f"in the search-only column), {a.rounds} rounds, every artifact and path taking turns; BLAS and OpenMP on "
        f"one thread. 'Speed-up' is against the same artifact's faiss row; 'time against the first' is the answer's "
        f"time against the first artifact's service path.", "",
        table(["artifact", "search", "ms per answer (Served.candidates)", "ms per search alone", "answer speed-up",
               "time against the first"], out), ""])


if __name__ == "__main__":
    main()
