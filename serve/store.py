"""A loaded, validated artifact: immutable, so a request that took it sees one version from start to end.

Swapping versions or adding items builds a new ``Served`` and replaces the reference in one assignment.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from index.artifact import JOINT_INDEX, ArtifactError, Manifest, head_column, read_manifest
from index.faiss_index import apply_search_params, search, stored_vectors, to_gpu
from retrieval.answer import isin_few, search_width, served_answer
from retrieval.calibration import Platt
from retrieval.checkpoint import CheckpointError, Trained, load_trained
from retrieval.contract import DataError
from retrieval.corpus import history_features
from retrieval.embed import states_from_inputs_heads
from retrieval.heads import SERVED
from retrieval.inference import to_torch
from retrieval.live import EventTail, LiveState, Tails, blank_user
from retrieval.utility import (
    PROBABILITY,
    SCORE,
    Utility,
    UtilityError,
    check_weights,
    parse_utility,
    raw_score,
    utility_answer,
)
from retrieval.vocab import TowerVocab
from serve.ids import IdLookup
from serve.new_items import items_table

log = logging.getLogger(__name__)

class IndexVectors:
    """Item vectors by catalogue row, read back from the index (no second copy in memory): what scores a live
    user's history items. Exact for Flat and HNSW; quantised indexes give their reconstruction."""

    def __init__(self, index: faiss.Index):
        self.index = index
        self.stored = stored_vectors(index)  # [N, D] a view of a Flat or HNSW index's vectors: a gather, no call
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:  # once per index, not per request
            ivf.make_direct_map()

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        if self.stored is not None:
            return np.take(self.stored, rows, axis=0)  # a few microseconds less than view[rows] or a faiss call
        if len(rows) == 0:
            return np.zeros((0, self.index.d), np.float32)
        return self.index.reconstruct_batch(rows)


class Answer(NamedTuple):
    """One user's answer: fallback (None, or "popular"), item ids and scores best first (the utility's value on
    a utility answer), the candidates' calibrated probabilities per head (``p_<head>``: a list per head, in
    candidate order) and, when asked, their raw per-head scores."""

    fallback: str | None
    ids: list
    scores: list
    probs: dict[str, list] = {}  # noqa: RUF012 (a NamedTuple default, never mutated)
    raw: dict[str, list] | None = None
    certified: bool = True  # a utility answer the threshold proved (retrieval/utility.py); False: widening capped


@dataclass(frozen=True)
class UserState:
    """What scores one user, per head: vectors [K, D] and history items' full scores (rows shared)."""

    vecs: dict[str, np.ndarray]
    hist_rows: np.ndarray
    hist_scores: dict[str, np.ndarray]


