"""Convert public log formats into the event-log contract.

``python -m retrieval.adapters trivago IN.parquet OUT_DIR``: Trivago RecSys Challenge 2019 sessions
(clickouts are conversions; image, info, rating, deals and item searches are engagement). Dwell is the gap
to the next step of the session (any action); items get a price and a city from the clickout impressions.

``python -m retrieval.adapters diginetica IN_DIR OUT_DIR``: CIKM Cup 2016 (Diginetica) CSVs
(train-purchases.csv, an item-views file, product-categories.csv); purchases are conversions, views are
engagement with dwell = gap to the next view of the session; categories become an item feature.

Both write OUT_DIR/events.parquet and OUT_DIR/items.parquet.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from retrieval.contract import DataError
from retrieval.events import gap_to_next

log = logging.getLogger(__name__)

TRIVAGO_ACTIONS = {
    "clickout item": "clickout",
    "interaction item image": "image",
    "interaction item info": "info",
    "interaction item rating": "rating",
    "interaction item deals": "deals",
    "search for item": "search",
}


def _require(table: pa.Table, cols: list[str], path: str | Path) -> None:
    missing = [c for c in cols if c not in table.column_names]
    if missing:
        raise DataError(f"adapter: {path}: missing column(s) {missing} (has: {', '.join(table.column_names)})")


def _ids(col: pa.Array) -> pa.Array:
    """Integer ids where every value is an integer, else strings."""
    s = pc.cast(col, pa.string())
    if len(s) and pc.all(pc.match_substring_regex(s, r"^-?\d{1,18}$")).as_py():
        return pc.cast(s, pa.int64())
    return s


def _session_gaps(session: pa.Array, ts_s: np.ndarray, order_key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort rows by (session, order_key); return the order and each row's gap to the next row of its session."""
    codes = pc.dictionary_encode(pc.cast(session, pa.string())).indices.to_numpy(zero_copy_only=False)
    order = np.lexsort((order_key, codes))
    gap = gap_to_next(codes[order], ts_s[order])
    back = gap < 0  # steps whose timestamp goes back in time: no usable dwell, left to the pipeline's default
    if back.any():
        log.info("adapter: %d step(s) with a later step earlier in time; their dwell is left null", int(back.sum()))
        gap[back] = np.nan
    return order, gap


def _read_any(path: Path) -> pa.Table:
    try:
        if path.suffix == ".csv":
            return pcsv.read_csv(path)
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"adapter: {path}: could not read ({e})") from None


def trivago(src: str | Path, out: str | Path) -> dict[str, int]:
    """Trivago sessions (Parquet or CSV with the challenge's columns) -> events + items."""
    src, out = Path(src), Path(out)
    if not src.exists():
        raise DataError(f"adapter: {src}: no such file")
    t = _read_any(src)
    _require(t, ["user_id", "session_id", "timestamp", "step", "action_type", "reference"], src)
    ts = pc.cast(t.column("timestamp"), pa.int64()).to_numpy(zero_copy_only=False)
    step = pc.cast(t.column("step"), pa.int64()).to_numpy(zero_copy_only=False)
    order, gap = _session_gaps(t.column("session_id").combine_chunks(), ts, step)
    t = t.take(pa.array(order))
    action = t.column("action_type").combine_chunks()
    keep = pc.is_in(action, value_set=pa.array(list(TRIVAGO_ACTIONS)))
    keep = pc.and_(keep, pc.match_substring_regex(pc.cast(t.column("reference"), pa.string()), r"^\d+$"))
    keep_np = keep.to_numpy(zero_copy_only=False)
    ev = t.filter(keep)
    names = pc.cast(ev.column("action_type"), pa.string()).to_pylist()
    events = pa.table({
        "user_id": pc.cast(ev.column("user_id"), pa.string()),
        "item_id": _ids(ev.column("reference").combine_chunks()),
        "event": pa.array([TRIVAGO_ACTIONS[n] for n in names], pa.string()),
        "ts": pc.cast(ev.column("timestamp"), pa.int64()),
        "dwell_s": pa.array(gap[keep_np], pa.float32(), from_pandas=True),
        "session_id": pc.cast(ev.column("session_id"), pa.string()),
    })
    items = _trivago_items(t, events.column("item_id").type)
    return _write(out, events, items)


def _trivago_items(t: pa.Table, id_type: pa.DataType) -> pa.Table | None:
    """Items shown in clickout impressions, with their median displayed price and their city."""
    if "impressions" not in t.column_names or "prices" not in t.column_names:
        return None
    rows = t.filter(pc.is_valid(t.column("impressions")))
    imp = pc.split_pattern(rows.column("impressions"), "|")
    pr = pc.split_pattern(rows.column("prices"), "|")
    n = pc.list_value_length(imp).to_numpy(zero_copy_only=False)
    if (n != pc.list_value_length(pr).to_numpy(zero_copy_only=False)).any():
        raise DataError("adapter: trivago: impressions and prices lists differ in length on some rows")
    flat = pa.table({
        "item_id": pc.cast(pc.list_flatten(imp), id_type),
        "price": pc.cast(pc.list_flatten(pr), pa.float64()),
        "city": pc.cast(pa.array(np.repeat(rows.column("city").to_numpy(zero_copy_only=False), n)), pa.string())
        if "city" in rows.column_names else pa.nulls(int(n.sum()), pa.string()),
    })
    return flat.group_by("item_id").aggregate([("price", "approximate_median"), ("city", "min")]).rename_columns(
        ["item_id", "price", "city"])


