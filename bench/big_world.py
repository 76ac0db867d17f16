"""The large synthetic world shared by the performance benchmarks: 1M items, 1M users (generated once)."""

from __future__ import annotations

from pathlib import Path

from bench.report import ROOT
from retrieval.synth import WorldConfig, generate

BIG = ROOT / "work" / "bench" / "big"
ITEM_FEATURES = [{"name": "category", "kind": "categorical"}, {"name": "brand", "kind": "hashed", "buckets": 4096},
                 {"name": "price", "kind": "continuous"}, {"name": "rating", "kind": "continuous"}]
USER_FEATURES = [{"name": "region", "kind": "categorical"}]


def ensure_world(users: int = 1_000_000, items: int = 1_000_000) -> Path:
    """A world with about 10 events a user (two sessions on average): 10M+ events."""
    out = BIG / f"u{users}_i{items}"
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