@dataclass(frozen=True)
class Served:
    path: Path
    manifest: Manifest
    indexes: dict[str, faiss.Index]  # per head (the served head's is ``index``), rows = catalogue rows
    item_ids: np.ndarray  # [N] row -> item id (int64, or object array of str)
    users: IdLookup
    user_vecs: dict[str, np.ndarray]  # per head [U, K, D] float32: K interest vectors per user
    purchased_offsets: np.ndarray  # [U + 1] into purchased_rows
    purchased_rows: np.ndarray  # catalogue rows each user converted on
    history_offsets: np.ndarray  # [U + 1] into history_rows / history_scores
    history_rows: np.ndarray  # catalogue rows in each user's history bag
    history_scores: dict[str, np.ndarray]  # per head, their full scores (inner product + the head's repeat term)
    popular_rows: np.ndarray  # [N] every catalogue row: by conversions, then the rest in catalogue order
    popular_scores: np.ndarray  # [N] share of conversions (0 for items without any)
    model: Trained  # the towers and vocabularies (model.pt): embeds added items and live users
    items: IdLookup  # item id -> catalogue row (added items too)
    live: LiveState  # what turns raw events into user tower inputs (the training rules, the items' lookups)
    tails: Tails  # per user row, their last events (what live events follow)
    user_static: dict[str, np.ndarray]  # per user row, the user tower's own inputs (ID row, features)
    blank_static: dict[str, np.ndarray]  # the same for a user the model never saw: [1, ...], all missing
    calibration: dict[str, Platt]  # the calibrated heads: p_<head> = calibration[head](score)
    gpu: dict[str, faiss.Index] = field(default_factory=dict)  # per head, a GPU copy that searches (--gpu)
    # The heads' item vectors side by side ([N, H * D], manifest ``joint``; one user vector per head): a utility
    # on raw scores in one search. None: such a utility searches every weighted head (retrieval/utility.py).
    joint: faiss.Index | None = None
    gpu_joint: faiss.Index | None = None  # its GPU copy (--gpu)
    added: int = 0  # items added since load (no retraining; not persisted)
    added_digest: str = ""  # a hash chained over every add, so two catalogues never share a version string

    @property
    def index(self) -> faiss.Index:
        """The served (conversion) head's index: what the default answer searches."""
        return self.indexes[SERVED]

    @functools.cached_property
    def vectors(self) -> dict[str, IndexVectors]:
        """Per head, its item vectors by catalogue row, read from its index. Cached on this Served: its indexes
        are never added to (:meth:`with_items` makes a new Served with cloned ones)."""
        return {h: IndexVectors(ix) for h, ix in self.indexes.items()}

    @property
    def heads(self) -> list[str]:
        return list(self.indexes)

    @property
    def model_version(self) -> str:
        """The artifact's version; after adds, with their count and digest: items added to one process are not
        in another's catalogue, and the version says so."""
        base = self.manifest.model_version
        return base if not self.added else f"{base}+{self.added}items.{self.added_digest[:8]}"

    def searcher(self, head: str) -> faiss.Index:
        """What searches a head: its GPU copy with --gpu, else the index itself."""
        g = self.gpu.get(head)
        return self.indexes[head] if g is None else g

    def item_id_list(self, rows: np.ndarray) -> list[Any]:
        return self.item_ids[rows].tolist()

    def utility(self, spec: str | dict[str, float], scale: str = PROBABILITY) -> Utility:
        """A checked utility (``head:w,...``, a preset's name, or {head: w}) on ``scale``; a UtilityError names
        what is wrong, on the probability scale a head without calibration too (its probability is what a
        weight weighs there)."""
        if scale not in (PROBABILITY, SCORE):
            raise UtilityError(f"utility_scale: '{scale}'; expected {PROBABILITY} or {SCORE}")
        weights = (parse_utility(spec, self.heads, self.manifest.utility_presets) if isinstance(spec, str)
                   else check_weights(spec, self.heads))
        uncalibrated = [h for h in weights if h not in self.calibration]
        if scale == PROBABILITY and uncalibrated:
            raise UtilityError(f"utility: head(s) {uncalibrated} have no calibration in artifact "
                               f"{self.manifest.version} (no validation window when it was built); "
                               f"utility_scale=score weighs raw scores")
        return Utility(weights, scale)

    def candidates(self, user: int | str | None, k: int, exclude_purchased: bool,
                   utility: Utility | None = None, with_scores: bool = False) -> Answer:
        """One user's answer; unknown users get conversion popularity. utility: checked weights (:meth:`utility`)."""
        row = self.users.row(user)
        if row is None:
            return Answer("popular", self.item_id_list(self.popular_rows[:k]), self.popular_scores[:k].tolist())
        lo, hi = self.history_offsets[row], self.history_offsets[row + 1]
        heads = self.heads_for(utility, with_scores)
        state = UserState({h: self.user_vecs[h][row] for h in heads}, self.history_rows[lo:hi],
                          {h: self.history_scores[h][lo:hi] for h in heads})
        return self._answer(state, k, self._purchased(row) if exclude_purchased else None, utility, with_scores)

    def _purchased(self, row: int | None) -> np.ndarray:
        """Catalogue rows a known user converted on (none for a new user)."""
        if row is None:
            return np.zeros(0, np.int64)
        return self.purchased_rows[self.purchased_offsets[row]: self.purchased_offsets[row + 1]].astype(np.int64)

    def _search(self, state: UserState) -> Callable[[str, int], tuple[np.ndarray, np.ndarray]]:
        def head_search(head: str, m: int) -> tuple[np.ndarray, np.ndarray]:
            scores, rows = search(self.searcher(head), state.vecs[head], m)  # [K, m]
            return rows, scores
        return head_search

    def _exact(self, state: UserState) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
        """rows [n] -> {head: full served score [n]}: the best interest's inner product, or a history item's
        score with the repeat term."""
        def exact(rows: np.ndarray) -> dict[str, np.ndarray]:
            hist = isin_few(rows, state.hist_rows)
            order = np.argsort(state.hist_rows, kind="stable")
            where = np.searchsorted(state.hist_rows[order], rows[hist])
            out = {}
            for h, vecs in state.vecs.items():
                s = (self.vectors[h][rows] @ vecs.T).max(axis=1, initial=-np.inf)  # [n]
                s[hist] = state.hist_scores[h][order][where]
                out[h] = s.astype(np.float32)
            return out
        return exact

    def _answer(self, state: UserState, k: int, exclude: np.ndarray | None, utility: Utility | None,
                with_scores: bool) -> Answer:
        """The served top ``k`` of a user state less ``exclude``: the served head's (:func:`served_answer`), or the
        utility's: on raw scores from the joint index where the artifact has one (:meth:`_joint_answer`), else
        from every weighted head's search (:func:`utility_answer`)."""
        faiss.omp_set_num_threads(1)  # on the event loop's thread: one query gains nothing from OpenMP threads
        per_head: dict[str, np.ndarray] = {}
        certified = True
        if utility is None:
            want = search_width(k, len(state.hist_rows), 0 if exclude is None else len(exclude), self.index.ntotal)
            scores, rows = search(self.searcher(SERVED), state.vecs[SERVED], want)  # [K, want]
            rows, scores = served_answer(rows, scores, state.hist_rows, state.hist_scores[SERVED], k, exclude)
            per_head = {**self._exact(state)(rows), SERVED: scores} if with_scores else {SERVED: scores}
        elif utility.scale == SCORE and self.joint is not None:
            rows, scores = self._joint_answer(state, k, exclude, utility.weights)
            per_head = self._exact(state)(rows)
        else:
            calib = self.calibration if utility.scale == PROBABILITY else dict.fromkeys(self.heads, raw_score)
            ua = utility_answer(self._search(state), self._exact(state), utility.weights, calib,
                                state.hist_rows, k, self.index.ntotal, exclude)
            rows, scores, per_head, certified = ua
        probs = {h: self.calibration[h](s).tolist() for h, s in per_head.items() if h in self.calibration}
        raw = {h: s.tolist() for h, s in per_head.items()} if with_scores else None
        return Answer(None, self.item_id_list(rows), scores.tolist(), probs, raw, certified)

    def _joint_answer(self, state: UserState, k: int, exclude: np.ndarray | None,
                      weights: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
        """A utility on raw scores with one user vector per head: one search of the joint index for the query
        [w_1 u_1, ..., w_H u_H] ([1, H * D], weight 0 for a head the utility leaves out), the history items merged
        in with their full scores weighted the same way, as the default answer merges them (served_answer)."""
        query = np.concatenate([weights.get(h, 0.0) * state.vecs[h][0] for h in self.heads])[None]  # [1, H * D]
        hist = sum(w * state.hist_scores[h].astype(np.float64) for h, w in weights.items())
        want = search_width(k, len(state.hist_rows), 0 if exclude is None else len(exclude), self.joint.ntotal)
        index = self.joint if self.gpu_joint is None else self.gpu_joint
        scores, rows = search(index, query.astype(np.float32), want)  # [1, want]
        return served_answer(rows, scores, state.hist_rows, np.asarray(hist, np.float32), k, exclude)

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

    def heads_for(self, utility: Utility | None, with_scores: bool) -> list[str]:
        """The heads an answer reads: every head for a utility or per-head scores, else the served one."""
        return self.heads if utility or with_scores else [SERVED]

    def live_states(self, users: list[int | str | None], fresh: list[EventTail], heads: list[str]) -> list[UserState]:
        """The states of a batch of users (None or an id this artifact does not know: a new user) from their
        stored events followed by ``fresh`` ones (each non-empty), as of each one's last event: one bagging pass
        and one run of the user tower for the batch ([B] users)."""
        rows = [self.users.row(u) for u in users]
        static = {n: np.concatenate([blank if r is None else self.user_static[n][r: r + 1] for r in rows])
                  for n, blank in self.blank_static.items()}
        tails = [(EventTail.empty() if r is None else self.tails.of(r)).then(f) for r, f in zip(rows, fresh, strict=True)]
        x = self.live.inputs(static, tails)
        states = states_from_inputs_heads(self.model.model, x, {h: self.vectors[h] for h in heads})
        return [UserState({h: v[i] for h, (v, _) in states.items()}, states[SERVED][1].of(i)[0],
                          {h: hist.of(i)[1] for h, (_, hist) in states.items()}) for i in range(len(users))]

    def answer_live(self, user: int | str | None, fresh: EventTail, state: UserState, k: int,
                    exclude_purchased: bool, utility: Utility | None = None,
                    with_scores: bool = False) -> Answer:
        """The answer from a live user's state (:meth:`live_states`); exclude_purchased drops the stored
        purchases and the fresh conversions (conversion roles come first)."""
        exclude = None
        if exclude_purchased:
            conv = fresh.events < len(self.live.config.roles.conversions)
            exclude = np.unique(np.concatenate([self._purchased(self.users.row(user)), fresh.rows[conv]]))
        return self._answer(state, k, exclude, utility, with_scores)

    def candidates_live(self, user: int | str | None, fresh: EventTail, k: int, exclude_purchased: bool,
                        utility: Utility | None = None, with_scores: bool = False) -> Answer:
        """The user tower run on the user's stored events followed by ``fresh`` ones, as of the last one's time;
        without fresh events, the stored answer (:meth:`candidates`). One user alone: the service batches
        concurrent requests (serve/batcher.py) through :meth:`live_states` and :meth:`answer_live`."""
        if len(fresh) == 0:
            return self.candidates(user, k, exclude_purchased, utility, with_scores)
        state, = self.live_states([user], [fresh], self.heads_for(utility, with_scores))
        return self.answer_live(user, fresh, state, k, exclude_purchased, utility, with_scores)

    def with_items(self, items: list[dict[str, Any]]) -> tuple[Served, list[str]]:
        """A new Served whose indexes also hold ``items`` (dicts: item_id and features), embedded from their
        features by the item tower (every head); and the fields it did not use. A DataError names the first bad
        field."""
        vocab = TowerVocab.from_state(self.model.vocab["items"])
        table, ignored = items_table(items, self.manifest.item_id_type, vocab.encoders)
        ids = table.column("item_id").combine_chunks()
        new_ids = np.asarray(ids.to_pylist(), dtype=self.item_ids.dtype)
        clash = np.isin(new_ids, self.item_ids)
        if clash.any():
            raise DataError(f"new items: already in the index: {ids.filter(pa.array(clash)).to_pylist()[:5]}")
        x = vocab.encode(ids, table, "new items")
        net = self.model.model
        with torch.inference_mode():
            raw = net.item_tower(to_torch(x))
            vecs = {h: net.served_item(raw[h]).numpy() for h in self.heads}
        indexes = {}
        for h, ix in self.indexes.items():
            indexes[h] = faiss.clone_index(ix)  # copy-on-write: requests in flight keep the old index
            indexes[h].add(vecs[h])
        gpu = {h: to_gpu(indexes[h])[0] for h in self.gpu}  # a fresh GPU copy of each index it held
        joint = None
        if self.joint is not None:
            joint = faiss.clone_index(self.joint)
            joint.add(np.hstack([vecs[h] for h in self.heads]))
        digest = hashlib.blake2b(self.added_digest.encode() + repr(new_ids.tolist()).encode() + vecs[SERVED].tobytes(),
                                 digest_size=16).hexdigest()
        n = self.index.ntotal
        all_rows = np.arange(n + len(new_ids))
        lookups = {name: np.concatenate([v, x[name.removeprefix("hist_") if name != "hist_items" else "id"]])
                   for name, v in self.live.lookups.items()}  # a live history naming a new item reads these
        return replace(self, indexes=indexes, gpu=gpu, joint=joint,
                       gpu_joint=None if self.gpu_joint is None or joint is None else to_gpu(joint)[0],
                       item_ids=np.concatenate([self.item_ids, new_ids]),
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


def _index(folder: Path, name: str, m: Manifest, dim: int | None = None) -> faiss.Index:
    """One head's index (or the joint one, of ``dim``), checked against the manifest, with its search
    parameters."""
    dim = m.embedding_dim if dim is None else dim
    try:
        index = faiss.read_index(str(folder / name))
    except RuntimeError as e:
        raise ArtifactError(f"artifact {folder}: {name} cannot be read ({str(e).splitlines()[0]})") from None
    if index.d != dim or index.ntotal != m.n_items:
        raise ArtifactError(f"artifact {folder}: {name} has dim {index.d} and {index.ntotal} items, the manifest "
                            f"says dim {dim} and {m.n_items} items")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ArtifactError(f"artifact {folder}: {name} metric is not inner product")
    apply_search_params(index, m.search_params)
    return index


def _vector_column(t: pa.Table, name: str, folder: Path, m: Manifest) -> np.ndarray:
    """A head's user vectors [U, K, D] from its users.parquet column."""
    if name not in t.column_names:
        raise ArtifactError(f"artifact {folder}: users.parquet has no column {name} for its manifest's heads")
    vec = t.column(name).combine_chunks()
    if not pa.types.is_fixed_size_list(vec.type) or vec.type.list_size != m.interests * m.embedding_dim:
        raise ArtifactError(f"artifact {folder}: users.parquet {name} is {vec.type}, the manifest says "
                            f"{m.interests} x dim {m.embedding_dim}")
    return vec.values.to_numpy(zero_copy_only=False).reshape(len(vec), m.interests, m.embedding_dim).astype(
        np.float32, copy=False)


def _inputs(table: pa.Table, name: str) -> np.ndarray:
    """A tower input column ([N], or [N, W] from a fixed-size list) as a writable numpy array (torch takes it)."""
    col = table.column(name).combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        return col.values.to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size).copy()
    return col.to_numpy(zero_copy_only=False).copy()


def on_gpu(indexes: dict[str, faiss.Index]) -> dict[str, faiss.Index]:
    """GPU copies of the indexes that have a GPU type (Flat, IVF); one log line for those that stay on the CPU."""
    out, why = {}, {}
    for h, ix in indexes.items():
        g, reason = to_gpu(ix)
        if reason is None:
            out[h] = g
        else:
            why[h] = reason
    if why:
        log.warning("serve: --gpu: searching on the CPU for head(s) %s: %s", sorted(why), "; ".join(set(why.values())))
    return out


def load_served(folder: str | Path, gpu: bool = False) -> Served:
    """Load and validate an artifact folder; any inconsistency is an ArtifactError saying which. gpu: search
    from GPU copies of the indexes where faiss can (:func:`on_gpu`)."""
    folder = Path(folder)
    m = read_manifest(folder)
    indexes = {h: _index(folder, spec["index"], m) for h, spec in m.heads.items()}
    joint = None if m.joint is None else _index(folder, JOINT_INDEX, m, len(m.heads) * m.embedding_dim)
    try:
        items_t = pq.read_table(folder / "items.parquet")
        items = items_t.column("item_id").combine_chunks()
        users_t, user_vecs = _vectors(folder / "users.parquet", m.n_users, m.interests, m.embedding_dim)
        head_vecs = {h: user_vecs if h == SERVED else _vector_column(
            users_t, head_column("vector", h, False), folder, m) for h in m.heads}
        lookups = {n[3:]: np.concatenate([[0], _inputs(items_t, n)]) for n in items_t.column_names if n.startswith("in_")}
        user_static = {n[3:]: _inputs(users_t, n) for n in users_t.column_names if n.startswith("in_")}
        tail = {n: users_t.column(f"tail_{n}").combine_chunks() for n in ("rows", "events", "ts", "dwell")}
        pop = pq.read_table(folder / "popular.parquet")
        purchased = users_t.column("purchased").combine_chunks()
        history = users_t.column("history").combine_chunks()
        history_score = {h: users_t.column(head_column("history_score", h, h == SERVED)).combine_chunks()
                         for h in m.heads}
    except (pa.ArrowInvalid, OSError, KeyError) as e:
        raise ArtifactError(f"artifact {folder}: a Parquet file cannot be read ({e})") from None
    if len(items) != m.n_items:
        raise ArtifactError(f"artifact {folder}: items.parquet has {len(items)} rows, the manifest says {m.n_items}")
    for h, hs in history_score.items():
        if not np.array_equal(history.offsets.to_numpy(), hs.offsets.to_numpy()):
            raise ArtifactError(f"artifact {folder}: users.parquet history and its scores of head {h} do not line up")
    item_ids = items.to_numpy(zero_copy_only=False)
    pop_rows = pc.index_in(pop.column("item_id"), value_set=items).to_numpy(zero_copy_only=False).astype(np.int64)
    # The fallback answers any k up to the catalogue: popular items first, then the rest in catalogue order.
    rest = np.setdiff1d(np.arange(m.n_items), pop_rows, assume_unique=False)
    pop_scores = np.concatenate([pop.column("score").to_numpy().astype(np.float32), np.zeros(len(rest), np.float32)])
    try:
        trained = load_trained(folder / "model.pt")
    except CheckpointError as e:
        raise ArtifactError(f"artifact {folder}: model.pt: {e}") from None
    if trained.model.heads != list(m.heads):
        raise ArtifactError(f"artifact {folder}: model.pt has heads {trained.model.heads}, the manifest lists "
                            f"{list(m.heads)}")
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
    gpu_copies = on_gpu({**indexes, **({} if joint is None else {JOINT_INDEX: joint})}) if gpu else {}
    gpu_joint = gpu_copies.pop(JOINT_INDEX, None)  # the rest are the heads'
    served = Served(
        path=folder, manifest=m, indexes=indexes, item_ids=item_ids, items=IdLookup(items, m.item_id_type),
        live=LiveState(config, lookups), tails=tails, user_static=user_static, blank_static=blank,
        users=IdLookup(users_t.column("user_id").combine_chunks(), m.user_id_type), user_vecs=head_vecs,
        purchased_offsets=purchased.offsets.to_numpy(), purchased_rows=purchased.values.to_numpy(),
        history_offsets=history.offsets.to_numpy(), history_rows=history.values.to_numpy(),
        history_scores={h: hs.values.to_numpy() for h, hs in history_score.items()},
        calibration={h: Platt.from_dict(spec["calibration"]) for h, spec in m.heads.items() if spec["calibration"]},
        popular_rows=np.concatenate([pop_rows, rest]), popular_scores=pop_scores, model=trained,
        gpu=gpu_copies, joint=joint, gpu_joint=gpu_joint,
    )
    # Parquet decoding leaves freed buffers in pyarrow's allocator, which the service would keep resident; the
    # decoded tables go first (combine_chunks copied their columns), then the pool gives the memory back.
    del users_t, items_t, pop, purchased, history, history_score, tail
    pa.default_memory_pool().release_unused()
    log.info("serve: loaded %s (%s): %d items, %d users, recall check %s", folder, m.model_version, m.n_items,
             m.n_users, m.recall_check)
    return served
