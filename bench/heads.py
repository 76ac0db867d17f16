"""Heads at serving time, measured on the test window: are the calibrated probabilities calibrated, how stable
are they across model versions, and what does the utility trade?

    python bench/heads.py [--datasets synth,trivago] [--reuse] [--users 2000]

For each dataset: its config's checkpoint of the best validation epoch (``--reuse``: the newest an earlier run
left; otherwise a fit), each head calibrated on the validation window exactly as the index job does
(index/calibrate.py), then on the test window:
- calibration: the served candidates of each head (top 100 of its exact score, each known user active in the
  window), their calibrated probability against the outcome; Brier score and expected calibration error (15
  equal-count bins), against the raw score read as a probability (clipped to [0, 1]); a reliability diagram;
- the utility sweep: conversion and engagement recall@100 of the answer ranked by p_conversion + w *
  p_engagement as w goes from 0 to 1 (users with no earlier event get popularity, as from the service);
- on synth, a second model trained with another seed: for the (user, item) pairs both versions serve, how far
  apart their calibrated probabilities are, against their raw scores.
Writes the "heads" section of docs/benchmarks.md and docs/img/heads_<dataset>_*.png.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.live import DATA, checkpoint  # noqa: E402
from bench.report import ROOT, publish, table  # noqa: E402
from index.calibrate import calibrate_heads  # noqa: E402
from retrieval.calibration import Pairs, Platt, brier, ece, head_pairs, reliability  # noqa: E402
from retrieval.checkpoint import load_trained  # noqa: E402
from retrieval.corpus import TEST  # noqa: E402
from retrieval.evaluate import (  # noqa: E402
    bootstrap,
    fmt_interval,
    rank_targets,
    utility_scorer,
    with_popularity_fallback,
)
from retrieval.heads import heads_of, role_spec  # noqa: E402
from retrieval.metrics import recall  # noqa: E402

WEIGHTS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
IMG = ROOT / "docs" / "img"


def sweep(trained, corpus, calib, users: int) -> list[tuple[float, tuple, tuple]]:
    es = corpus.eval_set(TEST, users)
    out = []
    for w in WEIGHTS:
        weights = {"conversion": 1.0, **({"engagement": w} if w else {})}
        scorer = with_popularity_fallback(utility_scorer(trained.model, corpus, weights, calib), corpus)
        pu = rank_targets(scorer, es, corpus.n_items, kmax=100)
        out.append((w, bootstrap(recall(pu.conv_ranks, 100)), bootstrap(recall(pu.eng_ranks, 100))))
    return out


def pairs_of(trained, corpus, users: int) -> dict[str, Pairs]:
    return head_pairs(trained.model, corpus, heads_of(trained.hparams), role_spec(trained.config.roles), TEST,
                      max_users=users)


def spread(a: tuple, b: tuple, head: str) -> list[str]:
    """Pairs both versions serve (same user, same item): |difference| of calibrated probabilities and of raw
    scores, each also in units of that quantity's spread over the pairs (its standard deviation)."""
    (pa, ca), (pb, cb) = a, b
    ka = {(int(pa.users[u]), int(r)): s for u, r, s in zip(pa.user, pa.rows, pa.scores, strict=True)}
    common = [(key, ka[key], s) for key, s in zip(((int(pb.users[u]), int(r)) for u, r in zip(pb.user, pb.rows,
                                                                                           strict=True)),
                                                  pb.scores, strict=True) if key in ka]
    sa, sb = np.array([c[1] for c in common], np.float64), np.array([c[2] for c in common], np.float64)
    p1, p2 = ca(sa), cb(sb)
    raw_d, p_d = np.abs(sa - sb), np.abs(p1 - p2)
    rel = lambda d, x1, x2: d.mean() / np.concatenate([x1, x2]).std()  # noqa: E731
    return [head, str(len(common)), f"{raw_d.mean():.4f}", f"{rel(raw_d, sa, sb):.3f}", f"{p_d.mean():.5f}",
            f"{rel(p_d, p1, p2):.3f}", f"{np.median(p_d / np.maximum(p1, p2)):.3f}",
            f"{np.median(raw_d / np.maximum(np.abs(sa), np.abs(sb))):.3f}"]


def plot(name: str, rel_rows: dict, sweep_rows: list) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMG.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(rel_rows), figsize=(5 * len(rel_rows), 4.2))
    for ax, (head, (pairs, cal)) in zip(np.atleast_1d(axes), rel_rows.items(), strict=True):
        y = pairs.labels.astype(float)
        # Log axes: calibrated probabilities sit near the base rate, raw scores near 1; a bin observed at 0 is
        # drawn at the floor.
        floor = 0.5 / len(y)
        for label, p, mark in (("calibrated", cal(pairs.scores), "o-"), ("raw score", np.clip(pairs.scores, 0, 1), "s--")):
            pred, obs, _ = reliability(p, y)
            ax.plot(np.maximum(pred, floor), np.maximum(obs, floor), mark, label=label, ms=4)
        ax.plot([floor, 1], [floor, 1], color="grey", lw=0.8, label="perfectly calibrated")
        ax.set(xscale="log", yscale="log", xlabel="predicted probability", ylabel="observed rate",
               title=f"{name}: {head} head (test window)")
        ax.legend()
    fig.tight_layout()
    rel_path = IMG / f"heads_{name}_reliability.png"
    fig.savefig(rel_path, dpi=110)
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    conv = [r[1][0] for r in sweep_rows]
    eng = [r[2][0] for r in sweep_rows]
    ax.plot(eng, conv, "o-")
    for w, x, y in zip([r[0] for r in sweep_rows], eng, conv, strict=True):
        ax.annotate(f"w={w:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set(xlabel="engagement recall@100", ylabel="conversion recall@100",
           title=f"{name}: utility p_conv + w * p_eng (test window)")
    fig.tight_layout()
    sweep_path = IMG / f"heads_{name}_utility.png"
    fig.savefig(sweep_path, dpi=110)
    plt.close("all")
    return [f"![reliability]({rel_path.relative_to(ROOT / 'docs')})", f"![utility]({sweep_path.relative_to(ROOT / 'docs')})"]


