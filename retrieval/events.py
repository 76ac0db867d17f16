"""Read an event log into compact sorted arrays: reading (roles, checks) apart from sessionising (sort,
sessions, derived dwell, merged bursts), which fresh events in the service go through too.

The log is streamed in record batches; only the compact columns of kept rows are held
(ids are dictionary-encoded into int32 codes, about 30 bytes an event).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from retrieval.contract import (
    DataError,
    check_events_schema,
    check_no_nulls,
    id_type_of,
    iter_batches,
    open_table,
    ts_to_seconds,
)

log = logging.getLogger(__name__)

CONVERSION, ENGAGEMENT = 1, 0


@dataclass(frozen=True)
class EventRoles:
    """Which event names are conversions and which are engagement, each with a base weight."""

    conversions: dict[str, float]  # e.g. {"purchase": 1.0}
    engagement: dict[str, float]  # e.g. {"view": 0.5, "click": 1.0, "add_to_cart": 2.0}
    strict: bool = False  # True: an event name in neither map is an error, not a counted drop

    def __post_init__(self) -> None:
        if not self.conversions:
            raise DataError("config: roles.conversions names no event; at least one conversion event is needed")
        both = set(self.conversions) & set(self.engagement)
        if both:
            raise DataError(f"config: event(s) {sorted(both)} are both conversion and engagement")
        for name, w in {**self.conversions, **self.engagement}.items():
            if not (w >= 0 and np.isfinite(w)):
                raise DataError(f"config: role weight of event '{name}' is {w}; expected a finite value >= 0")

    @property
    def names(self) -> list[str]:
        return list(self.conversions) + list(self.engagement)


@dataclass(frozen=True)
class SessionConfig:
    """How sessions are cut, dwell derived where the log has none, and bursts merged."""

    session_gap_s: float = 1800.0  # inactivity gap that starts a new session (when the log has no session_id)
    cap_s: float = 600.0  # dwell is capped here (tabs left open are not engagement)
    last_event_s: float = 30.0  # dwell given to the last event of a session, which has no next event
    burst_gap_s: float = 5.0  # repeats of the same event on the same item within this gap are merged


@dataclass
class Events:
    """Compact event arrays sorted by (user, ts). Codes index the sorted vocabularies."""

    user: np.ndarray  # [E] int32 code into user_vocab
    item: np.ndarray  # [E] int32 code into item_vocab
    kind: np.ndarray  # [E] int8: CONVERSION or ENGAGEMENT
    event: np.ndarray  # [E] int16 index into event_names
    base_weight: np.ndarray  # [E] float32 role weight of the event name
    ts: np.ndarray  # [E] int64 epoch seconds
    dwell: np.ndarray  # [E] float32 seconds (given, or derived from the gap to the next event)
    session: np.ndarray  # [E] int64 global session number, increasing along the sort
    user_vocab: pa.Array  # sorted distinct user ids
    item_vocab: pa.Array  # sorted distinct item ids
    event_names: list[str]
    counts: dict[str, int] = field(default_factory=dict)  # rows dropped or merged, by reason
    derived: np.ndarray | None = None  # [E] bool: dwell derived (the log had none), not given

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def user_id_type(self) -> str:
        return id_type_of(self.user_vocab.type)

    @property
    def item_id_type(self) -> str:
        return id_type_of(self.item_vocab.type)


def _encode_ids(chunks: list[pa.Array]) -> tuple[np.ndarray, pa.Array]:
    """int32 codes into the sorted distinct values."""
    arr = pa.chunked_array(chunks).combine_chunks() if chunks else pa.array([], pa.int64())
    vocab = pc.unique(arr)
    vocab = vocab.take(pc.sort_indices(vocab))
    codes = pc.index_in(arr, value_set=vocab).to_numpy(zero_copy_only=False).astype(np.int32)
    return codes, vocab


def _unify_id_chunks(chunks: list[pa.Array], name: str, path: str | Path) -> list[pa.Array]:
    types = {id_type_of(c.type) for c in chunks}
    if len(types) > 1:
        raise DataError(f"events: {path}: column '{name}' mixes integer and string ids across files")
    want = pa.int64() if types == {"int"} else pa.string()
    return [c if c.type == want else pc.cast(c, want) for c in chunks]


TS_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
# No shopping log has a timestamp past this in seconds (the year 2500), nor a span longer than this: a column in
# milliseconds read as seconds lands in the year 50,000 and spans centuries.
MAX_TS_S, MAX_SPAN_S = 16_725_225_600, 50 * 365 * 86_400


@dataclass
class RawEvents:
    """The kept rows of a log, encoded, in file order: what :func:`sessionise` sorts and sessionises."""

    user: np.ndarray  # [E] int32 codes into user_vocab
    item: np.ndarray  # [E] int32 codes into item_vocab
    event: np.ndarray  # [E] int16 index into the roles' names
    ts: np.ndarray  # [E] int64 epoch seconds
    dwell: np.ndarray  # [E] float32 seconds, NaN where the log has none
    session: np.ndarray | None  # [E] int32 codes of the log's session_id, None without the column
    user_vocab: pa.Array
    item_vocab: pa.Array
    n_read: int
    ignored: dict[str, int]  # rows dropped, by event name (no role)


def read_events(path: str | Path, roles: EventRoles, ts_unit: str = "s") -> RawEvents:
    """Stream and check an event log: the contract's columns, nulls, roles, dwell values, timestamp units.

    ts_unit: the unit of an integer ``ts`` column (a timestamp column carries its own)."""
    if ts_unit not in TS_UNITS:
        raise DataError(f"config: ts_unit '{ts_unit}' is not one of {sorted(TS_UNITS)}")
    dataset = open_table(path, "events")
    check_events_schema(dataset, path)
    names = dataset.schema.names
    has_dwell, has_session = "dwell_s" in names, "session_id" in names
    cols = ["user_id", "item_id", "event", "ts"] + ["dwell_s"] * has_dwell + ["session_id"] * has_session
    value_set = pa.array(roles.names, pa.string())

    parts: dict[str, list] = {c: [] for c in ("user", "item", "event", "ts", "dwell", "session")}
    ignored: Counter[str] = Counter()
    n_read = 0
    for batch in iter_batches(dataset, path, cols, "events"):
        n_read += batch.num_rows
        for c in ("user_id", "item_id", "event", "ts"):
            check_no_nulls(batch.column(c), c, path, "events")
        ev = batch.column("event")
        if pa.types.is_dictionary(ev.type):
            ev = ev.dictionary_decode()
        code = pc.index_in(pc.cast(ev, pa.string()), value_set=value_set)
        unknown = pc.is_null(code)
        if pc.any(unknown).as_py():
            counts = pc.value_counts(ev.filter(unknown)).to_pylist()
            if roles.strict:
                seen = ", ".join(f"'{c['values']}' ({c['counts']} rows)" for c in counts[:5])
                raise DataError(f"events: {path}: column 'event' has names not in the configured roles: {seen}")
            ignored.update({c["values"]: c["counts"] for c in counts})
        keep = pc.invert(unknown)
        parts["user"].append(batch.column("user_id").filter(keep))
        parts["item"].append(batch.column("item_id").filter(keep))
        parts["event"].append(code.filter(keep).to_numpy(zero_copy_only=False).astype(np.int16))
        ts = batch.column("ts").filter(keep)
        seconds = ts_to_seconds(ts).to_numpy(zero_copy_only=False)
        if not pa.types.is_timestamp(ts.type) and ts_unit != "s":
            seconds = seconds // TS_UNITS[ts_unit]
        parts["ts"].append(seconds)
        if has_dwell:
            d = pc.cast(batch.column("dwell_s").filter(keep), pa.float64()).to_numpy(zero_copy_only=False)
            bad = ~np.isnan(d) & ((d < 0) | ~np.isfinite(d))
            if bad.any():
                raise DataError(f"events: {path}: column 'dwell_s' has {int(bad.sum())} negative or infinite "
                                f"value(s), e.g. {d[bad][0]}; dwell must be >= 0 seconds or null")
            parts["dwell"].append(d.astype(np.float32))
        if has_session:
            parts["session"].append(batch.column("session_id").filter(keep))

    if n_read == 0:
        raise DataError(f"events: {path}: the log is empty (0 rows)")
    n_kept = sum(len(t) for t in parts["ts"])
    if n_kept == 0:
        raise DataError(f"events: {path}: none of the {n_read} rows has an event named in the roles "
                        f"({', '.join(roles.names)}); seen: {', '.join(list(ignored)[:10])}")
    ts = np.concatenate(parts["ts"]).astype(np.int64)
    check_ts_units(ts, path, ts_unit)
    user, user_vocab = _encode_ids(_unify_id_chunks(parts["user"], "user_id", path))
    item, item_vocab = _encode_ids(_unify_id_chunks(parts["item"], "item_id", path))
    return RawEvents(
        user=user, item=item, event=np.concatenate(parts["event"]), ts=ts,
        dwell=np.concatenate(parts["dwell"]) if has_dwell else np.full(n_kept, np.nan, np.float32),
        session=_encode_ids(_unify_id_chunks(parts["session"], "session_id", path))[0] if has_session else None,
        user_vocab=user_vocab, item_vocab=item_vocab, n_read=n_read, ignored=dict(ignored))


def check_ts_units(ts: np.ndarray, path: str | Path, ts_unit: str) -> None:
    """Stop on timestamps no shopping log has in seconds: the likely case is a column in another unit."""
    hi, span = int(ts.max()), int(ts.max() - ts.min())
    if hi > MAX_TS_S or span > MAX_SPAN_S:
        guess = next((u for u, f in TS_UNITS.items() if hi // f <= MAX_TS_S and span // f <= MAX_SPAN_S), None)
        hint = f"; if they are in {guess}, set data.ts_unit: {guess}" if guess and guess != ts_unit else ""
        raise DataError(f"events: {path}: column 'ts' read as {ts_unit} spans {span / 86_400:,.0f} days up to "
                        f"{hi}, beyond any shopping log{hint}")


def sessionise(raw: RawEvents, roles: EventRoles, sessions: SessionConfig, path: str | Path = "events",
               need_conversion: bool = True) -> Events:
    """Sort by (user, time), cut sessions, derive missing dwell, merge bursts: the training rules, which the
    service applies to a user's fresh events too (need_conversion=False: one user's events need none)."""
    kind_of = np.array([CONVERSION] * len(roles.conversions) + [ENGAGEMENT] * len(roles.engagement), np.int8)
    weight_of = np.array(list(roles.conversions.values()) + list(roles.engagement.values()), np.float32)
    if need_conversion and not (kind_of[raw.event] == CONVERSION).any():
        raise DataError(f"events: {path}: no conversion at all (no row with event in "
                        f"{sorted(roles.conversions)}); conversion retrieval needs some")
    # Sort by user, then time; ties keep file order (stable), so out-of-order input is fine.
    order = np.lexsort((raw.ts, raw.user))
    user, item, event, ts, given = raw.user[order], raw.item[order], raw.event[order], raw.ts[order], raw.dwell[order]
    new_session = np.ones(len(ts), bool)
    new_session[1:] = (user[1:] != user[:-1]) | (ts[1:] - ts[:-1] > sessions.session_gap_s)
    if raw.session is not None:
        sc = raw.session[order]
        new_session[1:] = (user[1:] != user[:-1]) | (sc[1:] != sc[:-1])
    session = np.cumsum(new_session) - 1

    derived = derive_dwell(ts, session, given, sessions)
    keep_rows, merged = merge_bursts(item, event, ts, session, derived, sessions)
    counts = {f"ignored_event:{k}": v for k, v in raw.ignored.items()}
    counts["merged_burst_rows"] = int(len(ts) - keep_rows.size)
    counts["derived_dwell_rows"] = int(np.isnan(given).sum())
    return Events(
        user=user[keep_rows], item=item[keep_rows], kind=kind_of[event[keep_rows]], event=event[keep_rows],
        base_weight=weight_of[event[keep_rows]], ts=ts[keep_rows], dwell=merged, session=session[keep_rows],
        user_vocab=raw.user_vocab, item_vocab=raw.item_vocab, event_names=roles.names, counts=counts,
        derived=np.isnan(given)[keep_rows],
    )


def load_events(path: str | Path, roles: EventRoles, sessions: SessionConfig | None = None,
                ts_unit: str = "s") -> Events:
    """Read (:func:`read_events`) and sessionise (:func:`sessionise`) an event log."""
    raw = read_events(path, roles, ts_unit)
    for name, n in sorted(raw.ignored.items(), key=lambda kv: -kv[1]):
        log.info("events: ignored %d row(s) of event '%s' (no role in config)", n, name)
    ev = sessionise(raw, roles, sessions or SessionConfig(), path)
    log.info("events: %s: %d rows read, %d kept (%d conversions), %d users, %d items; %s", path, raw.n_read,
             len(ev), int((ev.kind == CONVERSION).sum()), len(ev.user_vocab), len(ev.item_vocab), ev.counts)
    return ev


def derive_dwell(ts: np.ndarray, session: np.ndarray, given: np.ndarray, cfg: SessionConfig) -> np.ndarray:
    """Dwell where missing = gap to the next event of the same session, capped; last event gets a default.

    ts, session, given: [E] sorted by (user, ts); given is NaN where the log had no dwell.
    """
    gap = gap_to_next(session, ts)
    derived = np.where(np.isnan(gap), cfg.last_event_s, gap)
    out = np.where(np.isnan(given), derived, given)
    return np.minimum(out, cfg.cap_s).astype(np.float32)


def gap_to_next(session: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """[E] seconds to the next row of the same session (rows sorted by session, then time); NaN at a session's end."""
    gap = np.full(len(ts), np.nan, np.float64)
    if len(ts) > 1:
        gap[:-1] = np.where(session[1:] == session[:-1], ts[1:] - ts[:-1], np.nan)
    return gap


def merge_bursts(item: np.ndarray, event: np.ndarray, ts: np.ndarray, session: np.ndarray, dwell: np.ndarray,
                 cfg: SessionConfig) -> tuple[np.ndarray, np.ndarray]:
    """Merge runs of the same event on the same item in a session (gaps <= burst_gap_s) into their first row.

    Returns the kept row positions and their dwell (the run's total, capped).
    """
    start = np.ones(len(ts), bool)
    start[1:] = ~((session[1:] == session[:-1]) & (item[1:] == item[:-1]) & (event[1:] == event[:-1])
                  & (ts[1:] - ts[:-1] <= cfg.burst_gap_s))
    keep = np.flatnonzero(start)
    total = np.add.reduceat(dwell.astype(np.float64), keep) if len(keep) else np.zeros(0)
    return keep, np.minimum(total, cfg.cap_s).astype(np.float32)
