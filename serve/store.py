"""A loaded, validated artifact: immutable, so a request that took it sees one version from start to end.

Swapping versions or adding items builds a new ``Served`` and replaces the reference in one assignment.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from index.artifact import ArtifactError, Manifest, read_manifest
from index.faiss_index import apply_search_params
from retrieval.answer import search_width, served_answer
from retrieval.checkpoint import CheckpointError, Trained, load_trained
from retrieval.contract import DataError, is_int64
from retrieval.corpus import history_features
from retrieval.embed import states_from_inputs
from retrieval.inference import to_torch
from retrieval.live import EventTail, LiveState, Tails, blank_user
from retrieval.vocab import TowerVocab
from serve.new_items import items_table

log = logging.getLogger(__name__)

# The one spelling of an int64 id: "0", or an optional minus and digits without a leading zero (ASCII only;
# Python's int() also takes "+5", " 5 ", "1_0", "0005" and non-ASCII digits, which would alias other ids).
CANONICAL_INT = re.compile(r"(0|-?[1-9][0-9]{0,18})")


class IdLookup:
    """Raw id string from a request -> row, for ids typed int (sorted array) or str (dict)."""

    def __init__(self, ids: pa.Array | np.ndarray | list, id_type: str, rows: np.ndarray | None = None):
        """ids: the ids of rows 0..N-1 (or of ``rows``); int ids need not be sorted, each must be distinct."""
        self.id_type = id_type
        if isinstance(ids, pa.Array):
            ids = ids.to_numpy() if id_type == "int" else ids.to_pylist()
        rows = np.arange(len(ids)) if rows is None else np.asarray(rows)
        if id_type == "int":
            keys = np.asarray(ids, np.int64)
            order = np.argsort(keys, kind="stable")
            self._sorted, self._rows = keys[order], rows[order]
            if len(keys) > 1 and not (np.diff(self._sorted) > 0).all():
                raise ArtifactError("artifact: ids are not unique")
        else:
            self._dict = dict(zip(ids, rows.tolist(), strict=True))

    def parse(self, raw: str | int) -> int | str | None:
        """The id as typed in the data, or None when it cannot be one (so it is unknown): a string id as given;
        an int id as a JSON int or in its canonical spelling, so that no other string aliases it."""
        if self.id_type == "str":
            return raw if isinstance(raw, str) else None
        if isinstance(raw, str):
            if not CANONICAL_INT.fullmatch(raw):
                return None
            raw = int(raw)
        return raw if is_int64(raw) else None

    def row(self, value: int | str | None) -> int | None:
        if value is None:
            return None
        if self.id_type == "str":
            return self._dict.get(value) if isinstance(value, str) else None
        if not is_int64(value):
            return None
        i = int(np.searchsorted(self._sorted, value))
        return int(self._rows[i]) if i < len(self._sorted) and self._sorted[i] == value else None

    def rows(self, values: list) -> np.ndarray:
        """[n] rows of ``values`` (ids as typed), -1 where unknown."""
        if self.id_type == "str" or not all(is_int64(v) for v in values):
            return np.array([-1 if (r := self.row(v)) is None else r for v in values], np.int64)
        v = np.asarray(values, np.int64)
        i = np.searchsorted(self._sorted, v).clip(max=max(len(self._sorted) - 1, 0))
        found = (self._sorted[i] == v) if len(self._sorted) else np.zeros(len(v), bool)
        return np.where(found, self._rows[i] if len(self._rows) else -1, -1).astype(np.int64)

    def with_ids(self, ids: list, first_row: int) -> IdLookup:
        """This lookup and ``ids`` at rows first_row, first_row + 1, ..."""
        if self.id_type == "str":
            out = IdLookup([], "str")
            out._dict = {**self._dict, **{v: first_row + i for i, v in enumerate(ids)}}
            return out
        return IdLookup(np.concatenate([self._sorted, np.asarray(ids, np.int64)]), "int",
                        np.concatenate([self._rows, first_row + np.arange(len(ids))]))


class IndexVectors:
    """Item vectors by catalogue row, read back from the index (no second copy in memory): what scores a live
    user's history items. Exact for Flat and HNSW; quantised indexes give their reconstruction."""

    def __init__(self, index: faiss.Index):
        self.index = index
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.make_direct_map()

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        if len(rows) == 0:
            return np.zeros((0, self.index.d), np.float32)
        return self.index.reconstruct_batch(rows)


