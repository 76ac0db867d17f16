"""LightningDataModule: the corpus, streams of ready-made training batches, and evaluation sets.

Batches are built whole in numpy by the loader workers (gathers over the corpus arrays, no per-example
Python), sharded by rank and worker, so two cores keep the training step fed.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from retrieval.contract import DataError
from retrieval.corpus import (
    DEFAULT_ROLES,
    Corpus,
    CorpusConfig,
    DwellWeighting,
    EvalSet,
    HistoryConfig,
    SplitConfig,
)
from retrieval.events import CONVERSION, EventRoles, SessionConfig
from retrieval.heads import role_spec
from retrieval.inference import to_torch

log = logging.getLogger(__name__)


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _shard() -> tuple[int, int]:
    """This process-and-worker's shard and the number of shards."""
    rank, world = _rank_world()
    info = get_worker_info()
    wid, nw = (info.id, info.num_workers) if info else (0, 1)
    return rank * nw + wid, world * nw


class TrainStream(IterableDataset):
    """Shuffled training batches with uniform negatives; every shard yields the same number of batches.

    conversion_fraction: None keeps the log's natural mix; a value f fills each batch with round(f * B)
    conversions (cycling through them) and engagement for the rest, so sparse conversions are not drowned.
    """

    def __init__(self, corpus: Corpus, batch_size: int, num_negatives: int, conversion_fraction: float | None,
                 seed: int, start_epoch: int = 0):
        self.corpus, self.batch_size, self.num_negatives = corpus, batch_size, num_negatives
        self.conversion_fraction, self.seed = conversion_fraction, seed
        self.examples = corpus.examples(0)
        if len(self.examples) < batch_size:
            raise DataError(f"data: {len(self.examples)} training examples, fewer than one batch of {batch_size}")
        check_training_conversions(corpus, self.examples)
        self.epoch = start_epoch  # advanced per __iter__; workers are persistent so each keeps counting

    def __len__(self) -> int:
        n_shards = _shard()[1]
        return len(self.examples) // self.batch_size // n_shards * n_shards

    def _plan(self, rng: np.random.Generator) -> np.ndarray:
        """[n_batches, B] event positions of this epoch."""
        B, ex = self.batch_size, self.examples
        n = len(ex) // B
        if self.conversion_fraction is None:
            return rng.permutation(ex)[: n * B].reshape(n, B)
        is_conv = self.corpus.events.kind[ex] == CONVERSION
        nc = int(round(self.conversion_fraction * B))

        def cycle(pool: np.ndarray, k: int) -> np.ndarray:
            reps = -(-k // max(len(pool), 1))
            return np.concatenate([rng.permutation(pool) for _ in range(reps)])[:k]

        conv, eng = cycle(ex[is_conv], n * nc), cycle(ex[~is_conv], n * (B - nc))
        return np.concatenate([conv.reshape(n, nc), eng.reshape(n, B - nc)], axis=1)

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        shard, n_shards = _shard()
        plan = self._plan(np.random.default_rng([self.seed, epoch]))
        per_shard = len(plan) // n_shards
        rng = np.random.default_rng([self.seed, epoch, shard, 1])
        n_cat = self.corpus.n_items
        log_q_neg = np.float32(np.log(self.num_negatives / n_cat)) if self.num_negatives else np.float32(0)
        for b in range(shard, per_shard * n_shards, n_shards):
            batch = self.corpus.example_batch(plan[b])
            neg = rng.integers(0, n_cat, self.num_negatives)
            batch["neg"], batch["neg_item"] = self.corpus.item_batch(neg), neg
            batch["neg_log_q"] = np.full(self.num_negatives, log_q_neg, np.float32)
            yield to_torch(batch)


def check_training_conversions(corpus: Corpus, examples: np.ndarray) -> None:
    """A DataError saying where the conversions are when none falls in the training window: a conversion model
    trained on none would still fit, and answer from engagement alone."""
    ev = corpus.events
    if (ev.kind[examples] == CONVERSION).any():
        return
    conv = ev.kind == CONVERSION
    where = {name: int((conv & (corpus.window == w)).sum()) for w, name in enumerate(("training", "validation", "test"))}
    split = corpus.split
    raise DataError(f"events: {corpus.config.events}: no conversion falls in the training window (before ts "
                    f"{split.val_start if split else '-'}); conversions by window: {where}, between ts "
                    f"{int(ev.ts[conv].min())} and {int(ev.ts[conv].max())}; move the split "
                    "(data.split.val_start / test_start) or give a log with earlier conversions")


class CatalogueStream(IterableDataset):
    """Every catalogue item in batches, in order (not sharded: every rank scores against all items)."""

    def __init__(self, corpus: Corpus, batch_size: int):
        self.corpus, self.batch_size = corpus, batch_size

    def __iter__(self):
        for lo in range(0, self.corpus.n_items, self.batch_size):
            rows = np.arange(lo, min(lo + self.batch_size, self.corpus.n_items))
            yield {"item": to_torch(self.corpus.item_batch(rows))}


class EvalStream(IterableDataset):
    """Evaluation users (sharded by rank) with their state and padded targets (-1 = padding)."""

    def __init__(self, corpus: Corpus, es: EvalSet, batch_size: int):
        self.corpus, self.es, self.batch_size = corpus, es, batch_size

    def __iter__(self):
        rank, world = _rank_world()
        es = self.es
        idx = np.arange(rank, len(es.users), world)
        for lo in range(0, len(idx), self.batch_size):
            i = idx[lo: lo + self.batch_size]
            users = self.corpus.user_batch(es.users[i], es.end[i], np.full(len(i), es.now, np.int64))
            yield {"user": to_torch(users), "conv_targets": _pad([es.conversions[j] for j in i]),
                   "eng_targets": _pad([es.engagement[j] for j in i])}


def _pad(rows: list[np.ndarray]) -> torch.Tensor:
    out = np.full((len(rows), max(1, max((len(r) for r in rows), default=1))), -1, np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return torch.from_numpy(out)


def _loader(ds: IterableDataset, workers: int) -> DataLoader:
    return DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=workers > 0,
                      prefetch_factor=4 if workers > 0 else None)


class RetrievalData(L.LightningDataModule):
    def __init__(
        self,
        events: str,
        items: str | None = None,
        users: str | None = None,
        roles: EventRoles = DEFAULT_ROLES,
        sessions: SessionConfig = SessionConfig(),
        dwell_weighting: DwellWeighting = DwellWeighting(),
        history: HistoryConfig = HistoryConfig(),
        split: SplitConfig = SplitConfig(),
        item_features: list[dict[str, Any]] | None = None,
        user_features: list[dict[str, Any]] | None = None,
        ts_unit: Literal["s", "ms", "us", "ns"] = "s",
        missing_features: Literal["warn", "error"] = "warn",
        batch_size: int = 1024,
        num_negatives: int = 1024,
        conversion_fraction: float | None = None,
        num_workers: int = 1,
        max_eval_users: int | None = 5000,
        seed: int = 0,
    ):
        """
        Args:
            events: Parquet file or folder of the event log.
            items: optional item feature table (item_id + feature columns).
            users: optional user feature table (user_id + feature columns).
            roles: conversion and engagement event names with base weights (default: purchase; view, click, add_to_cart).
            sessions: session cut, dwell derivation and burst merging.
            dwell_weighting: how dwell weights engagement positives and history.
            history: the user tower's history bag.
            split: temporal train / validation / test split.
            item_features: feature specs of item columns (retrieval.features).
            user_features: feature specs of user columns.
            ts_unit: unit of an integer ts column (a timestamp column carries its own).
            missing_features: "warn" logs event ids without a feature row and feature columns without any value
                (they count as missing); "error" stops.
            batch_size: training examples per batch (also the in-batch negatives).
            num_negatives: items sampled uniformly from the catalogue per batch (mixed negatives; 0 = none).
            conversion_fraction: share of each batch filled with conversions (None = the log's mix).
            num_workers: loader worker processes building training batches.
            max_eval_users: evaluation users sampled per split (None = all).
            seed: shuffling, negatives and evaluation sampling.
        """
        super().__init__()
        self.config = CorpusConfig(events, items, users, roles, sessions, dwell_weighting, history, split,
                                   tuple(item_features or ()), tuple(user_features or ()), ts_unit, missing_features)
        # The checkpoint's data config: the corpus config's plain values (CorpusConfig.from_dict reads them back)
        # and the loader's options.
        self.save_hyperparameters({**self.config.to_dict(), "batch_size": batch_size, "num_negatives": num_negatives,
                                   "conversion_fraction": conversion_fraction, "num_workers": num_workers,
                                   "max_eval_users": max_eval_users, "seed": seed})
        self._corpus: Corpus | None = None
        self._train: TrainStream | None = None

    @property
    def corpus(self) -> Corpus:
        if self._corpus is None:
            self._corpus = Corpus(self.config)
        return self._corpus

    # Linked into the model's config (LightningCLI link_arguments, apply_on="instantiate").
    @property
    def item_spec(self) -> dict[str, Any]:
        return self.corpus.item_vocab.spec()

    @property
    def role_spec(self) -> dict[str, dict[str, float]]:
        return role_spec(self.config.roles)

    @property
    def user_spec(self) -> dict[str, Any]:
        return {**self.corpus.user_vocab.spec(), "history_features": self.corpus.history_features}

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        start = self.trainer.current_epoch if self.trainer is not None else 0
        self._train = TrainStream(self.corpus, h.batch_size, h.num_negatives, h.conversion_fraction, h.seed, start)
        return _loader(self._train, h.num_workers)

    def set_epoch(self, epoch: int) -> None:
        """Called at each epoch start (TwoTowerModel.on_train_epoch_start). Lightning builds the loader before
        it restores a resumed run's epoch; this runs before the workers copy the stream, so a resumed run
        replays the order of the epoch it resumes, not of epoch 0."""
        if self._train is not None and self._train.epoch != epoch:
            log.info("data: training stream moves to epoch %d", epoch)
            self._train.epoch = epoch

    def _eval_loaders(self, window: int) -> list[DataLoader]:
        h = self.hparams
        es = self.corpus.eval_set(window, h.max_eval_users, h.seed)
        if len(es.users) == 0:
            log.warning("data: no user converts in the %s window; recall is not measured",
                        "validation" if window == 1 else "test")
        return [_loader(CatalogueStream(self.corpus, 4096), 0), _loader(EvalStream(self.corpus, es, 256), 0)]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(1)

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(2)

    # The checkpoint carries the vocabularies and encoders: the index job's contract.
    def state_dict(self) -> dict[str, Any]:
        return self.corpus.state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self.corpus.state()
        for side in ("items", "users"):
            a, b = len(state[side]["id_vocab"]), len(mine[side]["id_vocab"])
            if a != b or state[side]["encoders"] != mine[side]["encoders"]:
                raise DataError(f"checkpoint: its {side} vocabulary ({a} ids) does not match this data's ({b} ids); "
                                "resume with the data the checkpoint was trained on")
