"""Quality report: which method retrieves future conversions best, and by how much, per dataset.

    python bench/quality.py [--datasets synth,trivago,diginetica,synth10x] [--epochs N] [--tuned BEST.yaml]

For each dataset, in one run on the same temporal split: the two-tower model (full, and each ablation)
trained with the dataset's config (epochs chosen on the validation window, then refit on everything before the
test window with configs/refit.yaml, as a deployment would be), and the baselines (conversion and engagement popularity; implicit's
ALS on conversions and on dual-weighted interactions; where the items have a category feature, the user's share
of events per category times popularity, plus their own items: retrieval.scorers.feature_popularity_scorer). With ``--tuned``, also the setting a tuning run chose
(the ``best.yaml`` of ``python -m retrieval tune``: its model and data overrides; its epochs are chosen again on
validation, as every variant's are), paired against dual ALS too. Every method is scored on the test window by the
same code (retrieval/evaluate.py), with 95% bootstrap intervals over users. Writes the "quality" section of
docs/benchmarks.md and PNG plots under docs/img/.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import ROOT, publish, table  # noqa: E402
from retrieval import evaluate as E  # noqa: E402
from retrieval.adapters import diginetica, trivago  # noqa: E402
from retrieval.checkpoint import load_trained  # noqa: E402
from retrieval.cli import main as cli  # noqa: E402
from retrieval.events import ENGAGEMENT  # noqa: E402
from retrieval.model import TwoTowerModel  # noqa: E402
from retrieval.scorers import feature_popularity_scorer  # noqa: E402
from retrieval.split import temporal_split  # noqa: E402
from retrieval.synth import WorldConfig, generate  # noqa: E402

log = logging.getLogger("bench.quality")
WORK = ROOT / "work" / "bench"
SHARED = ROOT.parent / "shared" / "data"
VARIANTS = {  # name -> ablation config (None = the dataset's config as is: the full model)
    "two-tower full": None,
    "conversion-only": "conversion_only",
    "engagement-only": "engagement_only",
    "dual, no aux head": "dual_no_head",
    "full, no repeat term": "no_repeat",
    "full, no logQ": "no_logq",
    "full, in-batch negatives only": "in_batch_only",
    "full, one interest": "one_interest",
}
TUNED = "two-tower tuned"
SHOW = ["conv_recall@10", "conv_recall@50", "conv_recall@100", "conv_recall@500", "conv_ndcg@100", "eng_recall@100",
        "full_minus_this@100", "full_minus_this@100_with_history"]
SLICES = ["cold_item_conv_recall@100", "head_conv_recall@100", "torso_conv_recall@100", "tail_conv_recall@100",
          "short_history(<5)_conv_recall@100", "with_history_conv_recall@100", "engaged_before_conv_recall@100",
          "new_to_user_conv_recall@100"]


def world_config(name: str) -> WorldConfig:
    """The synthetic world of a dataset name: synth (the default world) or synth10x (ten times larger)."""
    return WorldConfig() if name == "synth" else WorldConfig(users=40_000, items=30_000)


def seeds(name: str, over: dict[str, str]) -> str:
    """The seeds behind a section, read from where they are set (the world, the config, the scorers' defaults)."""
    import inspect

    import yaml

    from retrieval.data import RetrievalData

    def default(fn, arg: str):
        return inspect.signature(fn).parameters[arg].default

    cfg = yaml.safe_load((ROOT / over["config"]).read_text())
    parts = [f"world {world_config(name).seed} (retrieval.synth.WorldConfig)"] if name.startswith("synth") else []
    parts += [f"training seed_everything {cfg.get('seed_everything')} and data.seed "
              f"{cfg.get('data', {}).get('seed', default(RetrievalData, 'seed'))} ({over['config']}; every variant, "
              f"both fits)", f"ALS random_state {default(E.als_scorer, 'seed')}",
              f"bootstrap and paired intervals {default(E.bootstrap, 'seed')} ({default(E.bootstrap, 'n')} resamples)"]
    return "Seeds: " + "; ".join(parts) + "."


def prepare(name: str) -> tuple[Path, dict[str, str]]:
    """Data folder and the config + path overrides of a dataset."""
    d = WORK / name / "data"
    if name.startswith("synth"):
        if not (d / "events.parquet").exists():
            generate(d, world_config(name))
        return d, {"config": "configs/demo.yaml", "items": str(d / "items.parquet"), "users": str(d / "users.parquet")}
    if name == "trivago":
        if not (d / "events.parquet").exists():
            trivago(SHARED / "trivago_recsys2019" / "trivago_val_100k.parquet.snappy", d)
        return d, {"config": "configs/trivago.yaml", "items": str(d / "items.parquet")}
    if not (d / "events.parquet").exists():
        diginetica(SHARED / "diginetica_cikm2016", d)
    return d, {"config": "configs/diginetica.yaml", "items": str(d / "items.parquet")}


def ablation_path(ablation: str) -> Path:
    """An ablation's config: a name under configs/ablations, or a YAML's own path (the tuned variant's)."""
    return Path(ablation) if ablation.endswith(".yaml") else ROOT / "configs" / "ablations" / f"{ablation}.yaml"


def tuned_overrides(best: Path) -> Path:
    """The model and data sections of a tuning run's best.yaml, written beside the quality runs: its trainer
    section (the epochs the tuning fit stopped at) is left out, since every variant chooses its epochs here."""
    import yaml

    raw = yaml.safe_load(best.read_text())
    out = WORK / "tuned_overrides.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# from {best}\n" + yaml.safe_dump({k: raw[k] for k in ("model", "data") if k in raw}))
    return out