@dataclass(frozen=True)
class Served:
    path: Path
    manifest: Manifest
    index: faiss.Index
    item_ids: np.ndarray  # [N] row -> item id (int64, or object array of str)
    users: IdLookup
    user_vecs: np.ndarray  # [U, K, D] float32: K interest vectors per user
    purchased_offsets: np.ndarray  # [U + 1] into purchased_rows
    purchased_rows: np.ndarray  # catalogue rows each user converted on
    history_offsets: np.ndarray  # [U + 1] into history_rows / history_scores
    history_rows: np.ndarray  # catalogue rows in each user's history bag
    history_scores: np.ndarray  # their full scores (inner product + repeat term)
    popular_rows: np.ndarray  # [N] every catalogue row: by conversions, then the rest in catalogue order
    popular_scores: np.ndarray  # [N] share of conversions (0 for items without any)
    model: Trained  # the towers and vocabularies (model.pt): embeds added items and live users
    items: IdLookup  # item id -> catalogue row (added items too)
    live: LiveState  # what turns raw events into user tower inputs (the training rules, the items' lookups)
    tails: Tails  # per user row, their last events (what live events follow)
    user_static: dict[str, np.ndarray]  # per user row, the user tower's own inputs (ID row, features)
    blank_static: dict[str, np.ndarray]  # the same for a user the model never saw: [1, ...], all missing
    added: int = 0  # items added since load (no retraining; not persisted)
    added_digest: str = ""  # a hash chained over every add, so two catalogues never share a version string

    @property
    def model_version(self) -> str:
        """The artifact's version; after adds, with their count and digest: items added to one process are not
        in another's catalogue, and the version says so."""
        base = self.manifest.model_version
        return base if not self.added else f"{base}+{self.added}items.{self.added_digest[:8]}"

    def item_id_list(self, rows: np.ndarray) -> list[Any]:
        return self.item_ids[rows].tolist()

    def candidates(self, user: int | str | None, k: int, exclude_purchased: bool) -> tuple[str | None, list, list]:
        """(fallback, item ids, scores) for one user; unknown users get conversion popularity."""
        row = self.users.row(user)
        if row is None:
            return "popular", self.item_id_list(self.popular_rows[:k]), self.popular_scores[:k].tolist()
        lo, hi = self.history_offsets[row], self.history_offsets[row + 1]
        return self._answer(self.user_vecs[row], self.history_rows[lo:hi], self.history_scores[lo:hi], k,
                            self._purchased(row) if exclude_purchased else None)

    def _purchased(self, row: int | None) -> np.ndarray:
        """Catalogue rows a known user converted on (none for a new user)."""
        if row is None:
            return np.zeros(0, np.int64)
        return self.purchased_rows[self.purchased_offsets[row]: self.purchased_offsets[row + 1]].astype(np.int64)

    def _answer(self, vecs: np.ndarray, hist_rows: np.ndarray, hist_scores: np.ndarray, k: int,
                exclude: np.ndarray | None) -> tuple[None, list, list]:
        """The served top ``k`` of user vectors [K, D] with their history items' full scores, less ``exclude``."""
        want = search_width(k, len(hist_rows), 0 if exclude is None else len(exclude), self.index.ntotal)
        faiss.omp_set_num_threads(1)  # on the event loop's thread: one query gains nothing from OpenMP threads
        scores, rows = self.index.search(vecs, want)  # [K, want]
        rows, scores = served_answer(rows, scores, hist_rows, hist_scores, k, exclude)
        return None, self.item_id_list(rows), scores.tolist()

    @property
    def event_names(self) -> list[str]:
        return self.live.config.roles.names

    def fresh_tail(self, events: list[dict[str, Any]]) -> tuple[EventTail, int]:
        """Checked raw events (item_id, event, ts, dwell_s) as the events the model can read, and how many it
        cannot (an item not in the catalogue, an event name outside the model's roles)."""
        names = {n: i for i, n in enumerate(self.event_names)}
        rows = self.items.rows([e["item_id"] for e in events])
        codes = np.array([names.get(e["event"], -1) for e in events], np.int64)
        ok = (rows >= 0) & (codes >= 0)
        keep = [e for e, k in zip(events, ok, strict=True) if k]
        tail = EventTail(rows[ok], codes[ok].astype(np.int16), np.array([e["ts"] for e in keep], np.int64),
                         np.array([np.nan if e.get("dwell_s") is None else e["dwell_s"] for e in keep], np.float32))
        return tail, int((~ok).sum())

    def candidates_live(self, user: int | str | None, fresh: EventTail, k: int,
                        exclude_purchased: bool) -> tuple[str | None, list, list]:
        """(fallback, item ids, scores): the user tower run on the user's stored events followed by ``fresh``
        ones, as of the last one's time; without fresh events, the stored answer (:meth:`candidates`)."""
        if len(fresh) == 0:
            return self.candidates(user, k, exclude_purchased)
        row = self.users.row(user)
        static = self.blank_static if row is None else {n: v[row: row + 1] for n, v in self.user_static.items()}
        stored = EventTail.empty() if row is None else self.tails.of(row)
        x = self.live.inputs(static, [stored.then(fresh)])
        vecs, hist = states_from_inputs(self.model.model, x, IndexVectors(self.index))  # [1, K, D]
        exclude = None
        if exclude_purchased:  # the stored purchases and the fresh conversions (conversion roles come first)
            conv = fresh.events < len(self.live.config.roles.conversions)
            exclude = np.unique(np.concatenate([self._purchased(row), fresh.rows[conv]]))
        return self._answer(vecs[0], *hist.of(0), k, exclude)

    def with_items(self, items: list[dict[str, Any]]) -> tuple[Served, list[str]]:
        """A new Served whose index also holds ``items`` (dicts: item_id and features), embedded from their
        features by the item tower; and the fields it did not use. A DataError names the first bad field."""
        vocab = TowerVocab.from_state(self.model.vocab["items"])
        table, ignored = items_table(items, self.manifest.item_id_type, vocab.encoders)
        ids = table.column("item_id").combine_chunks()
        new_ids = np.asarray(ids.to_pylist(), dtype=self.item_ids.dtype)
        clash = np.isin(new_ids, self.item_ids)
        if clash.any():
            raise DataError(f"new items: already in the index: {ids.filter(pa.array(clash)).to_pylist()[:5]}")
        x = vocab.encode(ids, table, "new items")
        with torch.inference_mode():
            vecs = self.model.model.embed_items(to_torch(x)).numpy()
        index = faiss.clone_index(self.index)  # copy-on-write: requests in flight keep the old index
        index.add(vecs)
        digest = hashlib.blake2b(self.added_digest.encode() + repr(new_ids.tolist()).encode() + vecs.tobytes(),
                                 digest_size=16).hexdigest()
        n = self.index.ntotal
        all_rows = np.arange(n + len(new_ids))
        lookups = {name: np.concatenate([v, x[name.removeprefix("hist_") if name != "hist_items" else "id"]])
                   for name, v in self.live.lookups.items()}  # a live history naming a new item reads these
        return replace(self, index=index, item_ids=np.concatenate([self.item_ids, new_ids]),
                       items=self.items.with_ids(new_ids.tolist(), n), live=LiveState(self.live.config, lookups),
                       popular_rows=np.concatenate([self.popular_rows, all_rows[n:]]),
                       popular_scores=np.concatenate([self.popular_scores, np.zeros(len(new_ids), np.float32)]),
                       added=self.added + len(new_ids), added_digest=digest), ignored


