"""Batch against live candidates on each dataset: does reading the user's fresh events help, against fair
baselines given the same events?

    python bench/live.py [--datasets synth,trivago,diginetica] [--reuse]

For each dataset: its config (configs/demo.yaml for synth) fitted on the training window, the checkpoint of
the best validation epoch (``--reuse``: the newest such checkpoint an earlier run left), then
``python -m retrieval.evaluate`` on the test window twice: the batch protocol (every user at the window's start,
as the service answers without live state) and the live protocol (each user at their first conversion in the
window, the window's events before it as fresh events; retrieval/live_eval.py). Writes the "live" section of
docs/benchmarks.md: the users and targets behind each figure, conversion recall@100 with bootstrap intervals,
and the live model's paired gain over each method.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import ROOT, publish, table  # noqa: E402
from retrieval import evaluate  # noqa: E402
from retrieval.evaluate import fmt_interval  # noqa: E402

DATA = {
    "synth": ("configs/demo.yaml", "work/demo", [sys.executable, "-m", "retrieval.synth", "--out", "work/demo/data"]),
    "trivago": ("configs/trivago.yaml", "work/trivago", [sys.executable, "-m", "retrieval.adapters", "trivago",
                str(ROOT.parent / "shared/data/trivago_recsys2019/trivago_val_100k.parquet.snappy"), "work/trivago/data"]),
    "diginetica": ("configs/diginetica.yaml", "work/diginetica", [sys.executable, "-m", "retrieval.adapters",
                   "diginetica", str(ROOT.parent / "shared/data/diginetica_cikm2016"), "work/diginetica/data"]),
}


def checkpoint(name: str, reuse: bool) -> Path:
    config, work, prepare = DATA[name]
    found = sorted((ROOT / work).glob("runs/*/version_*/checkpoints/best.ckpt"), key=lambda p: p.stat().st_mtime)
    if reuse and found:
        return found[-1]
    if not (ROOT / work / "data" / "events.parquet").exists():
        subprocess.run(prepare, cwd=ROOT, check=True)
    subprocess.run([sys.executable, "-m", "retrieval", "fit", "--config", config, "--trainer.enable_progress_bar=false"],
                   cwd=ROOT, check=True)
    return sorted((ROOT / work).glob("runs/*/version_*/checkpoints/best.ckpt"), key=lambda p: p.stat().st_mtime)[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default="synth,trivago,diginetica")
    p.add_argument("--reuse", action="store_true", help="score the newest best checkpoint of an earlier fit")
    a = p.parse_args()
    body = ["Conversion recall@100 on each dataset's test window: the model's batch answer (state at the window's "
            "start) and its live answer (the user tower at request time on the user's stored events plus the "
            "window's events before their first conversion, through the live service's own code), with the same "
            "fresh events given to popularity, item co-occurrence (session kNN's core) and dual-weighted ALS with "
            "the events folded in (`recalculate_user`). Mean over users [95% bootstrap]; paired: live model minus "
            "the method, over the same users. Checkpoints: each config's best validation epoch (not the quality "
            "report's refit).", ""]
    for name in a.datasets.split(","):
        ckpt = checkpoint(name, a.reuse)
        args = ["--checkpoint", str(ckpt), "--baselines", "popularity,als"]
        batch = evaluate.main(args)
        live = evaluate.main([*args, "--protocol", "live"])
        rb, rl = batch["results"], live["results"]
        rows = [["batch protocol: two-tower (users at the window's start)", batch["users"],
                 batch["targets"]["conv_recall@100"], fmt_interval(rb["two-tower"]["conv_recall@100"]), "–"]]
        for method, r in rl.items():
            gain = "–" if method == "two-tower" else fmt_interval(r["two_tower_minus_this@100"])
            rows.append([f"live protocol: {method}", live["users"], live["targets"]["conv_recall@100"],
                         fmt_interval(r["conv_recall@100"]), gain])
        body += [f"### {name}", "", f"checkpoint `{ckpt.relative_to(ROOT)}`; live protocol: users at their first "
                 f"conversion in the test window, targets from that moment on.", "",
                 table(["method", "users", "targets", "conv recall@100", "live two-tower minus this (paired)"], rows), ""]
    publish("live", "Live user state: batch against live candidates", body)


if __name__ == "__main__":
    main()
