"""The corpus: events, the item catalogue and both towers' vocabularies, as numpy arrays that batch fast.

Shared by training (examples, validation targets) and the index job (every item, every known user), so a
user is embedded from the same history bag in both.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from retrieval import features
from retrieval.contract import DataError, cast_ids, check_feature_table, open_table
from retrieval.events import CONVERSION, ENGAGEMENT, EventRoles, SessionConfig, load_events
from retrieval.history import bag_inputs, event_weights, gather_history, positions_before, user_bounds
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


VALIDATION, TEST = 1, 2  # window codes of a split corpus (0: training)
DEFAULT_ROLES = EventRoles({"purchase": 1.0}, {"view": 0.5, "click": 1.0, "add_to_cart": 2.0})


@dataclass(frozen=True)
class CorpusConfig:
    """Everything the corpus is read and encoded with: the YAML's ``data`` section (less the loader's options),
    what a checkpoint carries as the data config, and what the tests build; one object, built one way."""

    events: str
    items: str | None = None
    users: str | None = None
    roles: EventRoles = DEFAULT_ROLES
    sessions: SessionConfig = SessionConfig()
    dwell_weighting: DwellWeighting = DwellWeighting()
    history: HistoryConfig = HistoryConfig()
    split: SplitConfig = SplitConfig()
    item_features: tuple[dict[str, Any], ...] = ()
    user_features: tuple[dict[str, Any], ...] = ()
    ts_unit: str = "s"  # unit of an integer ts column: s, ms, us or ns
    missing_features: Literal["warn", "error"] = "warn"  # ids without a feature row, all-null feature columns

    NESTED = {"roles": EventRoles, "sessions": SessionConfig, "dwell_weighting": DwellWeighting,
              "history": HistoryConfig, "split": SplitConfig}

    def to_dict(self) -> dict[str, Any]:
        """Plain values (a checkpoint's ``datamodule_hyper_parameters``, loadable with weights_only)."""
        d = asdict(self)
        d["item_features"], d["user_features"] = list(self.item_features), list(self.user_features)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], **override: Any) -> CorpusConfig:
        """From plain values (a checkpoint's data config, a YAML ``data`` section); keys it does not hold (the
        loader's batch size, workers, ...) are the loader's and ignored; nested sections may be partial."""
        d = {**d, **override}
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k, typ in cls.NESTED.items():
            if isinstance(kw.get(k), dict):
                kw[k] = typ(**kw[k])
            elif kw.get(k) is None:
                kw.pop(k, None)
        kw["item_features"] = tuple(kw.get("item_features") or ())
        kw["user_features"] = tuple(kw.get("user_features") or ())
        return cls(**kw)


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
    def __init__(self, config: CorpusConfig, state: dict[str, Any] | None = None, split: bool = True):
        """Load and encode. state: vocabularies from a checkpoint (index job); None fits them on training data.
        split: cut the config's temporal split (False: every event counts as history, as in the index job)."""
        self.config = c = config
        self.history = c.history
        item_specs = features.parse_specs(list(c.item_features), "item")
        user_specs = features.parse_specs(list(c.user_features), "user")
        ev = self.events = load_events(c.events, c.roles, c.sessions, c.ts_unit)
        items_table = read_feature_table(c.items, "item_id", item_specs, "items")
        users_table = read_feature_table(c.users, "user_id", user_specs, "users")
        self.split: Split | None = None
        if split:
            s = c.split
            self.split = temporal_split(ev.ts, s.val_fraction, s.test_fraction, s.val_start, s.test_start)
        self.window = self.split.window(ev.ts) if self.split else np.zeros(len(ev), np.int8)

        cat = ev.item_vocab if items_table is None else pa.concat_arrays(
            [ev.item_vocab, cast_ids(items_table.column("item_id").combine_chunks(), ev.item_vocab.type, c.items)])
        cat = pc.unique(cat)
        self.catalogue: pa.Array = cat.take(pc.sort_indices(cat))
        for table, ids, key, what in ((items_table, ev.item_vocab, "item_id", "items"),
                                      (users_table, ev.user_vocab, "user_id", "users")):
            check_feature_coverage(table, ids, key, what, getattr(c, what), c.missing_features)
        if state is None:
            train = self.window == 0
            if not train.any():
                raise DataError(f"events: {c.events}: no event falls in the training window")
            self.item_vocab = _fit_vocab("item_id", ev.item_vocab, ev.item[train], items_table, item_specs, c.items)
            self.user_vocab = _fit_vocab("user_id", ev.user_vocab, ev.user[train], users_table, user_specs, c.users)
        else:
            self.item_vocab = TowerVocab.from_state(state["items"])
            self.user_vocab = TowerVocab.from_state(state["users"])
        self.item_inputs = self.item_vocab.encode(self.catalogue, items_table, str(c.items))  # catalogue rows
        self.user_inputs = self.user_vocab.encode(ev.user_vocab, users_table, str(c.users))  # user codes
        self.event_row = pc.index_in(ev.item_vocab, value_set=self.catalogue).to_numpy().astype(np.int64)[ev.item]
        # History bags gather catalogue rows (+1; 0 = padding) and read ids and features through these lookups
        # ([N + 1] each; the index job stores them with the items, for the service's live user states).
        self.history_features = history_features(self.item_vocab, c.history)
        self._hist_row = self.event_row + 1  # [E], built once rather than per batch
        self.hist_lookup = {"hist_items": np.concatenate([[0], self.item_inputs["id"]]),
                             **{f"hist_{k}": np.concatenate([[0], self.item_inputs[k]]) for k in self.history_features}}
        dw = c.dwell_weighting
        self.weight = event_weights(ev, dw.kind, dw.t_max, dw.threshold)
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
        out = {k: v[users] for k, v in self.user_inputs.items()}
        out.update(bag_inputs(rows, weights, self.hist_lookup))
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
            "event": ev.event[pos].astype(np.int64),  # the event code (data.roles' names): each head's multiplier
            "user_key": users.astype(np.int64),
            "pos_item": self.event_row[pos],
        }

    def eval_users(self, window: int, max_users: int | None = None, seed: int = 0) -> EvalSet:
        """Users converting in ``window`` (1 validation, 2 test) and their state at its start; no targets yet."""
        if self.split is None:
            raise ValueError("eval_set needs a corpus built with a split")
        ev = self.events
        now = self.split.val_start if window == 1 else self.split.test_start
        users = np.unique(ev.user[(self.window == window) & (ev.kind == CONVERSION)])
        if max_users is not None and len(users) > max_users:
            users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
        return EvalSet(users=users, end=positions_before(ev.user, ev.ts, users, now), now=int(now))

    def eval_set(self, window: int, max_users: int | None = None, seed: int = 0) -> EvalSet:
        """:meth:`eval_users` with their targets: the distinct items each converts on (engages with) in the window."""
        ev = self.events
        out = self.eval_users(window, max_users, seed)
        users, inwin = out.users, self.window == window
        for kind, target in ((CONVERSION, out.conversions), (ENGAGEMENT, out.engagement)):
            m = inwin & (ev.kind == kind)
            for u in users:
                lo, hi = self.user_start[u], self.user_end[u]
                target.append(np.unique(self.event_row[lo:hi][m[lo:hi]]))
        return out