def diginetica(src: str | Path, out: str | Path, views: str = "sample_train-item-views.csv",
               purchases: str = "train-purchases.csv", categories: str = "product-categories.csv") -> dict[str, int]:
    """Diginetica CSVs (';'-separated, 'NA' for anonymous users) -> events + items."""
    src, out = Path(src), Path(out)
    opts = pcsv.ParseOptions(delimiter=";")
    conv = pcsv.ConvertOptions(null_values=["NA", ""], strings_can_be_null=True,
                               column_types={"userId": pa.string(), "user_id": pa.string()})

    def read(name: str) -> pa.Table:
        p = src / name
        if not p.exists():
            raise DataError(f"adapter: {p}: no such file")
        try:
            return pcsv.read_csv(p, parse_options=opts, convert_options=conv)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"adapter: {p}: could not read as ';'-separated CSV ({e})") from None

    v, p = read(views), read(purchases)
    _require(v, ["session_id", "user_id", "item_id", "timeframe", "eventdate"], src / views)
    _require(p, ["sessionId", "userId", "timeframe", "eventdate", "itemId"], src / purchases)
    parts = []
    for t, (sess, user, item), name in ((v, ("session_id", "user_id", "item_id"), "view"),
                                        (p, ("sessionId", "userId", "itemId"), "purchase")):
        day = pc.cast(pc.cast(pc.strptime(pc.cast(t.column("eventdate"), pa.string()), "%Y-%m-%d", "s"), pa.int64()),
                      pa.int64()).to_numpy(zero_copy_only=False)
        ms = pc.cast(t.column("timeframe"), pa.int64()).to_numpy(zero_copy_only=False)
        session = pc.cast(t.column(sess), pa.string())
        anon = pc.binary_join_element_wise("s", session, "")
        parts.append(pa.table({
            "user_id": pc.coalesce(pc.cast(t.column(user), pa.string()), anon),
            "item_id": pc.cast(t.column(item), pa.int64()),
            "event": pa.array([name] * t.num_rows, pa.string()),
            "ts_ms": pa.array(day * 1000 + ms, pa.int64()),
            "session_id": session,
        }))
    ev = pa.concat_tables(parts)
    ts_ms = ev.column("ts_ms").to_numpy()
    is_view = pc.equal(ev.column("event"), "view").to_numpy(zero_copy_only=False)
    # Dwell: the gap to the next *view* of the session, so views alone are ordered for the gap.
    views_only = ev.filter(pa.array(is_view))
    order, gap_ms = _session_gaps(views_only.column("session_id").combine_chunks(), ts_ms[is_view], ts_ms[is_view])
    dwell = np.full(ev.num_rows, np.nan)
    dwell[np.flatnonzero(is_view)[order]] = gap_ms / 1000.0
    events = pa.table({
        "user_id": ev.column("user_id"), "item_id": ev.column("item_id"), "event": ev.column("event"),
        "ts": pa.array(ts_ms // 1000, pa.int64()), "dwell_s": pa.array(dwell, pa.float32(), from_pandas=True),
        "session_id": ev.column("session_id"),
    })
    items = None
    if (src / categories).exists():
        c = read(categories)
        _require(c, ["itemId", "categoryId"], src / categories)
        items = pa.table({"item_id": pc.cast(c.column("itemId"), pa.int64()),
                          "category": pc.cast(c.column("categoryId"), pa.string())})
    return _write(out, events, items)


def _write(out: Path, events: pa.Table, items: pa.Table | None) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(events, out / "events.parquet")
    if items is not None:
        pq.write_table(items, out / "items.parquet")
    counts = dict(zip(*np.unique(events.column("event").to_numpy(zero_copy_only=False), return_counts=True), strict=True))
    summary = {"events": events.num_rows, "items": 0 if items is None else items.num_rows,
               **{f"event:{k}": int(v) for k, v in counts.items()}}
    log.info("adapter: wrote %s: %s", out, summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m retrieval.adapters", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="format", required=True)
    t = sub.add_parser("trivago", help="Trivago RecSys 2019 sessions (Parquet or CSV)")
    t.add_argument("src")
    t.add_argument("out")
    d = sub.add_parser("diginetica", help="Diginetica CIKM 2016 CSV folder")
    d.add_argument("src")
    d.add_argument("out")
    d.add_argument("--views", default="sample_train-item-views.csv")
    d.add_argument("--purchases", default="train-purchases.csv")
    d.add_argument("--categories", default="product-categories.csv")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if a.format == "trivago":
            s = trivago(a.src, a.out)
        else:
            s = diginetica(a.src, a.out, a.views, a.purchases, a.categories)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    print(s)


if __name__ == "__main__":
    main()