def fit(root: Path, configs: list[str], data: Path, over: dict[str, str], extra: list[str]) -> Path:
    """Run ``python -m retrieval fit`` into ``root``; returns the folder of its checkpoints."""
    args = ["fit", "--config", str(ROOT / over["config"])]
    for c in configs:
        args += ["--config", str(ROOT / "configs" / c)]
    args += [f"--data.events={data / 'events.parquet'}", f"--data.items={over['items']}",
             f"--trainer.default_root_dir={root}", f"--trainer.logger.init_args.save_dir={root}",
             "--trainer.logger.init_args.name=log", "--trainer.enable_progress_bar=false", *extra]
    if "users" in over:
        args.append(f"--data.users={over['users']}")
    cli(args)
    return latest_checkpoints(root)


def latest_checkpoints(root: Path) -> Path:
    """The checkpoint folder of the newest fit under ``root``."""
    return sorted(root.glob("log/version_*/checkpoints"), key=lambda p: p.stat().st_mtime)[-1]


def train(name: str, variant: str, ablation: str | None, data: Path, over: dict[str, str], epochs: int | None,
          test_start: int, reuse: bool) -> tuple[Path, list[float], float]:
    """Choose the epochs on validation, then refit up to the test window.

    Returns the final checkpoint, the validation curve and the training seconds; ``reuse``: take both fits from an
    earlier run of this command when they are there (to re-score without retraining)."""
    root = WORK / name / "runs" / variant.replace(" ", "_").replace(",", "")
    done, used = root / "seconds.txt", root / "overrides.yaml"
    spec = ablation_path(ablation).read_text() if ablation else ""
    # reused only when fitted from the same overrides: a tuned variant of another choice is trained again
    if reuse and done.exists() and (not used.exists() or used.read_text() == spec):
        chosen, final = latest_checkpoints(root / "select"), latest_checkpoints(root / "refit")
        return final / "last.ckpt", val_curve(chosen), float(done.read_text())
    t = time.perf_counter()
    configs = [str(ablation_path(ablation))] if ablation else []
    chosen = fit(root / "select", configs, data, over, [f"--trainer.max_epochs={epochs}"] if epochs else [])
    curve = val_curve(chosen)
    best_epochs = int(np.argmax(curve)) + 1
    final = fit(root / "refit", [*configs, "refit.yaml"], data, over,
                [f"--trainer.max_epochs={best_epochs}", f"--data.split.val_start={test_start}"])
    seconds = time.perf_counter() - t
    done.write_text(f"{seconds:.1f}")
    used.write_text(spec)
    return final / "last.ckpt", curve, seconds


def changes_nothing(over: dict[str, str], ablation: str | None) -> bool:
    """Whether an ablation only sets model options to what the dataset's config already has (e.g. one interest
    where the config has one): its fit would repeat the full model's."""
    import inspect

    import yaml

    if ablation is None:
        return False
    abl = yaml.safe_load(ablation_path(ablation).read_text())
    model = yaml.safe_load((ROOT / over["config"]).read_text()).get("model", {})
    defaults = {k: p.default for k, p in inspect.signature(TwoTowerModel).parameters.items()}
    return set(abl) == {"model"} and all(model.get(k, defaults.get(k)) == v for k, v in abl["model"].items())


def val_curve(checkpoints: Path) -> list[float]:
    rows = list(csv.DictReader(open(checkpoints.parent / "metrics.csv")))
    return [float(r["val/conv_recall@100"]) for r in rows if r.get("val/conv_recall@100")]


def test_start_of(data: Path, over: dict[str, str]) -> int:
    """Start of the test window under the dataset config's split (the same for every method)."""
    import pyarrow.parquet as pq
    import yaml

    cfg = yaml.safe_load((ROOT / over["config"]).read_text())["data"].get("split", {})
    ts = pq.read_table(data / "events.parquet", columns=["ts"]).column("ts").to_numpy()
    return temporal_split(ts, **cfg).test_start


