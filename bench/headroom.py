"""Headroom on synth's validation window: is there conversion signal in the log that the model misses?

    python bench/headroom.py [--checkpoint CKPT]

The quality report finds the full model and dual-weighted ALS within noise of each other on synth. This asks
whether either holds signal the other lacks, on the validation window only (the test window stays unread):
the model as the service answers, dual ALS, a baseline that knows nothing but the user's categories, the items'
popularity and the user's own items (retrieval.scorers.feature_popularity_scorer), and rank fusions of
the model with each (score = -w * log(1 + the model's rank) - (1 - w) * log(1 + the other's rank)). Where no
fusion beats the model alone, the other method carries nothing the model lacks, and the gap between the two is
all a better setting of the model could gain over the baseline.

Two more rows bound what any method could reach: an oracle that ranks by the purchases the world's hidden
traits (interests, style, fit, quality, price sensitivity) make expected in the window
(retrieval.synth_oracle), and the same without the purchase funnel (views expected from the visible traits
alone). They read the world's generator, not the log. Last, the model's scores plus a prior on the user's
category mix, and a table of which conversions each method finds (by the item's launch and whether the user
engaged with it before): where the model falls short of what the log shows.

CKPT defaults to the full model that bench/quality.py fitted to the validation window (run it first).
Writes the "headroom-synth" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import ROOT, publish, table  # noqa: E402
from retrieval import evaluate as E  # noqa: E402
from retrieval.checkpoint import load_trained  # noqa: E402
from retrieval.corpus import Corpus, EvalSet  # noqa: E402
from retrieval.metrics import recall  # noqa: E402
from retrieval.scorers import Scorer, feature_popularity_scorer, feature_share  # noqa: E402
from retrieval.synth import DAY, World, WorldConfig  # noqa: E402
from retrieval.synth_oracle import expected_purchases  # noqa: E402

SELECT = ROOT / "work" / "bench" / "synth" / "runs" / "two-tower_full" / "select" / "log"
FUSION_WEIGHTS = (0.25, 0.5, 0.75)
PRIOR_BETAS = (0.01, 0.02, 0.04)
ORACLE = "oracle: the hidden traits' expected purchases"


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


def synth_world(corpus: Corpus) -> World:
    """The world that wrote the corpus's log, from the world.json beside its events; its catalogue must be the
    corpus's, item for item."""
    summary = Path(corpus.config.events).parent / "world.json"
    if not summary.exists():
        raise SystemExit(f"headroom: no {summary}: the oracle needs the synthetic world that wrote the log")
    world = World(WorldConfig(**json.loads(summary.read_text())["config"]))
    if not np.array_equal(corpus.catalogue.to_numpy(), world.item_ids):
        raise SystemExit(f"headroom: {summary} does not describe this log's catalogue")
    return world


def oracle_scorer(corpus: Corpus, world: World, hi: int, views_only: bool) -> Scorer:
    """Expected purchases (views) in [the window's start, hi) per catalogue row, from the world's hidden traits."""

    def score(i: np.ndarray, es: EvalSet) -> np.ndarray:
        users = corpus.events.user_vocab.take(es.users[i]).to_numpy() - 1  # world users are user_id - 1
        return expected_purchases(world, users, es.now, hi, views=4000, views_only=views_only).astype(np.float32)

    return score


def with_category_prior(scorer: Scorer, corpus: Corpus, beta: float, feature: str = "category") -> Scorer:
    """scorer's scores plus beta * log(the user's share of weighted events before the window on the item's
    ``feature`` value, smoothed by 0.01 per value): the diagnostic of whether the model uses the user's mix."""
    code = np.asarray(corpus.item_inputs[feature], np.int64)  # [N]
    n_codes = int(code.max()) + 1

    def score(i: np.ndarray, es: EvalSet) -> np.ndarray:
        out = np.array(scorer(i, es), np.float32)
        for j, u in enumerate(i):
            share = feature_share(corpus, code, n_codes, es.users[u], es.end[u], 0.01)
            out[j] += beta * np.log(share / share.sum())[code]
        return out

    return score