def history_features(item_vocab: TowerVocab, history: HistoryConfig) -> list[str]:
    """The item features a history bag also reads: the categorical and hashed ones, when the config says so."""
    return [e["name"] for e in item_vocab.encoders
            if history.item_features and e["kind"] in ("categorical", "hashed")]


def check_feature_coverage(table: pa.Table | None, ids: pa.Array, key: str, what: str, path: str | None,
                           policy: str) -> None:
    """Count the event ids with no row in their feature table and the feature columns with no value at all:
    logged (policy "warn": those ids embed from their ID and history alone) or an error ("error")."""
    if table is None:
        return
    keys = cast_ids(table.column(key).combine_chunks(), ids.type, path)
    missing = int(pc.sum(pc.invert(pc.is_in(ids, value_set=keys))).as_py() or 0)
    empty = [n for n in table.column_names if n != key and table.column(n).null_count == table.num_rows]
    problems = []
    if missing:
        problems.append(f"{missing} of the events' {len(ids)} {key}s have no row in the table")
    if empty:
        problems.append(f"feature column(s) {empty} hold no value at all")
    if not problems:
        return
    msg = f"{what}: {path}: " + "; ".join(problems)
    if policy == "error":
        raise DataError(msg + " (data.missing_features: error)")
    log.warning("%s: those features count as missing (data.missing_features: error makes this an error)", msg)


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
