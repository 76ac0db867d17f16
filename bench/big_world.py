"""The large synthetic world shared by the performance benchmarks: 1M items, 1M users (generated once), and a
model trained briefly on it (one per number of interest vectors, trained once), all under the world's folder."""

from __future__ import annotations

from pathlib import Path

from bench.report import ROOT
from retrieval.synth import WorldConfig, generate

BIG = ROOT / "work" / "bench" / "big"
ITEM_FEATURES = [{"name": "category", "kind": "categorical"}, {"name": "brand", "kind": "hashed", "buckets": 4096},
                 {"name": "price", "kind": "continuous"}, {"name": "rating", "kind": "continuous"}]
USER_FEATURES = [{"name": "region", "kind": "categorical"}]


def world_path(users: int = 1_000_000, items: int = 1_000_000) -> Path:
    """The folder of the world of that size: its Parquet files, and the models and artifacts made from it."""
    return BIG / f"u{users}_i{items}"


def ensure_world(users: int = 1_000_000, items: int = 1_000_000) -> Path:
    """A world with about 10 events a user (two sessions on average): 10M+ events."""
    out = world_path(users, items)
    if not (out / "events.parquet").exists():
        generate(out, WorldConfig(users=users, items=items, categories=200, brands_per_category=20,
                                  sessions_per_user=2.0, views_per_session=3, chunk_users=20_000, seed=1))
    return out


def data_kwargs(world: Path, **over) -> dict:
    from retrieval.events import EventRoles

    kw = dict(events=str(world / "events.parquet"), items=str(world / "items.parquet"),
              users=str(world / "users.parquet"), roles=EventRoles({"purchase": 1.0}, {"view": 0.5, "click": 1.0,
                                                                                        "add_to_cart": 2.0}),
              item_features=ITEM_FEATURES, user_features=USER_FEATURES, batch_size=1024, num_negatives=1024,
              num_workers=1, max_eval_users=1000)
    kw.update(over)
    return kw


def checkpoint_path(interests: int = 1, users: int = 1_000_000, items: int = 1_000_000) -> Path:
    """Where the model with ``interests`` user vectors of the world of that size is kept: a smaller
    `bench/index_build.py --users/--items` run does not overwrite the 1M model that serve_load reuses."""
    return world_path(users, items) / f"model-interests{interests}.ckpt"


def train_big(steps: int, interests: int = 1, users: int = 1_000_000, items: int = 1_000_000):
    """Train the benchmarks' model ``steps`` batches on the big world and save it to checkpoint_path(...).

    Returns (model, datamodule). Embedding sizes as configs/demo.yaml; everything else the model's defaults."""
    import lightning as L
    import torch

    from retrieval.checkpoint_io import AtomicCheckpointIO
    from retrieval.data import RetrievalData
    from retrieval.model import TwoTowerModel

    torch.manual_seed(0)
    dm = RetrievalData(**data_kwargs(ensure_world(users, items)))
    model = TwoTowerModel(dm.item_spec, dm.user_spec, embed_dim=64, hidden=[256], out_dim=64, interests=interests)
    trainer = L.Trainer(max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        plugins=[AtomicCheckpointIO()])
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(checkpoint_path(interests, users, items))
    return model, dm


def ensure_checkpoint(interests: int = 1, steps: int = 300) -> Path:
    """checkpoint_path(interests), trained ``steps`` batches first if it is not there yet."""
    path = checkpoint_path(interests)
    if not path.exists():
        train_big(steps, interests)
    return path
