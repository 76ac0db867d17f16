"""Training throughput: the real `fit` path against a minimal plain-PyTorch loop, in one run.

    python bench/train_throughput.py [--steps 300] [--users 1000000 --items 1000000]

Real path: RetrievalData (events from Parquet, feature encoders, history bags, dual positives, mixed negatives)
+ TwoTowerModel (auxiliary head, logQ) under a Lightning Trainer, loader worker building batches.
Plain loop: the same towers, an in-batch softmax only, on batches built beforehand and held in memory, with
the same optimizers. Both at batch 1024 on the same world; examples/s measured after a warm-up.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402

from bench.big_world import data_kwargs, ensure_world  # noqa: E402
from bench.report import stamp, table, write_section  # noqa: E402
from retrieval.data import RetrievalData, TrainStream  # noqa: E402
from retrieval.model import TwoTowerModel  # noqa: E402

MODEL = dict(embed_dim=64, hidden=[256], out_dim=64, aux_weight=0.5, engagement_weight=0.1)


class Timer(L.Callback):
    """Examples per second over the steps after ``warmup``."""

    def __init__(self, warmup: int, batch: int):
        self.warmup, self.batch, self.t0, self.n = warmup, batch, None, 0

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.warmup:
            self.t0 = time.perf_counter()
        elif trainer.global_step > self.warmup:
            self.n += 1

    def rate(self) -> float:
        return self.n * self.batch / (time.perf_counter() - self.t0)


def real_path(dm: RetrievalData, steps: int, warmup: int) -> float:
    model = TwoTowerModel(dm.item_spec, dm.user_spec, **MODEL)
    timer = Timer(warmup, dm.hparams.batch_size)
    trainer = L.Trainer(max_steps=steps + warmup, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer], accelerator="cpu")
    trainer.fit(model, datamodule=dm)
    return timer.rate()


def plain_loop(dm: RetrievalData, steps: int, warmup: int) -> float:
    model = TwoTowerModel(dm.item_spec, dm.user_spec, **MODEL)
    sparse, dense = model.configure_optimizers()
    stream = iter(TrainStream(dm.corpus, dm.hparams.batch_size, 0, None, seed=1))
    batches = [next(stream) for _ in range(64)]  # pre-built tensors: no data path in the timing
    t0 = None
    for step in range(steps + warmup):
        if step == warmup:
            t0 = time.perf_counter()
        b = batches[step % len(batches)]
        u = model.user_tower(b["user"])["conversion"]
        p = model.item_tower(b["pos"])["conversion"]
        logits = model._query(u) @ p.T  # the same folding of temperature and item bias as the model
        loss = F.cross_entropy(logits, torch.arange(len(u)))
        sparse.zero_grad()
        dense.zero_grad()
        loss.backward()
        sparse.step()
        dense.step()
    return steps * dm.hparams.batch_size / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=1_000_000)
    a = p.parse_args()
    torch.manual_seed(0)
    t = time.perf_counter()
    world = ensure_world(a.users, a.items)
    t_world = time.perf_counter() - t
    t = time.perf_counter()
    dm = RetrievalData(**data_kwargs(world))
    n_events, n_items = len(dm.corpus.events), dm.corpus.n_items
    t_load = time.perf_counter() - t
    real = real_path(dm, a.steps, a.warmup)
    plain = plain_loop(dm, a.steps, a.warmup)
    rows = [["real `fit` path (Parquet corpus, features, history, dual positives, aux head, 1024 uniform "
             "negatives, logQ; 1 loader worker)", f"{real:,.0f}", f"{real / plain:.2f}"],
            ["plain PyTorch loop (same towers and optimizers, in-batch softmax, pre-built batches)",
             f"{plain:,.0f}", "1.00"]]
    md = ["## Training throughput", "", stamp("python bench/train_throughput.py " + " ".join(sys.argv[1:])), "",
          f"World: {a.users:,} users, {n_items:,} items, {n_events:,} events (generated in {t_world:.0f} s, "
          f"loaded and encoded in {t_load:.0f} s). Batch 1024, {a.steps} timed steps after {a.warmup} warm-up, "
          "embedding tables on SparseAdam, dense layers on Adam.", "",
          table(["path", "examples/s", "ratio to plain"], rows), ""]
    print("\n".join(md))
    write_section("train_throughput", "\n".join(md))


if __name__ == "__main__":
    main()
