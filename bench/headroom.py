"""Headroom on synth's validation window: is there conversion signal in the log that the model misses?

    python bench/headroom.py [--checkpoint CKPT]

The quality report finds the full model and dual-weighted ALS within noise of each other on synth. This asks
whether either holds signal the other lacks, on the validation window only (the test window stays unread):
the model as the service answers, dual ALS, a baseline that knows nothing but the user's categories, the items'
popularity and the user's own items (retrieval.scorers.feature_popularity_scorer), and rank fusions of
the model with each (score = -w * log(1 + the model's rank) - (1 - w) * log(1 + the other's rank)). Where no
fusion beats the model alone, the other method carries nothing the model lacks, and the gap between the two is
all a better setting of the model could gain over the baseline.

CKPT defaults to the full model that bench/quality.py fitted to the validation window (run it first).
Writes the "headroom-synth" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import ROOT, publish, table  # noqa: E402
from retrieval import evaluate as E  # noqa: E402
from retrieval.checkpoint import load_trained  # noqa: E402
from retrieval.corpus import EvalSet  # noqa: E402
from retrieval.metrics import recall  # noqa: E402
from retrieval.scorers import Scorer, feature_popularity_scorer  # noqa: E402

SELECT = ROOT / "work" / "bench" / "synth" / "runs" / "two-tower_full" / "select" / "log"
FUSION_WEIGHTS = (0.25, 0.5, 0.75)


def log_ranks(scores: np.ndarray) -> np.ndarray:
    """-log(1 + rank) per row of [B, N] scores (rank 0 = best)."""
    ranks = np.empty_like(scores, dtype=np.int64)
    order = np.argsort(-scores, axis=1, kind="stable")
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None].repeat(len(scores), 0), axis=1)
    return -np.log1p(ranks).astype(np.float32)


def fused(a: Scorer, b: Scorer, w: float) -> Scorer:
    def score(i: np.ndarray, es: EvalSet) -> np.ndarray:
        return w * log_ranks(np.asarray(a(i, es))) + (1 - w) * log_ranks(np.asarray(b(i, es)))

    return score


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="a model fitted with the validation window held out")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ckpt = Path(a.checkpoint) if a.checkpoint else next(iter(sorted(SELECT.glob("version_*/checkpoints/best.ckpt"))),
                                                          None)
    if ckpt is None or not ckpt.exists():
        raise SystemExit(f"headroom: no checkpoint at {a.checkpoint or SELECT}; run bench/quality.py "
                         f"--datasets synth first, or pass --checkpoint")
    trained = load_trained(ckpt)
    corpus = trained.corpus(split=True)
    es = corpus.eval_set(1)
    model = E.with_popularity_fallback(E.two_tower_scorer(trained.model, corpus), corpus)
    als = E.als_scorer(corpus, es.now, dual=True)
    cat = E.with_popularity_fallback(feature_popularity_scorer(corpus, es.now), corpus)
    scorers = {"two-tower full (as served)": model, "ALS (dual-weighted)": als, "category x popularity": cat}
    for name, other in (("ALS", als), ("category x popularity", cat)):
        for w in FUSION_WEIGHTS:
            scorers[f"fusion: {w} model + {1 - w} {name}"] = fused(model, other, w)
    per_user = {}
    for name, s in scorers.items():
        per_user[name] = recall(E.rank_targets(s, es, corpus.n_items).conv_ranks, 100)
        print(f"{name}: {np.nanmean(per_user[name]):.4f}", file=sys.stderr)
    base = per_user["two-tower full (as served)"]
    rows = [[name, E.fmt_interval(E.bootstrap(r[~np.isnan(r)])), E.fmt_interval(E.paired_difference(r, base))]
            for name, r in per_user.items()]
    users = int((~np.isnan(base)).sum())
    targets = sum(len(t) for t in es.conversions)
    publish("headroom-synth", "Headroom on synth's validation window", [
        f"Checkpoint: `{ckpt.relative_to(ROOT) if ckpt.is_relative_to(ROOT) else ckpt}` (fitted with the "
        f"validation window held out). Validation window: {users} users with {targets} distinct (user, item) "
        f"conversions; conversion recall@100 as the service answers, mean over users with a 95% bootstrap interval; "
        f"'minus the model' is paired over the same users. The category baseline's settings (all of the log's "
        f"events before the window, conversions mixed in at 0.5, smoothing 0.01) were set by hand on this window; "
        f"the fusion weights are the three listed.", "",
        table(["method", "conv_recall@100", "minus the model"], rows)])


if __name__ == "__main__":
    main()
