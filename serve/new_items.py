"""Items posted to ``/admin/items``, checked field by field against the item tower's encoders, as one Arrow table.

JSON gives each field a Python type; pyarrow would infer a column type from whatever came first and fail late
(an int past int64, a list where a string belongs, a null beside values) with errors no client can act on. Here
each value is checked against what its encoder reads, and a bad one is a DataError naming the item and field.
"""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa

from retrieval.contract import DataError, is_int64

MAX_STR = 1024  # longest id or categorical value accepted


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _check_id(v: Any, id_type: str, where: str) -> None:
    if id_type == "int":
        if not _is_int(v):
            raise DataError(f"{where}: must be an integer (this artifact's item ids are int), got {v!r:.60}")
        if not is_int64(v):
            raise DataError(f"{where}: {v} is outside the int64 range of item ids")
    elif not isinstance(v, str) or not 0 < len(v) <= MAX_STR:
        raise DataError(f"{where}: must be a string of 1 to {MAX_STR} characters (this artifact's item ids are str)")


def _scalar_type(values: list[tuple[int, Any]], where: str) -> pa.DataType:
    """string or int64 for a categorical / hashed feature's values (None = missing)."""
    kinds = set()
    for i, v in values:
        if v is None:
            continue
        if isinstance(v, str) and len(v) <= MAX_STR:
            kinds.add("str")
        elif is_int64(v):
            kinds.add("int")
        else:
            raise DataError(f"items[{i}].{where}: must be a string or an int64 (or null), got {v!r:.60}")
    if len(kinds) > 1:
        raise DataError(f"items[*].{where}: mixes strings and integers across items")
    return pa.int64() if kinds == {"int"} else pa.string()


def _column(enc: dict[str, Any], values: list[tuple[int, Any]]) -> pa.Array:
    name, kind = enc["name"], enc["kind"]
    raw = [v for _, v in values]
    if kind in ("categorical", "hashed"):
        typ = _scalar_type(values, name)
        vocab = enc.get("vocab") or []
        if kind == "categorical" and vocab and typ != (pa.string() if isinstance(vocab[0], str) else pa.int64()):
            want = "strings" if isinstance(vocab[0], str) else "integers"
            raise DataError(f"items[*].{name}: the model's '{name}' values are {want}")
        return pa.array(raw, typ)
    if kind == "continuous":
        for i, v in values:
            if v is not None and not _is_number(v):
                raise DataError(f"items[{i}].{name}: must be a finite number (or null), got {v!r:.60}")
        return pa.array([None if v is None else float(v) for v in raw], pa.float64())
    if kind == "multi_hot":
        for i, v in values:
            if v is not None and not (isinstance(v, list) and all(isinstance(x, str) and len(x) <= MAX_STR for x in v)):
                raise DataError(f"items[{i}].{name}: must be a list of strings (or null), got {v!r:.60}")
        return pa.array(raw, pa.list_(pa.string()))
    dim = int(enc["dim"])  # dense
    for i, v in values:
        if v is not None and not (isinstance(v, list) and len(v) == dim and all(_is_number(x) for x in v)):
            raise DataError(f"items[{i}].{name}: must be a list of {dim} finite numbers (or null)")
    return pa.array(raw, pa.list_(pa.float32(), dim))


def items_table(items: list[Any], id_type: str, encoders: list[dict[str, Any]]) -> tuple[pa.Table, list[str]]:
    """(item_id + one column per encoder, the fields no encoder reads). Every item must name every feature the
    model reads (null = missing, as in the training tables); ids must be distinct."""
    if not items:
        raise DataError("new items: the list is empty")
    features = [e["name"] for e in encoders]
    ignored: set[str] = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataError(f"items[{i}]: must be an object with item_id and the item features")
        if "item_id" not in item:
            raise DataError(f"items[{i}]: each item needs an item_id")
        _check_id(item["item_id"], id_type, f"items[{i}].item_id")
        missing = [f for f in features if f not in item]
        if missing:
            raise DataError(f"items[{i}]: missing feature(s) {missing} (null is accepted as missing)")
        ignored |= set(item) - set(features) - {"item_id"}
    ids = [item["item_id"] for item in items]
    if len(set(ids)) != len(ids):
        raise DataError("new items: an item_id appears twice")
    cols = {"item_id": pa.array(ids, pa.int64() if id_type == "int" else pa.string())}
    for enc in encoders:
        cols[enc["name"]] = _column(enc, [(i, item[enc["name"]]) for i, item in enumerate(items)])
    return pa.table(cols), sorted(ignored)
