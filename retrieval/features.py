"""Feature columns by signal format: fit encoders on training data, encode tables into numpy arrays.

A feature spec is a plain dict from YAML, e.g. ``{name: brand, kind: hashed, buckets: 4096}``. Kinds:

- ``categorical``: one vocabulary entry per value seen in training (index 0 = missing or unseen);
- ``hashed``: unbounded vocabulary hashed into ``buckets`` (stable across processes and runs);
- ``multi_hot``: a list column, each value from a vocabulary, pooled as a bag (``max_len`` values kept);
- ``continuous``: clipped at training quantiles, min-max normalised to [0, 1] (null = 0);
- ``dense``: a fixed-size list of floats, projected by the tower.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from retrieval.contract import DataError, cast_ids

log = logging.getLogger(__name__)
SHARED_WARN = 0.1  # a hashed feature whose distinct training values share a bucket more often than this: a warning

KINDS = ("categorical", "hashed", "multi_hot", "continuous", "dense")
_DEFAULTS: dict[str, dict[str, Any]] = {
    "categorical": {"max_vocab": 100_000},
    "hashed": {"buckets": 4096},
    "multi_hot": {"max_vocab": 100_000, "max_len": 16},
    "continuous": {"clip_quantile": 0.01},
    "dense": {},
}


def parse_specs(specs: list[dict[str, Any]] | None, what: str) -> list[dict[str, Any]]:
    """Validate feature specs from config and fill defaults."""
    out = []
    for s in specs or []:
        if "name" not in s or "kind" not in s:
            raise DataError(f"config: {what} feature {s} needs 'name' and 'kind'")
        if s["kind"] not in KINDS:
            raise DataError(f"config: {what} feature '{s['name']}' has kind '{s['kind']}'; expected one of {KINDS}")
        extra = set(s) - {"name", "kind"} - set(_DEFAULTS[s["kind"]])
        if extra:
            raise DataError(f"config: {what} feature '{s['name']}' has unknown option(s) {sorted(extra)}")
        out.append({**_DEFAULTS[s["kind"]], **s})
    if len({s["name"] for s in out}) != len(out):
        raise DataError(f"config: {what} features name a column twice")
    return out


def stable_hash(values: pa.Array) -> np.ndarray:
    """uint64 hash of each value, the same in every process (Python's hash() is salted per process)."""
    if pa.types.is_integer(values.type):
        # splitmix64 finaliser over the integer value
        x = pc.fill_null(values, 0).to_numpy(zero_copy_only=False).astype(np.uint64)
        with np.errstate(over="ignore"):
            x = (x + np.uint64(0x9E3779B97F4A7C15))
            x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            return x ^ (x >> np.uint64(31))
    # Hash each distinct string once: catalogues have far fewer distinct values than rows.
    enc = pc.dictionary_encode(pc.cast(values, pa.string()))
    uniq = [hashlib.blake2b(v.encode(), digest_size=8).digest() if v is not None else b"\0" * 8
            for v in enc.dictionary.to_pylist()]
    table = np.frombuffer(b"".join(uniq), dtype=np.uint64) if uniq else np.zeros(0, np.uint64)
    idx = pc.fill_null(enc.indices, 0).to_numpy(zero_copy_only=False)
    return table[idx] if len(table) else np.zeros(len(values), np.uint64)


def _as_float(col: pa.Array, name: str, path: str) -> np.ndarray:
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        raise DataError(f"features: {path}: column '{name}' has type {col.type}; a continuous feature must be numeric")
    x = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    present = pc.is_valid(col).to_numpy(zero_copy_only=False)  # null = missing; a NaN value is an error
    if not np.isfinite(x[present]).all():
        raise DataError(f"features: {path}: column '{name}' has NaN or infinite values; use null for missing")
    return np.where(present, x, np.nan)


def _vocab(values: pa.Array, max_vocab: int) -> list:
    """The most frequent values (ties by value), at most max_vocab."""
    counts = pc.value_counts(values.drop_null())
    if len(counts) == 0:
        return []
    vals, cnt = counts.field("values"), counts.field("counts").to_numpy()
    order = np.lexsort((pc.sort_indices(vals).to_numpy().argsort(), -cnt))[:max_vocab]
    return sorted(vals.take(pa.array(order)).to_pylist())


def shared_buckets(col: pa.Array, buckets: int) -> tuple[int, int]:
    """(distinct values, how many of them share their bucket with another) of a hashed column."""
    h = stable_hash(pc.unique(col.drop_null())) % np.uint64(buckets)
    _, counts = np.unique(h, return_counts=True)
    return len(h), int(counts[counts > 1].sum())


def fit_encoder(spec: dict[str, Any], col: pa.Array, path: str) -> dict[str, Any]:
    """Encoder state (plain, checkpoint-safe) for one feature from its training values."""
    name, kind = spec["name"], spec["kind"]
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    state = dict(spec)
    if kind == "categorical":
        state["vocab"] = _vocab(col, spec["max_vocab"])
    elif kind == "hashed":
        # Values that share a bucket share one embedding: the model cannot tell them apart (two cities, two
        # brands), which silently costs recall where the feature places items the ids cannot (new items).
        n, shared = shared_buckets(col, spec["buckets"])
        if n and shared / n > SHARED_WARN:
            log.warning("features: %s: '%s' hashes %d distinct values into %d buckets, and %d of them (%.0f%%) share "
                        "their bucket with another, so the model cannot tell those apart; where it should, raise its "
                        "buckets (about %d keep that under %.0f%%; compare on the validation window)", path, name, n,
                        spec["buckets"], shared, 100 * shared / n, 1 << int(np.ceil(np.log2(n / SHARED_WARN))),
                        100 * SHARED_WARN)
    elif kind == "multi_hot":
        if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
            raise DataError(f"features: {path}: column '{name}' has type {col.type}; multi_hot needs a list column")
        state["vocab"] = _vocab(pc.list_flatten(col), spec["max_vocab"])
    elif kind == "continuous":
        x = _as_float(col, name, path)
        x = x[~np.isnan(x)]
        q = spec["clip_quantile"]
        lo, hi = (np.quantile(x, [q, 1 - q]) if len(x) else (0.0, 1.0))
        state["lo"], state["hi"] = float(lo), float(max(hi, lo + 1e-9))
    elif kind == "dense":
        if not pa.types.is_fixed_size_list(col.type) and not pa.types.is_list(col.type):
            raise DataError(f"features: {path}: column '{name}' has type {col.type}; dense needs a fixed-size list of floats")
        sizes = pc.list_value_length(col).drop_null().to_numpy()
        if len(sizes) == 0 or (sizes != sizes[0]).any():
            raise DataError(f"features: {path}: column '{name}' holds vectors of differing or no lengths")
        state["dim"] = int(sizes[0])
    return state


def width(state: dict[str, Any]) -> int:
    """Rows of the embedding table (index kinds) or input width (continuous, dense)."""
    kind = state["kind"]
    if kind in ("categorical", "multi_hot"):
        return len(state["vocab"]) + 1
    if kind == "hashed":
        return int(state["buckets"]) + 1
    if kind == "continuous":
        return 1
    return int(state["dim"])


def encode(state: dict[str, Any], col: pa.Array, path: str) -> np.ndarray:
    """Encode one column. Index kinds -> int64 ([N] or [N, max_len], 0 = missing); others -> float32."""
    name, kind = state["name"], state["kind"]
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if kind == "categorical":
        vocab = pa.array(state["vocab"], col.type if len(state["vocab"]) else None)
        idx = pc.index_in(col, value_set=vocab) if len(vocab) else pa.nulls(len(col), pa.int32())
        return pc.fill_null(pc.add(idx, 1), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    if kind == "hashed":
        h = (stable_hash(col) % np.uint64(state["buckets"])).astype(np.int64) + 1
        return np.where(pc.is_valid(col).to_numpy(zero_copy_only=False), h, 0)
    if kind == "multi_hot":
        n, max_len = len(col), int(state["max_len"])
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
        flat = pc.list_flatten(col)
        vocab = pa.array(state["vocab"], flat.type if len(state["vocab"]) else None)
        codes = (pc.fill_null(pc.add(pc.index_in(flat, value_set=vocab), 1), 0).to_numpy(zero_copy_only=False)
                 if len(vocab) else np.zeros(len(flat), np.int64))
        row = np.repeat(np.arange(n), lengths)
        pos = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out = np.zeros((n, max_len), np.int64)
        ok = pos < max_len
        out[row[ok], pos[ok]] = codes[ok]
        return out
    if kind == "continuous":
        x = _as_float(col, name, path)
        y = (np.clip(x, state["lo"], state["hi"]) - state["lo"]) / (state["hi"] - state["lo"])
        return np.nan_to_num(y, nan=0.0).astype(np.float32)[:, None]
    # dense
    dim = int(state["dim"])
    valid = pc.is_valid(col).to_numpy(zero_copy_only=False)
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
    if ((lengths != dim) & valid).any():
        raise DataError(f"features: {path}: column '{name}' has vectors whose length is not {dim}")
    flat = pc.cast(pc.list_flatten(col), pa.float32()).to_numpy(zero_copy_only=False)
    if not np.isfinite(flat).all():
        raise DataError(f"features: {path}: column '{name}' has NaN or infinite values")
    out = np.zeros((len(col), dim), np.float32)
    out[valid] = flat.reshape(-1, dim)
    return out


def align(ids: pa.Array, table: pa.Table | None, key: str) -> pa.Table | None:
    """Rows of ``table`` in the order of ``ids`` (rows for ids absent from the table are all null)."""
    if table is None:
        return None
    keys = cast_ids(table.column(key).combine_chunks(), ids.type, f"features: column '{key}'")
    pos = pc.index_in(ids, value_set=keys)
    return table.take(pos)
