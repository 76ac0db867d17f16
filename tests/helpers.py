"""Helpers shared by the tests (fixtures live in the conftest.py files)."""

from __future__ import annotations

import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from retrieval.corpus import Corpus, CorpusConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_events(path: Path, rows: list[dict], schema: pa.Schema | None = None) -> Path:
    """Write hand-built event rows to Parquet (columns from the dict keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def fit_args(world: Path, root: Path, *extra: str) -> list[str]:
    """CLI args training configs/tiny.yaml on ``world`` with outputs under ``root``."""
    return ["--config", TINY, f"--data.events={world / 'events.parquet'}", f"--data.items={world / 'items.parquet'}",
            f"--data.users={world / 'users.parquet'}", f"--trainer.default_root_dir={root}", *extra]


def tiny_corpus(world: Path, **history):
    """The corpus of configs/tiny.yaml's data settings over ``world``, with a split (history options overridable)."""
    d = yaml.safe_load(open(TINY))["data"]
    return Corpus(CorpusConfig.from_dict(d, events=str(world / "events.parquet"), items=str(world / "items.parquet"),
                                         users=str(world / "users.parquet"),
                                         history={**d.get("history", {}), **history}))
