"""History bags with an item's repeated events merged into one slot, against the unmerged bag: training step time.

    python bench/history_merge.py [--config configs/demo.yaml] [--batches 12]

On the quality report's synthetic world (bench/quality.py's data) with the config's data and model settings: the
same training batches built twice, once as the corpus builds them (history.merge_repeats: each distinct item once,
with its events' summed weight) and once with the merge switched off (the raw last ``history.length`` events).
Both give the same user (tests/retrieval/test_towers.py); this measures what the narrower bag saves. Steps
(forward, backward, optimizer) alternate between the two on one model, so machine noise hits both alike; with the
config's interests and with one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.quality import prepare  # noqa: E402
from bench.report import ROOT, publish, table  # noqa: E402
from retrieval import corpus as corpus_module  # noqa: E402
from retrieval.cli import RetrievalCLI  # noqa: E402
from retrieval.data import RetrievalData  # noqa: E402
from retrieval.model import TwoTowerModel  # noqa: E402


def batches(dm: RetrievalData, n: int, merge: bool) -> list[dict]:
    """The first ``n`` training batches of epoch 0, with or without merged history bags."""
    merged = corpus_module.merge_repeats
    if not merge:
        corpus_module.merge_repeats = lambda items, weights: (items, weights)
    try:
        it = iter(dm.train_dataloader())
        return [next(it) for _ in range(n)]
    finally:
        corpus_module.merge_repeats = merged


def step_seconds(model: TwoTowerModel, sets: dict[str, list[dict]]) -> dict[str, float]:
    """Median seconds of a training step per batch set, steps alternating between the sets (first 2 dropped)."""
    opts = model.configure_optimizers()
    times: dict[str, list[float]] = {k: [] for k in sets}
    for i in range(len(next(iter(sets.values())))):
        for name, bs in sets.items():
            t = time.perf_counter()
            loss = model._step(bs[i])["total"]
            for o in opts:
                o.zero_grad()
            loss.backward()
            for o in opts:
                o.step()
            times[name].append(time.perf_counter() - t)
    return {k: float(np.median(v[2:])) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--batches", type=int, default=12)
    a = p.parse_args()
    data, over = prepare("synth")
    paths = [f"--data.events={data / 'events.parquet'}", f"--data.items={over['items']}",
             f"--data.users={over['users']}", "--data.num_workers=0"]
    cli = RetrievalCLI(TwoTowerModel, RetrievalData, args=["--config", str(ROOT / a.config), *paths], run=False)
    dm = cli.datamodule
    sets = {"merged": batches(dm, a.batches, True), "unmerged": batches(dm, a.batches, False)}
    width = {k: np.mean([b["user"]["hist_rows"].shape[1] for b in v]) for k, v in sets.items()}
    hp = {k: v for k, v in cli.model.hparams.items() if not k.startswith("_")}
    rows = []
    for k in sorted({hp["interests"], 1}, reverse=True):
        torch.manual_seed(0)
        t = step_seconds(TwoTowerModel(**{**hp, "interests": k}), sets)
        rows.append([k, f"{width['unmerged']:.0f}", f"{t['unmerged'] * 1e3:.0f}", f"{width['merged']:.0f}",
                     f"{t['merged'] * 1e3:.0f}", f"{t['merged'] / t['unmerged']:.2f}"])
        print(rows[-1], flush=True)
    publish("history_merge", "History bags: repeated events merged", [
        f"Config `{a.config}` on the quality report's synthetic world (history length {dm.corpus.history.length}, "
        f"batch {dm.hparams.batch_size}, {dm.hparams.num_negatives} sampled negatives); {a.batches} training batches built both "
        "ways, steps alternating between them, median of all but the first 2. Bag width: positions in a batch's "
        "history tensor (the widest bag in the batch once merged).", "",
        table(["interests", "unmerged width", "unmerged ms/step", "merged width", "merged ms/step",
               "merged / unmerged"], rows), ""])


if __name__ == "__main__":
    main()
