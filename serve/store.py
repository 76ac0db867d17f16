"""A loaded, validated artifact (serve/load.py reads one): immutable, so a request that took it sees one version
from start to end.

Swapping versions or adding items builds a new ``Served`` and replaces the reference in one assignment.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import faiss
import numpy as np
import pyarrow as pa
import torch

from index.artifact import Manifest
from index.faiss_index import onehot_tail, search, stored_vectors, to_gpu
from retrieval.answer import isin_few, search_width, served_answer
from retrieval.calibration import Platt
from retrieval.checkpoint import Trained
from retrieval.contract import DataError
from retrieval.embed import states_from_inputs_heads
from retrieval.heads import SERVED
from retrieval.inference import to_torch
from retrieval.live import EventTail, LiveState, Tails
from retrieval.utility import (
    PROBABILITY,
    SCALES,
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

    @functools.cached_property
    def onehot(self) -> dict[str, tuple[int, np.ndarray] | None]:
        """Per head, the one-hot block closing its exact index's vectors (the category prior's) as (its first
        column, each row's code), searched as a gather (index.faiss_index.search); None without one. Cached like
        :attr:`vectors`: the indexes are never added to."""
        return {h: onehot_tail(stored_vectors(ix)) if type(ix) is faiss.IndexFlatIP else None
                for h, ix in self.indexes.items()}

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
        if scale not in SCALES:
            raise UtilityError(f"utility_scale: '{scale}'; expected one of {list(SCALES)}")
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
        """One user's answer; unknown users get conversion popularity. utility: a checked one (:meth:`utility`)."""
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
            scores, rows = search(self.searcher(head), state.vecs[head], m, self.onehot[head])  # [K, m]
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
            scores, rows = search(self.searcher(SERVED), state.vecs[SERVED], want, self.onehot[SERVED])  # [K, want]
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
            xt = to_torch(x)
            raw = net.item_tower(xt)
            vecs = {h: net.served_item(raw[h], xt).numpy() for h in self.heads}
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
        served = replace(self, indexes=indexes, gpu=gpu, joint=joint,
                     gpu_joint=None if self.gpu_joint is None or joint is None else to_gpu(joint)[0],
                     item_ids=np.concatenate([self.item_ids, new_ids]),
                     items=self.items.with_ids(new_ids.tolist(), n), live=LiveState(self.live.config, lookups),
                     popular_rows=np.concatenate([self.popular_rows, all_rows[n:]]),
                     popular_scores=np.concatenate([self.popular_scores, np.zeros(len(new_ids), np.float32)]),
                     added=self.added + len(new_ids), added_digest=digest)
        served.onehot  # noqa: B018 (found here, as at load, not by the first request after the add)
        return served, ignored
