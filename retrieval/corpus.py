"""The corpus: events, the item catalogue and both towers' vocabularies, as numpy arrays that batch fast.

Shared by training (examples, validation targets) and the index job (every item, every known user), so a
user is embedded from the same history bag in both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from retrieval import features
from retrieval.contract import DataError, check_feature_table, open_table
from retrieval.events import CONVERSION, ENGAGEMENT, DwellConfig, EventRoles, load_events
from retrieval.history import event_weights, gather_history, merge_repeats, positions_before, user_bounds
from retrieval.split import Split, temporal_split
from retrieval.vocab import TowerVocab

log = logging.getLogger(__name__)
DAY = 86_400.0


@dataclass(frozen=True)
class DwellWeighting:
    """How dwell turns into an engagement weight (retrieval.history.dwell_weight)."""

    kind: str = "log"  # log: min(1, log1p(t) / log1p(t_max)); step: 1 if t >= threshold; none: 1
    t_max: float = 120.0  # seconds at which the log weighting reaches 1
    threshold: float = 10.0  # seconds for the step weighting


@dataclass(frozen=True)
class HistoryConfig:
    """The user tower's history bag."""

    length: int = 50  # most recent events kept
    half_life_days: float = 14.0  # recency decay of an event's weight in the bag (0 = none)
    previous_sessions_only: bool = True  # training examples see only earlier sessions, as a served user does
    item_features: bool = True  # also bag the history items' categorical/hashed features (tables shared with the
    # item tower): items with no learned ID (launched after training) still say what the user looks at


@dataclass(frozen=True)
class SplitConfig:
    """Temporal split (retrieval.split.temporal_split)."""

    val_fraction: float = 0.1  # share of the time span, before the test window, for validation
    test_fraction: float = 0.1  # share of the time span at the end for test
    val_start: int | None = None  # explicit epoch seconds instead of val_fraction
    test_start: int | None = None  # explicit epoch seconds instead of test_fraction


@dataclass
class EvalSet:
    """Users with conversions in a window, their state at its start and their targets (catalogue rows)."""

    users: np.ndarray  # [U] user codes
    end: np.ndarray  # [U] history end position (events before the window)
    now: int  # window start
    conversions: list[np.ndarray] = field(default_factory=list)  # per user, distinct catalogue rows bought
    engagement: list[np.ndarray] = field(default_factory=list)  # per user, distinct rows engaged with


def read_feature_table(path: str | None, key: str, specs: list[dict[str, Any]], what: str) -> pa.Table | None:
    if path is None:
        if specs:
            raise DataError(f"config: {what} features are configured but no {what} table is given")
        return None
    dataset = open_table(path, what)
    cols = [s["name"] for s in specs]
    check_feature_table(dataset, path, key, cols, what)
    try:
        table = dataset.to_table(columns=[key, *cols])
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{what}: {path}: could not read ({e})") from None
    k = table.column(key)
    if k.null_count:
        raise DataError(f"{what}: {path}: column '{key}' has {k.null_count} null id(s)")
    if len(pc.unique(k)) != len(k):
        raise DataError(f"{what}: {path}: column '{key}' has duplicate ids; one row per {key} is expected")
    return table