def _vectors(path: Path, n: int, per_row: int, dim: int) -> tuple[pa.Table, np.ndarray]:
    """The table and its vectors [n, per_row, dim]."""
    t = pq.read_table(path)
    if t.num_rows != n:
        raise ArtifactError(f"artifact {path.parent}: {path.name} has {t.num_rows} rows, the manifest says {n}")
    vec = t.column("vector").combine_chunks()
    if not pa.types.is_fixed_size_list(vec.type) or vec.type.list_size != per_row * dim:
        raise ArtifactError(f"artifact {path.parent}: {path.name} vectors are {vec.type}, the manifest says "
                            f"{per_row} x dim {dim}")
    return t, vec.values.to_numpy(zero_copy_only=False).reshape(n, per_row, dim).astype(np.float32, copy=False)


def _inputs(table: pa.Table, name: str) -> np.ndarray:
    """A tower input column ([N], or [N, W] from a fixed-size list) as a writable numpy array (torch takes it)."""
    col = table.column(name).combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        return col.values.to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size).copy()
    return col.to_numpy(zero_copy_only=False).copy()


def load_served(folder: str | Path) -> Served:
    """Load and validate an artifact folder; any inconsistency is an ArtifactError saying which."""
    folder = Path(folder)
    m = read_manifest(folder)
    try:
        index = faiss.read_index(str(folder / "index.faiss"))
    except RuntimeError as e:
        raise ArtifactError(f"artifact {folder}: index.faiss cannot be read ({str(e).splitlines()[0]})") from None
    if index.d != m.embedding_dim or index.ntotal != m.n_items:
        raise ArtifactError(f"artifact {folder}: index has dim {index.d} and {index.ntotal} items, the manifest says "
                            f"dim {m.embedding_dim} and {m.n_items} items")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ArtifactError(f"artifact {folder}: index metric is not inner product")
    apply_search_params(index, m.search_params)
    try:
        items_t = pq.read_table(folder / "items.parquet")
        items = items_t.column("item_id").combine_chunks()
        users_t, user_vecs = _vectors(folder / "users.parquet", m.n_users, m.interests, m.embedding_dim)
        lookups = {n[3:]: np.concatenate([[0], _inputs(items_t, n)]) for n in items_t.column_names if n.startswith("in_")}
        user_static = {n[3:]: _inputs(users_t, n) for n in users_t.column_names if n.startswith("in_")}
        tail = {n: users_t.column(f"tail_{n}").combine_chunks() for n in ("rows", "events", "ts", "dwell")}
        pop = pq.read_table(folder / "popular.parquet")
        purchased = users_t.column("purchased").combine_chunks()
        history, history_score = users_t.column("history").combine_chunks(), users_t.column("history_score").combine_chunks()
    except (pa.ArrowInvalid, OSError, KeyError) as e:
        raise ArtifactError(f"artifact {folder}: a Parquet file cannot be read ({e})") from None
    if len(items) != m.n_items:
        raise ArtifactError(f"artifact {folder}: items.parquet has {len(items)} rows, the manifest says {m.n_items}")
    if not np.array_equal(history.offsets.to_numpy(), history_score.offsets.to_numpy()):
        raise ArtifactError(f"artifact {folder}: users.parquet history and history_score do not line up")
    item_ids = items.to_numpy(zero_copy_only=False)
    pop_rows = pc.index_in(pop.column("item_id"), value_set=items).to_numpy(zero_copy_only=False).astype(np.int64)
    # The fallback answers any k up to the catalogue: popular items first, then the rest in catalogue order.
    rest = np.setdiff1d(np.arange(m.n_items), pop_rows, assume_unique=False)
    pop_scores = np.concatenate([pop.column("score").to_numpy().astype(np.float32), np.zeros(len(rest), np.float32)])
    try:
        trained = load_trained(folder / "model.pt")
    except CheckpointError as e:
        raise ArtifactError(f"artifact {folder}: model.pt: {e}") from None
    if trained.model.embedding_dim != m.embedding_dim or trained.model.interests != m.interests:
        raise ArtifactError(f"artifact {folder}: model.pt embeds dim {trained.model.embedding_dim} with "
                            f"{trained.model.interests} interest(s), the manifest says dim {m.embedding_dim} with "
                            f"{m.interests}")
    config = trained.config
    item_vocab = TowerVocab.from_state(trained.vocab["items"])
    want = {"hist_items", *(f"hist_{f}" for f in history_features(item_vocab, config.history))}
    if set(lookups) != want:
        raise ArtifactError(f"artifact {folder}: items.parquet holds history inputs {sorted(lookups)}, its model "
                            f"reads {sorted(want)}")
    user_vocab = TowerVocab.from_state(trained.vocab["users"])
    blank = blank_user(user_vocab)
    tails = Tails(tail["rows"].offsets.to_numpy().astype(np.int64), tail["rows"].values.to_numpy(),
                  tail["events"].values.to_numpy(), tail["ts"].values.to_numpy(),
                  tail["dwell"].values.to_numpy(zero_copy_only=False))
    served = Served(
        path=folder, manifest=m, index=index, item_ids=item_ids, items=IdLookup(items, m.item_id_type),
        live=LiveState(config, lookups), tails=tails, user_static=user_static, blank_static=blank,
        users=IdLookup(users_t.column("user_id").combine_chunks(), m.user_id_type), user_vecs=user_vecs,
        purchased_offsets=purchased.offsets.to_numpy(), purchased_rows=purchased.values.to_numpy(),
        history_offsets=history.offsets.to_numpy(), history_rows=history.values.to_numpy(),
        history_scores=history_score.values.to_numpy(),
        popular_rows=np.concatenate([pop_rows, rest]), popular_scores=pop_scores, model=trained,
    )
    # Parquet decoding leaves freed buffers in pyarrow's allocator, which the service would keep resident; the
    # decoded tables go first (combine_chunks copied their columns), then the pool gives the memory back.
    del users_t, items_t, pop, purchased, history, history_score, tail
    pa.default_memory_pool().release_unused()
    log.info("serve: loaded %s (%s): %d items, %d users, recall check %s", folder, m.model_version, m.n_items,
             m.n_users, m.recall_check)
    return served
