"""Shared fixtures: a tiny seeded synthetic world and a model trained on it once per session."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retrieval.synth import WorldConfig, generate

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")


def write_events(path: Path, rows: list[dict], schema: pa.Schema | None = None) -> Path:
    """Write hand-built event rows to Parquet (columns from the dict keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_world")
    generate(out, WorldConfig(users=400, items=200, categories=8, seed=7))
    return out


def fit_args(world: Path, root: Path, *extra: str) -> list[str]:
    """CLI args training configs/tiny.yaml on ``world`` with outputs under ``root``."""
    return ["--config", TINY, f"--data.events={world / 'events.parquet'}", f"--data.items={world / 'items.parquet'}",
            f"--data.users={world / 'users.parquet'}", f"--trainer.default_root_dir={root}", *extra]


@pytest.fixture(scope="session")
def trained(tiny_world, tmp_path_factory) -> Path:
    """A checkpoint of the tiny config trained for a few epochs (shared by the index and service tests)."""
    from retrieval.cli import main

    root = tmp_path_factory.mktemp("trained")
    main(["fit", *fit_args(tiny_world, root, "--trainer.max_epochs=4", "--trainer.limit_train_batches=null")])
    ckpt = root / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    return ckpt


@pytest.fixture(scope="session")
def artifact(trained, tmp_path_factory) -> Path:
    from index.build import build

    out = tmp_path_factory.mktemp("artifacts") / "v1"
    build(trained, out, "Flat", progress=False)
    return out
