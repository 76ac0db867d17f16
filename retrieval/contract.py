"""The event-log contract: which Parquet columns the system reads, and the checks at that boundary.

events: user_id (int or string), item_id (int or string), event (string), ts (int epoch seconds or a
timestamp type), dwell_s (float, nullable, optional), session_id (int or string, optional).
items / users: item_id / user_id plus feature columns declared in config.

Every problem is raised as :class:`DataError` with the file, the column and what is wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

log = logging.getLogger(__name__)

EVENT_COLUMNS = ("user_id", "item_id", "event", "ts")
OPTIONAL_EVENT_COLUMNS = ("dwell_s", "session_id")


class DataError(ValueError):
    """Bad input data. The message names the file, the column and the problem."""


def _is_id_type(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)


def open_table(path: str | Path, what: str = "events") -> ds.Dataset:
    """Open a Parquet file or a directory of Parquet files as a dataset (nothing is read yet)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{what}: {p}: no such file or directory")
    try:
        dataset = ds.dataset(str(p), format="parquet")
        files = dataset.files
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as e:
        # Raised for non-Parquet or truncated files and for files whose schemas cannot be unified
        # (one file with int ids, another with string ids).
        raise DataError(f"{what}: {p}: not a readable Parquet file or dataset ({e})") from None
    if not files:
        raise DataError(f"{what}: {p}: directory holds no Parquet files")
    return dataset


def check_events_schema(dataset: ds.Dataset, path: str | Path) -> None:
    """Check that an events dataset has the contract's columns with acceptable types."""
    schema = dataset.schema
    # A dataset takes its schema from one file and casts the others; ids typed differently across files
    # would be coerced silently, so compare every file's own schema.
    for frag in dataset.get_fragments():
        own = frag.physical_schema
        for col in ("user_id", "item_id", "ts", "event"):
            if col in own.names and col in schema.names and own.field(col).type != schema.field(col).type:
                raise DataError(f"events: {frag.path}: column '{col}' has type {own.field(col).type} but other files "
                                f"of {path} have {schema.field(col).type}; ids of mixed types")
    for col in EVENT_COLUMNS:
        if col not in schema.names:
            raise DataError(f"events: {path}: missing column '{col}' (has: {', '.join(schema.names)})")
    for col in ("user_id", "item_id", "session_id"):
        if col in schema.names and not _is_id_type(schema.field(col).type):
            raise DataError(
                f"events: {path}: column '{col}' has type {schema.field(col).type}; expected int64 or string"
            )
    if not (pa.types.is_string(schema.field("event").type) or pa.types.is_large_string(schema.field("event").type)
            or pa.types.is_dictionary(schema.field("event").type)):
        raise DataError(f"events: {path}: column 'event' has type {schema.field('event').type}; expected string")
    ts_type = schema.field("ts").type
    if not (pa.types.is_integer(ts_type) or pa.types.is_timestamp(ts_type)):
        raise DataError(f"events: {path}: column 'ts' has type {ts_type}; expected int64 epoch seconds or timestamp")
    if "dwell_s" in schema.names:
        t = schema.field("dwell_s").type
        if not (pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_null(t)):
            raise DataError(f"events: {path}: column 'dwell_s' has type {t}; expected float seconds")


def check_feature_table(dataset: ds.Dataset, path: str | Path, key: str, columns: list[str], what: str) -> None:
    """Check that a feature table has its key column and every configured feature column."""
    names = dataset.schema.names
    if key not in names:
        raise DataError(f"{what}: {path}: missing key column '{key}' (has: {', '.join(names)})")
    if not _is_id_type(dataset.schema.field(key).type):
        raise DataError(f"{what}: {path}: column '{key}' has type {dataset.schema.field(key).type}; expected int64 or string")
    for c in columns:
        if c not in names:
            raise DataError(f"{what}: {path}: config names feature column '{c}' that does not exist (has: {', '.join(names)})")


def iter_batches(dataset: ds.Dataset, path: str | Path, columns: list[str], what: str,
                 batch_size: int = 1 << 20) -> Iterator[pa.RecordBatch]:
    """Stream record batches of the given columns; read errors become DataError."""
    try:
        yield from dataset.to_batches(columns=columns, batch_size=batch_size)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as e:
        raise DataError(f"{what}: {path}: could not read ({e})") from None


def ts_to_seconds(col: pa.Array) -> pa.Array:
    """int64 epoch seconds from an integer or timestamp column."""
    if pa.types.is_timestamp(col.type):
        return pc.cast(pc.cast(col, pa.timestamp("s")), pa.int64())
    return pc.cast(col, pa.int64())


def check_no_nulls(col: pa.Array, name: str, path: str | Path, what: str) -> None:
    n = col.null_count
    if n:
        raise DataError(f"{what}: {path}: column '{name}' has {n} null value(s); ids and timestamps must be set")


INT64 = (-(2**63), 2**63 - 1)  # what an int id can be: the events' ids are int64


def is_int64(v: object) -> bool:
    """True for a Python int (not a bool) that an int64 id column can hold."""
    return isinstance(v, int) and not isinstance(v, bool) and INT64[0] <= v <= INT64[1]


def cast_ids(ids: pa.Array, want: pa.DataType, where: str | Path | None) -> pa.Array:
    """``ids`` as ``want`` (int64 or string: the events' id type), or a DataError saying they cannot be."""
    if ids.type == want:
        return ids
    try:
        return pc.cast(ids, want)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError(f"{where}: ids of type {ids.type} cannot match the events' ids of type {want}") from None


def id_type_of(t: pa.DataType) -> str:
    """'int' or 'str': how ids are typed in answers (the service returns ids as in the data)."""
    return "int" if pa.types.is_integer(t) else "str"
