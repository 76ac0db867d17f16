"""Tuning on the validation window: does any setting of the full model beat a reference beyond noise there?

    python bench/tune.py [--dataset synth] [--trials 'name;name'] [--reference als] [--reuse]

Each trial is the dataset's config plus a few overrides (TRIALS), fitted on the training window only and scored
at its best epoch on the validation window by the same code as the quality report (retrieval/evaluate.py: users
with no earlier event get conversion popularity, as from the service). The reference is dual-weighted ALS fitted
on the same training window, or another trial; each row shows its paired gain over the reference with a 95%
interval from resampling users. The test window is never read, so a setting chosen here can be scored on it
without having been picked on it. Writes the "tune-DATASET" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.quality import WORK, fit, latest_checkpoints, prepare, val_curve  # noqa: E402
from bench.report import publish, table  # noqa: E402
from retrieval import evaluate as E  # noqa: E402
from retrieval.checkpoint import load_trained  # noqa: E402

log = logging.getLogger("bench.tune")
TRIALS = {  # name -> overrides of the dataset's config (python -m retrieval fit arguments)
    "config as is": [],
    "config as is, seeds 1": ["--seed_everything=1", "--data.seed=1"],
    "batch 256": ["--data.batch_size=256"],
    "sparse lr 0.001, 5 epochs": ["--model.sparse_lr=0.001", "--trainer.max_epochs=5"],
    "4096 sampled negatives": ["--data.num_negatives=4096"],
    "id dropout 0.5": ["--model.id_dropout=0.5"],
    "conversion-only": ["--config=configs/ablations/conversion_only.yaml"],
    "conversion-only, 6 epochs": ["--config=configs/ablations/conversion_only.yaml", "--trainer.max_epochs=6"],
    "engagement weight 0.3": ["--model.engagement_weight=0.3"],
    "engagement weight 1.0": ["--model.engagement_weight=1.0"],
    "aux weight 1.0": ["--model.aux_weight=1.0"],
    "no hidden layer": ["--model.hidden=[]"],
    "in-batch negatives only": ["--config=configs/ablations/in_batch_only.yaml"],
    "in-batch negatives only, aux weight 1.0": ["--config=configs/ablations/in_batch_only.yaml",
                                                "--model.aux_weight=1.0"],
}


def run_trial(dataset: str, name: str, reuse: bool) -> tuple[Path, list[float], float]:
    """Fit one trial on the training window; (its best checkpoint, validation curve, seconds)."""
    data, over = prepare(dataset)
    root = WORK / dataset / "tune" / name.replace(" ", "_").replace(",", "")
    done = root / "seconds.txt"
    if not (reuse and done.exists()):
        t = time.perf_counter()
        configs = [a.split("=", 1)[1].removeprefix("configs/") for a in TRIALS[name] if a.startswith("--config=")]
        fit(root, configs, data, over, [a for a in TRIALS[name] if not a.startswith("--config=")])
        done.write_text(f"{time.perf_counter() - t:.1f}")
    ckpts = latest_checkpoints(root)
    return ckpts / "best.ckpt", val_curve(ckpts), float(done.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="synth")
    p.add_argument("--trials", default=";".join(TRIALS), help="';'-separated names from TRIALS")
    p.add_argument("--reference", default="als", help="als (dual-weighted ALS) or a trial's name")
    p.add_argument("--reuse", action="store_true", help="score the fits an earlier run left instead of refitting")
    a = p.parse_args()
    trials = a.trials.split(";")
    unknown = set(trials) - set(TRIALS)
    if unknown:
        p.error(f"unknown trial(s) {sorted(unknown)}; choose from {list(TRIALS)}")
    if a.reference != "als" and a.reference not in trials:
        p.error(f"--reference {a.reference!r} is neither als nor one of the trials")
    logging.basicConfig(level=logging.WARNING)
    rows, per_user, corpus = {}, {}, None
    for name in trials:
        ckpt, curve, seconds = run_trial(a.dataset, name, a.reuse)
        trained = load_trained(ckpt)
        if corpus is None:  # the same data and split for every trial: one corpus and one set of users
            corpus = trained.corpus(split=True)
            es = corpus.eval_set(1)
        pu = E.rank_targets(E.with_popularity_fallback(E.two_tower_scorer(trained.model, corpus), corpus),
                            es, corpus.n_items)
        per_user[name] = E.recall(pu.conv_ranks, 100)
        rows[name] = [" ".join(TRIALS[name]) or "-", " ".join(f"{v:.3f}" for v in curve),
                      str(int(np.argmax(curve)) + 1), E.fmt_interval(E.bootstrap(per_user[name])), f"{seconds:.0f}"]
    if a.reference == "als":
        ref_name = "ALS (dual-weighted)"
        pu = E.rank_targets(E.als_scorer(corpus, es.now, dual=True), es, corpus.n_items)
        per_user[ref_name] = E.recall(pu.conv_ranks, 100)
        rows[ref_name] = ["implicit, as in the quality report", "-", "-",
                          E.fmt_interval(E.bootstrap(per_user[ref_name])), "-"]
    else:
        ref_name = a.reference
    for name, r in rows.items():
        r.append(E.fmt_interval(E.paired_difference(per_user[name], per_user[ref_name])))
    md = [f"Validation window from {es.now}: {len(es.users)} users with {sum(len(t) for t in es.conversions)} distinct "
          f"(user, item) conversions. Each trial is the dataset's config with the overrides shown, fitted on the "
          f"training window; conversion recall@100 at its best epoch (by the validation curve, which training "
          f"logs on the same window), mean over users [95% bootstrap]; the last column is the paired gain over "
          f"{ref_name} on the same users. The test window is not read.\n",
          table(["trial", "overrides", "validation curve (recall@100 per epoch)", "best epoch", "conv_recall@100",
                 "seconds", f"minus {ref_name}@100 (paired)"], [[n, *r] for n, r in rows.items()]), ""]
    cmd = f"python bench/tune.py --dataset {a.dataset}" + (f" --trials '{a.trials}'" if trials != list(TRIALS) else "")
    cmd += (f" --reference '{a.reference}'" if a.reference != "als" else "") + (
        " --reuse  # (fits an earlier run left were scored again, missing ones trained)" if a.reuse else "")
    publish(f"tune-{a.dataset}", f"Tuning on {a.dataset}'s validation window", md, cmd)


if __name__ == "__main__":
    main()
