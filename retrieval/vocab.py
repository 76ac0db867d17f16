"""What one tower needs to turn raw ids and feature rows into tensors: its ID vocabulary and encoders.

The vocabulary holds the ids seen in training: embedding row ``position + 1``; row 0 means "no learned
ID" (a new item or user), so those still get an embedding from their features (and users, history).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from retrieval import features
from retrieval.contract import DataError


@dataclass
class TowerVocab:
    key: str  # "item_id" or "user_id"
    id_vocab: pa.Array  # sorted ids seen in training
    encoders: list[dict[str, Any]]  # fitted feature encoder states (features.fit_encoder)

    def id_index(self, ids: pa.Array) -> np.ndarray:
        """[N] int64 embedding row of each id; 0 for ids not seen in training."""
        if len(self.id_vocab) == 0:
            return np.zeros(len(ids), np.int64)
        if ids.type != self.id_vocab.type:
            raise DataError(f"{self.key}: ids of type {ids.type} do not match the trained vocabulary's {self.id_vocab.type}")
        pos = pc.index_in(ids, value_set=self.id_vocab)
        return pc.fill_null(pc.add(pos, 1), 0).to_numpy(zero_copy_only=False).astype(np.int64)

    def encode(self, ids: pa.Array, table: pa.Table | None, path: str = "features") -> dict[str, np.ndarray]:
        """Tower inputs for ``ids``: {"id": [N]} plus one array per feature, rows aligned with ``ids``."""
        out: dict[str, np.ndarray] = {"id": self.id_index(ids)}
        rows = features.align(ids, table, self.key) if self.encoders else None
        for enc in self.encoders:
            col = rows.column(enc["name"]) if rows is not None else pa.nulls(len(ids), _null_type(enc))
            out[enc["name"]] = features.encode(enc, col, path)
        return out

    def spec(self) -> dict[str, Any]:
        """What the tower needs to build its modules (sizes only): linked into the model's config."""
        return {"n_ids": len(self.id_vocab) + 1,
                "features": [{"name": e["name"], "kind": e["kind"], "width": features.width(e)} for e in self.encoders]}

    def state(self) -> dict[str, Any]:
        """Checkpoint-safe state (loads with torch.load(weights_only=True))."""
        ids = self.id_vocab
        return {"key": self.key, "id_type": "int" if pa.types.is_integer(ids.type) else "str",
                "id_vocab": torch.from_numpy(ids.to_numpy().copy()) if pa.types.is_integer(ids.type) else ids.to_pylist(),
                "encoders": self.encoders}

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> TowerVocab:
        ids = pa.array(s["id_vocab"].numpy(), pa.int64()) if s["id_type"] == "int" else pa.array(s["id_vocab"], pa.string())
        return cls(key=s["key"], id_vocab=ids, encoders=s["encoders"])


def _null_type(enc: dict[str, Any]) -> pa.DataType:
    if enc["kind"] == "multi_hot":
        return pa.list_(pa.string())
    if enc["kind"] == "dense":
        return pa.list_(pa.float32(), int(enc["dim"]))
    if enc["kind"] == "continuous":
        return pa.float64()
    return pa.string() if not enc.get("vocab") or isinstance(enc["vocab"][0], str) else pa.int64()