class Corpus:
    def __init__(self, events: str, items: str | None, users: str | None, roles: EventRoles,
                 sessions: DwellConfig, dwell_weighting: DwellWeighting, history: HistoryConfig,
                 split: SplitConfig | None, item_features: list[dict[str, Any]], user_features: list[dict[str, Any]],
                 state: dict[str, Any] | None = None):
        """Load and encode. state: vocabularies from a checkpoint (index job); None fits them on training data."""
        self.history = history
        item_specs, user_specs = features.parse_specs(item_features, "item"), features.parse_specs(user_features, "user")
        ev = self.events = load_events(events, roles, sessions)
        items_table = read_feature_table(items, "item_id", item_specs, "items")
        users_table = read_feature_table(users, "user_id", user_specs, "users")
        self.split: Split | None = None
        if split is not None:
            self.split = temporal_split(ev.ts, split.val_fraction, split.test_fraction, split.val_start, split.test_start)
        self.window = self.split.window(ev.ts) if self.split else np.zeros(len(ev), np.int8)

        cat = ev.item_vocab if items_table is None else pa.concat_arrays(
            [ev.item_vocab, _cast_ids(items_table.column("item_id").combine_chunks(), ev.item_vocab.type, items)])
        cat = pc.unique(cat)
        self.catalogue: pa.Array = cat.take(pc.sort_indices(cat))
        if state is None:
            train = self.window == 0
            if not train.any():
                raise DataError(f"events: {events}: no event falls in the training window")
            self.item_vocab = _fit_vocab("item_id", ev.item_vocab, ev.item[train], items_table, item_specs, items)
            self.user_vocab = _fit_vocab("user_id", ev.user_vocab, ev.user[train], users_table, user_specs, users)
        else:
            self.item_vocab = TowerVocab.from_state(state["items"])
            self.user_vocab = TowerVocab.from_state(state["users"])
        self.item_inputs = self.item_vocab.encode(self.catalogue, items_table, str(items))  # catalogue rows
        self.user_inputs = self.user_vocab.encode(ev.user_vocab, users_table, str(users))  # user codes
        self.event_row = pc.index_in(ev.item_vocab, value_set=self.catalogue).to_numpy().astype(np.int64)[ev.item]
        # History bags gather catalogue rows (+1; 0 = padding) and read ids and features through these lookups.
        self.history_features = [e["name"] for e in self.item_vocab.encoders
                                 if history.item_features and e["kind"] in ("categorical", "hashed")]
        self._hist_row = self.event_row + 1  # [E] built once: per batch, on 11M events, it cost 10 of 13 ms
        self._hist_lookup = {"hist_items": np.concatenate([[0], self.item_inputs["id"]]),
                             **{f"hist_{k}": np.concatenate([[0], self.item_inputs[k]]) for k in self.history_features}}
        self.weight = event_weights(ev, dwell_weighting.kind, dwell_weighting.t_max, dwell_weighting.threshold)
        self.user_start, self.user_end = user_bounds(ev.user, len(ev.user_vocab))
        self.session_first = np.searchsorted(ev.session, ev.session, side="left")

    @property
    def n_items(self) -> int:
        return len(self.catalogue)

    def state(self) -> dict[str, Any]:
        return {"items": self.item_vocab.state(), "users": self.user_vocab.state()}

    def item_counts(self, kind: int, before: int | None = None) -> np.ndarray:
        """[N] per catalogue item: its events of ``kind`` (CONVERSION or ENGAGEMENT), those before ``before`` if given."""
        m = self.events.kind == kind
        if before is not None:
            m &= self.events.ts < before
        return np.bincount(self.event_row[m], minlength=self.n_items)

    def item_batch(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Item tower inputs of catalogue rows [B]."""
        return {k: v[rows] for k, v in self.item_inputs.items()}

    def user_batch(self, users: np.ndarray, end: np.ndarray, now: np.ndarray) -> dict[str, np.ndarray]:
        """User tower inputs of user codes [B] with history events [user_start, end) seen at time ``now`` [B]:
        the last ``history.length`` events, each distinct item once with its events' summed weight."""
        rows, weights = gather_history(end, self.user_start[users], self._hist_row, self.weight, self.events.ts,
                                       now, self.history.length, self.history.half_life_days * DAY)  # [B, L]
        rows, weights = merge_repeats(rows, weights)  # [B, W <= L]: an item's events in one slot, same bag
        out = {k: v[users] for k, v in self.user_inputs.items()}
        for k, lookup in self._hist_lookup.items():
            out[k] = lookup[rows]  # [B, L], 0 = padding or missing
        out["hist_weights"] = weights
        out["hist_rows"] = rows  # [B, L] catalogue row + 1, 0 = padding: the repeat term's keys
        return out

    def examples(self, window: int = 0) -> np.ndarray:
        """Event positions of positives in a window (0 train): every conversion and weighted engagement."""
        return np.flatnonzero((self.window == window) & (self.weight > 0))

    def example_batch(self, pos: np.ndarray) -> dict[str, np.ndarray]:
        """A training batch for event positions [B]: user state before the event, the event's item."""
        ev = self.events
        end = self.session_first[pos] if self.history.previous_sessions_only else pos
        users = ev.user[pos]
        return {
            "user": self.user_batch(users, end, ev.ts[pos]),
            "pos": self.item_batch(self.event_row[pos]),
            "weight": self.weight[pos],
            "is_conv": ev.kind[pos] == CONVERSION,
            "user_key": users.astype(np.int64),
            "pos_item": self.event_row[pos],
        }

    def eval_set(self, window: int, max_users: int | None = None, seed: int = 0) -> EvalSet:
        """Users converting in ``window`` (1 validation, 2 test), their state at its start, their targets."""
        if self.split is None:
            raise ValueError("eval_set needs a corpus built with a split")
        ev = self.events
        now = self.split.val_start if window == 1 else self.split.test_start
        inwin = self.window == window
        conv = inwin & (ev.kind == CONVERSION)
        users = np.unique(ev.user[conv])
        if max_users is not None and len(users) > max_users:
            users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
        end = positions_before(ev.user, ev.ts, users, now)
        out = EvalSet(users=users, end=end, now=int(now))
        for kind, target in ((CONVERSION, out.conversions), (ENGAGEMENT, out.engagement)):
            m = inwin & (ev.kind == kind)
            for u in users:
                lo, hi = self.user_start[u], self.user_end[u]
                target.append(np.unique(self.event_row[lo:hi][m[lo:hi]]))
        return out


def _cast_ids(ids: pa.Array, want: pa.DataType, path: str | None) -> pa.Array:
    if ids.type == want:
        return ids
    try:
        return pc.cast(ids, want)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError(f"{path}: ids of type {ids.type} cannot match the events' ids of type {want}") from None


def _fit_vocab(key: str, vocab: pa.Array, train_codes: np.ndarray, table: pa.Table | None,
               specs: list[dict[str, Any]], path: str | None) -> TowerVocab:
    """ID vocabulary = ids with training events; encoders fitted on their feature rows (all rows if none match)."""
    ids = vocab.take(pa.array(np.unique(train_codes)))
    encoders = []
    if table is not None and specs:
        rows = features.align(ids, table, key)
        known = rows.filter(pc.is_valid(rows.column(key)))
        fit_rows = known if known.num_rows else table
        encoders = [features.fit_encoder(s, fit_rows.column(s["name"]), str(path)) for s in specs]
    return TowerVocab(key=key, id_vocab=ids, encoders=encoders)