def second_seed(name: str, reuse: bool) -> Path:
    """The dataset's config fitted again with seed_everything 1, in its own run folder."""
    config, work, _ = DATA[name]
    runs = ROOT / work / "runs_seed1"
    found = sorted(runs.glob("*/version_*/checkpoints/best.ckpt"), key=lambda p: p.stat().st_mtime)
    if reuse and found:
        return found[-1]
    subprocess.run([sys.executable, "-m", "retrieval", "fit", "--config", config, "--seed_everything=1",
                    "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={runs}",
                    f"--trainer.logger.init_args.save_dir={runs}"], cwd=ROOT, check=True)
    return sorted(runs.glob("*/version_*/checkpoints/best.ckpt"), key=lambda p: p.stat().st_mtime)[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default="synth,trivago")
    p.add_argument("--reuse", action="store_true", help="use the newest best checkpoints of earlier fits")
    p.add_argument("--users", type=int, default=2000, help="users sampled per window (calibration, test pairs, sweep)")
    a = p.parse_args()
    body = ["Each head calibrated on the validation window by the index job's own code (Platt scaling of the "
            "served score, fitted on the top 100 served candidates of each known user active in the window); "
            "measured on the test window. ECE: 15 equal-count bins. Raw: the served score read as a probability "
            "(clipped to [0, 1]), what a ranking stage would otherwise compare. Targets: the head's calibration "
            "target events in the window (conversion: purchases / clickouts; engagement: the engagement events).", ""]
    for name in a.datasets.split(","):
        ckpt = checkpoint(name, a.reuse)
        trained = load_trained(ckpt)
        corpus = trained.corpus(split=True)
        heads = heads_of(trained.hparams)
        roles = role_spec(trained.config.roles)
        fitted = calibrate_heads(trained.model, corpus, heads, roles, max_users=a.users)
        calib = {h: Platt(c["a"], c["b"]) for h, c in fitted.items() if c}
        test = pairs_of(trained, corpus, a.users)
        rows = []
        for h, pairs in test.items():
            y, cal = pairs.labels.astype(float), calib[h]
            raw = np.clip(pairs.scores, 0, 1)
            rows.append([h, str(len(pairs.users)), str(len(y)), str(int(y.sum())), f"{y.mean():.4f}",
                         f"{cal(pairs.scores).mean():.4f}", f"{brier(cal(pairs.scores), y):.5f}", f"{brier(raw, y):.5f}",
                         f"{ece(cal(pairs.scores), y):.4f}", f"{ece(raw, y):.4f}",
                         f"sigmoid({cal.a:.2f} s {cal.b:+.2f}), {fitted[h]['pairs']} validation pairs"])
        sw = sweep(trained, corpus, calib, a.users)
        body += [f"### {name}", "", f"checkpoint `{ckpt.relative_to(ROOT)}`, catalogue {corpus.n_items} items", "",
                 table(["head", "test users", "served pairs", "positives", "observed rate", "mean p", "Brier (p)",
                        "Brier (raw)", "ECE (p)", "ECE (raw)", "calibration"], rows), "",
                 f"Utility sweep: rank by p_conversion + w * p_engagement; users converting in the test window "
                 f"(a seeded sample of up to {a.users}); recall@100, mean over users [95% bootstrap].", "",
                 table(["w (engagement)", "conversion recall@100", "engagement recall@100", "users"],
                       [[f"{w:g}", fmt_interval(c), fmt_interval(e), str(c[3])] for w, c, e in sw]), ""]
        if name == "synth":
            other = load_trained(second_seed(name, a.reuse))
            ocorpus = other.corpus(split=True)
            ofit = calibrate_heads(other.model, ocorpus, heads_of(other.hparams), roles, max_users=a.users)
            otest = pairs_of(other, ocorpus, a.users)
            srows = [spread((test[h], calib[h]), (otest[h], Platt(ofit[h]["a"], ofit[h]["b"])), h) for h in test]
            body += ["Version to version: the same configuration trained with seed 1 beside seed 0; for the (user, "
                     "item) pairs both serve on the test window, the mean absolute difference of their raw scores and of "
                     "their calibrated probabilities, each also divided by that quantity's standard deviation over "
                     "the pairs (unitless: how far apart, against how much the quantity varies), and the median "
                     "relative difference, abs(x1 - x2) / max(abs(x1), abs(x2)).", "",
                     table(["head", "pairs in both", "raw mean abs. diff", "raw diff / sd", "p mean abs. diff", "p diff / sd",
                            "p median rel. diff", "raw median rel. diff"], srows), ""]
        body += plot(name, {h: (test[h], calib[h]) for h in test}, sw) + [""]
    publish("heads", "Heads: calibration and the utility trade-off", body)


if __name__ == "__main__":
    main()
