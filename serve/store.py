"""A loaded, validated artifact: immutable, so a request that took it sees one version from start to end.

Swapping versions or adding items builds a new ``Served`` and replaces the reference in one assignment.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from index.artifact import ArtifactError, Manifest, read_manifest
from index.faiss_index import apply_search_params, isin_few, merge_answer
from retrieval.contract import DataError

# torch, Lightning and the model are imported only for embedding new items (Served.model, with_items; the app
# loads it with the artifact when its admin endpoints are on): the answering path needs FAISS and numpy alone,
# and a service without admin stays some 300 MB lighter.

log = logging.getLogger(__name__)


class IdLookup:
    """Raw id string from a request -> row, for ids typed int (sorted array) or str (dict)."""

    def __init__(self, ids: pa.Array, id_type: str):
        self.id_type = id_type
        if id_type == "int":
            self._sorted = ids.to_numpy()
            if len(self._sorted) > 1 and not (np.diff(self._sorted) > 0).all():
                raise ArtifactError("artifact: user ids are not sorted and unique")
        else:
            self._dict = {v: i for i, v in enumerate(ids.to_pylist())}

    def parse(self, raw: str) -> int | str | None:
        """The id as typed in the data, or None when it cannot be one (so it is unknown)."""
        if self.id_type == "str":
            return raw
        try:
            v = int(raw)
        except ValueError:
            return None
        return v if -(2**63) <= v < 2**63 else None

    def row(self, value: int | str | None) -> int | None:
        if value is None:
            return None
        if self.id_type == "str":
            return self._dict.get(value)
        i = int(np.searchsorted(self._sorted, value))
        return i if i < len(self._sorted) and self._sorted[i] == value else None


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
    popular_rows: np.ndarray  # [P] best first
    popular_scores: np.ndarray  # [P]
    added: int = 0  # items added since load (no retraining)

    @property
    def model_version(self) -> str:
        return self.manifest.model_version

    def item_id_list(self, rows: np.ndarray) -> list[Any]:
        return self.item_ids[rows].tolist()

    def candidates(self, user: int | str | None, k: int, exclude_purchased: bool) -> tuple[str | None, list, list]:
        """(fallback, item ids, scores) for one user; unknown users get conversion popularity."""
        row = self.users.row(user)
        if row is None:
            return "popular", self.item_id_list(self.popular_rows[:k]), self.popular_scores[:k].tolist()
        bought = self.purchased_rows[self.purchased_offsets[row]: self.purchased_offsets[row + 1]]
        lo, hi = self.history_offsets[row], self.history_offsets[row + 1]
        hist_rows, hist_scores = self.history_rows[lo:hi], self.history_scores[lo:hi]
        # Enough results that, after dropping history items (scored apart) and purchases, k remain.
        want = min(k + (len(bought) if exclude_purchased else 0) + len(hist_rows), self.index.ntotal)
        faiss.omp_set_num_threads(1)  # on the calling thread (the event loop): one query gains nothing from OpenMP, and loses
        scores, rows = self.index.search(self.user_vecs[row], want)  # [K, want]
        rows, scores = merge_answer(rows, scores, hist_rows, hist_scores, want)
        if exclude_purchased and len(bought):
            keep = ~isin_few(rows, bought)
            rows, scores = rows[keep], scores[keep]
        rows, scores = rows[:k], scores[:k]
        return None, self.item_id_list(rows), scores.tolist()

    @cached_property
    def model(self):  # retrieval.checkpoint.Trained: embeds added items (loaded on first use)
        from retrieval.checkpoint import CheckpointError, load_trained

        try:
            return load_trained(self.path / "model.pt")
        except CheckpointError as e:
            raise ArtifactError(str(e)) from None

    def with_items(self, table: pa.Table) -> Served:
        """A new Served whose index also holds ``table``'s items, embedded from their features."""
        import torch

        from retrieval.data import to_torch
        from retrieval.vocab import TowerVocab

        trained = self.model
        key = table.column("item_id")
        if key.null_count:
            raise DataError("new items: item_id must be set on every item")
        want = pa.int64() if self.manifest.item_id_type == "int" else pa.string()
        try:
            ids = pc.cast(key, want).combine_chunks()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DataError(f"new items: item_id must be {self.manifest.item_id_type}") from None
        if len(pc.unique(ids)) != len(ids):
            raise DataError("new items: an item_id appears twice")
        new_ids = np.asarray(ids.to_pylist(), dtype=self.item_ids.dtype)
        clash = np.isin(new_ids, self.item_ids)
        if clash.any():
            raise DataError(f"new items: already in the index: {ids.filter(pa.array(clash)).to_pylist()[:5]}")
        vocab = TowerVocab.from_state(trained.vocab["items"])
        missing = [e["name"] for e in vocab.encoders if e["name"] not in table.column_names]
        if missing:
            raise DataError(f"new items: missing feature(s) {missing}")
        x = vocab.encode(ids, table.set_column(table.column_names.index("item_id"), "item_id", ids), "new items")
        with torch.inference_mode():
            vecs = trained.model.embed_items(to_torch(x)).numpy()
        index = faiss.clone_index(self.index)  # copy-on-write: requests in flight keep the old index
        index.add(vecs)
        out = replace(self, index=index, item_ids=np.concatenate([self.item_ids, new_ids]), added=self.added + len(ids))
        out.__dict__["model"] = trained  # share the loaded model with the new version
        return out


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
        items = pq.read_table(folder / "items.parquet", columns=["item_id"]).column("item_id").combine_chunks()
        users_t, user_vecs = _vectors(folder / "users.parquet", m.n_users, m.interests, m.embedding_dim)
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
    pop_rows = pc.index_in(pop.column("item_id"), value_set=items).to_numpy(zero_copy_only=False)
    served = Served(
        path=folder, manifest=m, index=index, item_ids=item_ids,
        users=IdLookup(users_t.column("user_id").combine_chunks(), m.user_id_type), user_vecs=user_vecs,
        purchased_offsets=purchased.offsets.to_numpy(), purchased_rows=purchased.values.to_numpy(),
        history_offsets=history.offsets.to_numpy(), history_rows=history.values.to_numpy(),
        history_scores=history_score.values.to_numpy(),
        popular_rows=pop_rows.astype(np.int64), popular_scores=pop.column("score").to_numpy().astype(np.float32),
    )
    # Parquet decoding leaves freed buffers in pyarrow's allocator: on 1M items and users that is ~700 MB of
    # resident memory the service would otherwise keep (measured in bench/serve_load.py). The decoded tables go
    # first: combine_chunks copied their columns, and with four vectors per user the table's own chunks were
    # another 0.8 GB still held when the pool was released (resident 1.57x the artifact, bench/serve_load.py).
    del users_t, pop, purchased, history, history_score
    pa.default_memory_pool().release_unused()
    log.info("serve: loaded %s (%s): %d items, %d users, recall check %s", folder, m.model_version, m.n_items,
             m.n_users, m.recall_check)
    return served