def target_classes(corpus: Corpus, es: EvalSet, launch: np.ndarray) -> dict[str, np.ndarray]:
    """Masks over the window's conversions (concatenated user by user) by the item's launch (launch [N] per
    catalogue row) and whether the user engaged with it before the window."""
    target = np.concatenate(es.conversions)
    before = np.concatenate([np.isin(t, corpus.event_row[corpus.user_start[u]:end])
                             for t, u, end in zip(es.conversions, es.users, es.end, strict=True)])
    age = es.now - launch[target]
    old = age >= 7 * DAY
    return {"launched in the window": age < 0, "launched in the 7 days before": (age >= 0) & ~old,
            "older, engaged with before": old & before, "older, new to the user": old & ~before}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="a model fitted with the validation window held out")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    fits = sorted(SELECT.glob("version_*/checkpoints/best.ckpt"), key=lambda p: p.stat().st_mtime)
    ckpt = Path(a.checkpoint) if a.checkpoint else (fits[-1] if fits else None)  # the newest fit
    if ckpt is None or not ckpt.exists():
        raise SystemExit(f"headroom: no checkpoint at {a.checkpoint or SELECT}; run bench/quality.py "
                         f"--datasets synth first, or pass --checkpoint")
    trained = load_trained(ckpt)
    corpus = trained.corpus(split=True)
    es = corpus.eval_set(1)
    world = synth_world(corpus)
    raw = E.two_tower_scorer(trained.model, corpus)
    model = E.with_popularity_fallback(raw, corpus)
    als = E.als_scorer(corpus, es.now, dual=True)
    cat = E.with_popularity_fallback(feature_popularity_scorer(corpus, es.now), corpus)
    scorers = {"two-tower full (as served)": model, "ALS (dual-weighted)": als, "category x popularity": cat,
               ORACLE: E.with_popularity_fallback(oracle_scorer(corpus, world, corpus.split.test_start, False),
                                                  corpus),
               "oracle: expected views only (no fit, quality or price)":
                   E.with_popularity_fallback(oracle_scorer(corpus, world, corpus.split.test_start, True), corpus)}
    for name, other in (("ALS", als), ("category x popularity", cat)):
        for w in FUSION_WEIGHTS:
            scorers[f"fusion: {w} model + {1 - w} {name}"] = fused(model, other, w)
    for beta in PRIOR_BETAS:
        scorers[f"model + {beta} x log(user's category share)"] = E.with_popularity_fallback(
            with_category_prior(raw, corpus, beta), corpus)
    per_user, hits = {}, {}
    for name, s in scorers.items():
        ranks = E.rank_targets(s, es, corpus.n_items).conv_ranks
        per_user[name] = recall(ranks, 100)
        hits[name] = np.concatenate([np.asarray(r) < 100 for r in ranks])  # per target, as es.conversions
        print(f"{name}: {np.nanmean(per_user[name]):.4f}", file=sys.stderr)
    base = per_user["two-tower full (as served)"]
    rows = [[name, E.fmt_interval(E.bootstrap(r[~np.isnan(r)])), E.fmt_interval(E.paired_difference(r, base))]
            for name, r in per_user.items()]
    classes = target_classes(corpus, es, world.launch)
    sliced = ["two-tower full (as served)", "ALS (dual-weighted)", "category x popularity",
              f"model + {PRIOR_BETAS[-1]} x log(user's category share)", ORACLE]
    class_rows = [[name, *(f"{hits[name][m].mean():.3f}" for m in classes.values())] for name in sliced]
    users = int((~np.isnan(base)).sum())
    targets = sum(len(t) for t in es.conversions)
    publish("headroom-synth", "Headroom on synth's validation window", [
        f"Checkpoint: `{ckpt.relative_to(ROOT) if ckpt.is_relative_to(ROOT) else ckpt}` (fitted with the "
        f"validation window held out). Validation window: {users} users with {targets} distinct (user, item) "
        f"conversions; conversion recall@100 as the service answers, mean over users with a 95% bootstrap interval; "
        f"'minus the model' is paired over the same users. The category baseline's settings (all of the log's "
        f"events before the window, conversions mixed in at 0.5, smoothing 0.01) were set by hand on this window; "
        f"the fusion weights and the category prior's weights (served units) are the ones listed. The oracle rows "
        f"rank by what the world's generator makes expected in the window (retrieval.synth_oracle, 4,000 Monte "
        f"Carlo views per user), answering users with no earlier event with popularity as the service does: a "
        f"ceiling no model of the log can pass in expectation.", "",
        table(["method", "conv_recall@100", "minus the model"], rows), "",
        "Share of the window's conversions each method ranks in its top 100, by the item's launch and whether the "
        "user engaged with it before the window (conversions in each class: "
        + ", ".join(f"{k} {int(m.sum())}" for k, m in classes.items()) + "):", "",
        table(["method", *classes], class_rows)])


if __name__ == "__main__":
    main()
