"""Training throughput: the real `fit` path against a minimal plain-PyTorch loop, in one run.

    python bench/train_throughput.py [--steps 300] [--users 1000000 --items 1000000]
                                     [--accelerator cuda --precision bf16-mixed]

Real path: RetrievalData (events from Parquet, feature encoders, history bags, dual positives, mixed negatives)
+ TwoTowerModel (auxiliary head, logQ, repeat term; one user vector, and four as configs/demo.yaml) under a
Lightning Trainer, loader worker building batches.
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
from lightning.pytorch.utilities import move_data_to_device  # noqa: E402

from bench.big_world import data_kwargs, ensure_world  # noqa: E402
from bench.report import publish, table  # noqa: E402
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


ACCELERATOR, PRECISION = "cpu", "32-true"  # set from the command line


def autocast():
    """bf16 autocast on CUDA when --precision bf16-mixed (what Lightning's precision plugin does in fit)."""
    on = PRECISION == "bf16-mixed" and ACCELERATOR == "cuda"
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=on)


def real_path(dm: RetrievalData, steps: int, warmup: int, **over) -> float:
    model = TwoTowerModel(dm.item_spec, dm.user_spec, **{**MODEL, **over})
    timer = Timer(warmup, dm.hparams.batch_size)
    trainer = L.Trainer(max_steps=steps + warmup, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                        accelerator=ACCELERATOR, precision=PRECISION)
    trainer.fit(model, datamodule=dm)
    return timer.rate()


def prebuilt(dm: RetrievalData, num_negatives: int, n: int = 64) -> list[dict]:
    """Batches built beforehand and held in memory: no data path in the timing."""
    stream = iter(TrainStream(dm.corpus, dm.hparams.batch_size, num_negatives, None, seed=1))
    return [move_data_to_device(next(stream), ACCELERATOR) for _ in range(n)]


def timed(step, batches: list[dict], steps: int, warmup: int, batch_size: int) -> float:
    """Examples/s of ``step(batch)`` over ``steps`` steps after ``warmup``."""
    t0 = None
    for i in range(steps + warmup):
        if i == warmup:
            if ACCELERATOR == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with autocast():
            step(batches[i % len(batches)])
    if ACCELERATOR == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - t0)


def optimizer_step(model: TwoTowerModel):
    sparse, dense = model.configure_optimizers()

    def step(loss: torch.Tensor) -> None:
        sparse.zero_grad()
        dense.zero_grad()
        loss.backward()
        sparse.step()
        dense.step()

    return step


def model_step(dm: RetrievalData, batches: list[dict], steps: int, warmup: int, **over) -> float:
    """The model's own loss (TwoTowerModel._step) on pre-built batches: no loader, no Lightning."""
    model = TwoTowerModel(dm.item_spec, dm.user_spec, **{**MODEL, **over}).to(ACCELERATOR)
    update = optimizer_step(model)
    return timed(lambda b: update(model._step(b)["total"]), batches, steps, warmup, dm.hparams.batch_size)


def plain_loop(dm: RetrievalData, batches: list[dict], steps: int, warmup: int) -> float:
    model = TwoTowerModel(dm.item_spec, dm.user_spec, **MODEL).to(ACCELERATOR)
    update = optimizer_step(model)

    def step(b: dict) -> None:
        u = model.net.user_tower(b["user"])["conversion"]
        p = model.net.item_tower(b["pos"])["conversion"]
        logits = model.net.query(u) @ p.T  # the same folding of temperature and item bias as the model
        update(F.cross_entropy(logits, torch.arange(len(u), device=logits.device)))

    return timed(step, batches, steps, warmup, dm.hparams.batch_size)


def batch_ms(dm: RetrievalData, n: int = 20) -> float:
    """Milliseconds to build one batch (1024 uniform negatives) in numpy, in one process."""
    stream = iter(TrainStream(dm.corpus, dm.hparams.batch_size, dm.hparams.num_negatives, None, seed=2))
    next(stream)
    t = time.perf_counter()
    for _ in range(n):
        next(stream)
    return (time.perf_counter() - t) / n * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--accelerator", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"],
                   help="bf16-mixed: autocast on CUDA (tests/retrieval/test_train_gpu.py checks the loss against fp32)")
    a = p.parse_args()
    global ACCELERATOR, PRECISION
    ACCELERATOR, PRECISION = a.accelerator, a.precision
    torch.manual_seed(0)
    t = time.perf_counter()
    world = ensure_world(a.users, a.items)
    t_world = time.perf_counter() - t
    t = time.perf_counter()
    dm = RetrievalData(**data_kwargs(world))
    n_events, n_items = len(dm.corpus.events), dm.corpus.n_items
    t_load = time.perf_counter() - t
    real = real_path(dm, a.steps, a.warmup)
    real4 = real_path(dm, a.steps, a.warmup, interests=4)
    with_negs, in_batch = prebuilt(dm, dm.hparams.num_negatives), prebuilt(dm, 0)
    full_step = model_step(dm, with_negs, a.steps, a.warmup)
    full_step4 = model_step(dm, with_negs, a.steps, a.warmup, interests=4)
    no_negs = model_step(dm, in_batch, a.steps, a.warmup)
    no_aux = model_step(dm, with_negs, a.steps, a.warmup, aux_weight=0.0)
    plain = plain_loop(dm, in_batch, a.steps, a.warmup)
    build_ms = batch_ms(dm)
    rows = [[name, f"{v:,.0f}", f"{v / plain:.2f}", f"{1024e3 / v:.0f}"] for name, v in [
        ("real `fit` path (Parquet corpus, features, history, dual positives, aux head, 1024 uniform negatives, "
         "logQ; 1 loader worker; Lightning)", real),
        ("  the same with 4 interest vectors per user (configs/demo.yaml)", real4),
        ("the model's own step on pre-built batches (same loss: negatives, aux head, logQ; no loader, no Lightning)",
         full_step),
        ("  the same with 4 interest vectors per user", full_step4),
        ("  the same without uniform negatives (in-batch only)", no_negs),
        ("  the same without the auxiliary head", no_aux),
        ("plain PyTorch loop (same towers and optimizers, in-batch softmax, pre-built batches)", plain)]]
    section = "train_throughput" + ("" if a.accelerator == "cpu" else f"_{a.accelerator}_{a.precision}")
    publish(section, "Training throughput" + ("" if a.accelerator == "cpu" else f" ({a.accelerator}, {a.precision})"), [
          f"World: {a.users:,} users, {n_items:,} items, {n_events:,} events (generated in {t_world:.0f} s, "
          f"loaded and encoded in {t_load:.0f} s). Batch 1024, {a.steps} timed steps after {a.warmup} warm-up, "
          "embedding tables on SparseAdam, dense layers on Adam.", "",
          table(["path", "examples/s", "ratio to plain", "ms per batch"], rows), "",
          f"Building one batch in numpy (history bags, features of 1024 positives and 1024 negatives) takes "
          f"{build_ms:.0f} ms in one process; the loader worker does it beside the step on the same 2 cores.", ""])


if __name__ == "__main__":
    main()