def run_dataset(name: str, epochs: int | None, variants: list[str], reuse: bool = False,
                tuned: Path | None = None) -> tuple[list[str], dict]:
    """Train, score and plot one dataset: (the report section's paragraphs, {method: metrics})."""
    data, over = prepare(name)
    results, curves, seconds, per_user = {}, {}, {}, {}
    corpus = es = None

    def score(method: str, scorer: E.Scorer) -> None:
        pu = E.rank_targets(scorer, es, corpus.n_items)
        results[method] = E.summarize(pu, corpus, es, slices=slices)
        per_user[method] = E.recall(pu.conv_ranks, 100)

    test_start = test_start_of(data, over)
    runs = {v: abl for v, abl in VARIANTS.items() if v in variants}  # in VARIANTS' order: the full model first
    if tuned:
        runs[TUNED] = str(tuned_overrides(tuned))
    for variant, ablation in runs.items():
        if changes_nothing(over, ablation):
            continue
        ckpt, curves[variant], seconds[variant] = train(name, variant, ablation, data, over, epochs, test_start, reuse)
        trained = load_trained(ckpt)
        if corpus is None:
            corpus = trained.corpus(split=True)
            es = corpus.eval_set(2, None)
            if es.now != test_start:
                raise RuntimeError(f"{name}: the refit's test window starts at {es.now}, not {test_start}")
            slices = E.conversion_slices(corpus, es)
            known = es.end > corpus.user_start[es.users]  # users with an earlier event
        # Every method answers users with no earlier event with conversion popularity, as the service does
        # (ALS's scorer falls back for the users it never saw).
        exact = E.two_tower_scorer(trained.model, corpus)
        score(variant, E.with_popularity_fallback(exact, corpus))
        if ablation is None:
            score("two-tower full, HNSW32 index", E.with_popularity_fallback(E.index_scorer(trained.model, corpus), corpus))
            if not known.all():  # what the fallback replaces, for the record
                score("two-tower full, own answer for unknown users", exact)
    now = es.now
    score("popularity (conversions)", E.popularity_scorer(corpus, now))
    score("popularity (engagement)", E.popularity_scorer(corpus, now, ENGAGEMENT))
    score("ALS (conversions)", E.als_scorer(corpus, now, dual=False))
    score("ALS (dual-weighted)", E.als_scorer(corpus, now, dual=True))
    if "category" in corpus.item_inputs:  # what category, popularity and repeats alone retrieve
        score("category x popularity", E.with_popularity_fallback(feature_popularity_scorer(corpus, now), corpus))
    full = per_user.get("two-tower full")
    for m, r in results.items():  # paired: full model minus this method, per user, resampled together
        none = (np.nan,) * 3 + (0,)
        r["full_minus_this@100"] = E.paired_difference(full, per_user[m]) if full is not None else none
        r["full_minus_this@100_with_history"] = (E.paired_difference(full[known], per_user[m][known])
                                                 if full is not None else none)
    tuned_note = ""
    if tuned:  # the goal of a tuning run: its choice against dual ALS, paired per user on the test window
        d = E.paired_difference(per_user[TUNED], per_user["ALS (dual-weighted)"])
        tuned_note = (f"The tuned setting ({tuned}, row '{TUNED}') minus dual-weighted ALS, conversion recall@100 "
                      f"per user, paired: {E.fmt_interval(d)}.\n")
    behind, ref = E.targets_behind(corpus, es, slices), next(iter(results.values()))
    n_conv = behind["conv_recall@100"]
    n_in = {k: behind[f"{k}_conv_recall@100"] for k in slices}
    no_history = int((~known).sum())
    plots = plot(name, results, curves)

    def behind_row(metrics: list[str]) -> list[str]:
        """The users and targets (conversions; engagements for eng_*) behind each column's figures."""
        return ["*users / targets behind each figure*",
                *(f"{ref[m][3]} / {behind[m]}" if m in behind else f"{ref[m][3]} users" for m in metrics)]

    md = [f"Test window: {len(es.users)} users with {n_conv} distinct (user, item) conversions; catalogue "
          f"{corpus.n_items} items. Of the conversions, {n_in['cold_item']} are of items with no event before the window "
          f"(cold) and {n_in['engaged_before']} ({n_in['engaged_before'] / n_conv:.0%}) of items the user engaged with "
          f"before; {no_history} of the {len(es.users)} users ({no_history / len(es.users):.0%}) have no earlier event: an artifact built at the window's start does not "
          f"know them, so the service answers them with conversion popularity, and so does every method here but the "
          f"row marked 'own answer' (with_history: the users a method can personalise for). Mean over users with a 95% bootstrap interval (1000 resamples of users); "
          f"full_minus_this@100 is the full model's conversion recall@100 minus the method's, per user, with a paired "
          f"interval (the full model wins beyond noise where it excludes 0); _with_history: the same over the users with "
          f"an earlier event. Two-tower "
          f"variants: epochs chosen on the validation window (training curves below), then refit on everything before "
          f"the test window, as the baselines are. Training seconds per variant (both fits): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + ".\n",
          table(["method", *SHOW], [behind_row(SHOW), *([m, *(E.fmt_interval(r[k]) for k in SHOW)] for m, r in results.items())]),
          "", "Slices (conversion recall@100) and what is retrieved:\n",
          table(["method", *SLICES, "coverage@100", "top-1% items' share of slots"],
                [behind_row([*SLICES, "coverage@100"]) + ["-"],
                 *([m, *(E.fmt_interval(r[k]) for k in SLICES), E.fmt_interval(r["coverage@100"]), E.fmt_interval(r["top1%_items_share_of_slots"])]
                   for m, r in results.items())]), "",
          " ".join(f"![{p.stem}](img/{p.name})" for p in plots), "", tuned_note, seeds(name, over), ""]
    return md, results


def save(fig, filename: str) -> Path:
    import matplotlib.pyplot as plt

    path = ROOT / "docs" / "img" / filename
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot(name: str, results: dict, curves: dict) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    ks = E.KS
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)  # 11+ methods: the default cycle repeats after 10
    for m, r in results.items():
        ax.plot(ks, [r[f"conv_recall@{k}"][0] for k in ks], marker="o", label=m,
                linestyle="--" if not m.startswith(("two-tower", "conv", "eng", "dual", "full")) else "-")
    ax.set_xscale("log")
    ax.set_xlabel("K")
    ax.set_ylabel("conversion recall@K (test)")
    ax.set_title(f"{name}: future conversions retrieved")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    out.append(save(fig, f"quality_{name}_recall.png"))
    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = list(results)
    w = 0.8 / len(names)
    for j, m in enumerate(names):
        vals = [results[m][s][0] for s in SLICES]
        ax.bar(np.arange(len(SLICES)) + j * w, np.nan_to_num(vals), w, label=m)
    ax.set_xticks(np.arange(len(SLICES)) + 0.4, [s.replace("_conv_recall@100", "") for s in SLICES], fontsize=8)
    ax.set_ylabel("conversion recall@100")
    ax.set_title(f"{name}: slices")
    ax.legend(fontsize=6)
    out.append(save(fig, f"quality_{name}_slices.png"))
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, c in curves.items():
        ax.plot(range(1, len(c) + 1), c, marker="o", label=m)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation conversion recall@100")
    ax.set_title(f"{name}: training curves")
    ax.legend(fontsize=7)
    out.append(save(fig, f"quality_{name}_training.png"))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default="synth,trivago,diginetica")
    p.add_argument("--epochs", type=int, default=None, help="override every config's max_epochs")
    p.add_argument("--reuse", action="store_true",
                   help="score the fits an earlier run left instead of training them again (variants without one train)")
    p.add_argument("--variants", default=";".join(VARIANTS), help="two-tower variants to train (';'-separated)")
    p.add_argument("--tuned", type=Path, default=None, help="a tuning run's best.yaml: also train and score the "
                   "setting it chose (row 'two-tower tuned'), paired against dual ALS")
    a = p.parse_args()
    if a.tuned is not None and not a.tuned.is_file():
        p.error(f"--tuned {a.tuned}: no such file (the best.yaml of `python -m retrieval tune --out DIR`)")
    if a.tuned is not None and "," in a.datasets:
        p.error("--tuned: one dataset at a time (a tuning run's choice belongs to the config it tuned)")
    variants = a.variants.split(";")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variant(s) {sorted(unknown)}; choose from {list(VARIANTS)}")
    logging.basicConfig(level=logging.WARNING)
    for name in a.datasets.split(","):
        md, _ = run_dataset(name, a.epochs, variants, a.reuse, a.tuned)
        cmd = f"python bench/quality.py --datasets {name}" + (f" --epochs {a.epochs}" if a.epochs else "")
        if variants != list(VARIANTS):
            cmd += f" --variants '{a.variants}'"
        if a.tuned:
            cmd += f" --tuned {a.tuned}"
        if a.reuse:
            cmd += " --reuse  # (fits an earlier run left were scored again, missing ones trained)"
        publish(f"quality-{name}", f"Quality on {name}: retrieving future conversions", md, cmd)


if __name__ == "__main__":
    main()
