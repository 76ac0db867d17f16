"""A user's state from raw events at request time: their stored tail of events plus fresh ones, read with the
training rules (roles, sessions, derived dwell, bursts, event weights, recency) from the same code, then bagged
for the user tower. The index job stores each user's tail; the service and evaluation's live protocol embed
through :class:`LiveState`, so evaluation scores what the service answers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from retrieval.corpus import DAY, Corpus, CorpusConfig
from retrieval.events import RawEvents, sessionise
from retrieval.history import bag_inputs, event_weights, gather_history
from retrieval.vocab import TowerVocab


@dataclass(frozen=True)
class EventTail:
    """One user's events in time order: catalogue rows, event index (into the roles' names), epoch seconds and
    dwell seconds (NaN: derive it from the gap to the next event, as training does)."""

    rows: np.ndarray  # [E] int64
    events: np.ndarray  # [E] int16
    ts: np.ndarray  # [E] int64
    dwell: np.ndarray  # [E] float32

    @staticmethod
    def empty() -> EventTail:
        return EventTail(np.zeros(0, np.int64), np.zeros(0, np.int16), np.zeros(0, np.int64), np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.ts)

    def then(self, fresh: EventTail) -> EventTail:
        """These events followed by ``fresh`` ones (sessionising sorts by time, ties in this order)."""
        return EventTail(*(np.concatenate([a, b]) for a, b in zip(
            (self.rows, self.events, self.ts, self.dwell), (fresh.rows, fresh.events, fresh.ts, fresh.dwell),
            strict=True)))


@dataclass(frozen=True)
class Tails:
    """Many users' tails as CSR: user u's events are [offsets[u], offsets[u + 1])."""

    offsets: np.ndarray  # [U + 1] int64
    rows: np.ndarray  # [T] int32
    events: np.ndarray  # [T] int16
    ts: np.ndarray  # [T] int64
    dwell: np.ndarray  # [T] float32

    def of(self, u: int) -> EventTail:
        lo, hi = self.offsets[u], self.offsets[u + 1]
        return EventTail(self.rows[lo:hi].astype(np.int64), self.events[lo:hi], self.ts[lo:hi], self.dwell[lo:hi])


def stored_tails(corpus: Corpus, users: np.ndarray, end: np.ndarray) -> Tails:
    """The last ``history.length`` events before ``end`` of each user code (what the user tower would read),
    with their dwell as read; a user's last event, whose derived dwell only said "the session ended", gets NaN
    so that a fresh event in the same session re-derives it from the gap, as training would."""
    ev = corpus.events
    start = np.maximum(corpus.user_start[users], end - corpus.history.length)
    sizes = np.maximum(end - start, 0)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    pos = np.repeat(start - offsets[:-1], sizes) + np.arange(offsets[-1])  # [T] event positions, in order
    dwell = ev.dwell[pos].astype(np.float32)
    last = offsets[1:][sizes > 0] - 1
    dwell[last] = np.where(ev.derived[pos[last]], np.nan, dwell[last])
    return Tails(offsets, corpus.event_row[pos].astype(np.int32), ev.event[pos].astype(np.int16), ev.ts[pos], dwell)


class LiveState:
    """What turns raw events into user tower inputs: the data config the model was trained with and, per
    catalogue row + 1, the item-ID row and history feature codes the bags read (Corpus.hist_lookup)."""

    def __init__(self, config: CorpusConfig, lookups: dict[str, np.ndarray]):
        self.config, self.lookups = config, lookups
        self._empty_vocab = pa.array([0], pa.int64())

    def bags(self, tails: list[EventTail]) -> tuple[np.ndarray, np.ndarray]:
        """(rows [B, L] catalogue row + 1, weights [B, L]): of each tail (each non-empty), its last
        ``history.length`` events after sessionising, weighted and decayed as of its own last event's time. One
        pass over every tail's events (a request batch costs one call, not one per user): the training rules
        read them per user, as training does for a log of many users (sessions never span two users)."""
        c = self.config
        b = np.arange(len(tails))
        raw = RawEvents(user=np.repeat(b.astype(np.int32), [len(t) for t in tails]),
                        item=np.concatenate([t.rows for t in tails]).astype(np.int32),
                        event=np.concatenate([t.events for t in tails]), ts=np.concatenate([t.ts for t in tails]),
                        dwell=np.concatenate([t.dwell for t in tails]), session=None, user_vocab=self._empty_vocab,
                        item_vocab=self._empty_vocab, n_read=sum(len(t) for t in tails), ignored={})
        ev = sessionise(raw, c.roles, c.sessions, "live events", need_conversion=False)  # sorted by (user, ts)
        w = event_weights(ev, c.dwell_weighting.kind, c.dwell_weighting.t_max, c.dwell_weighting.threshold)
        start, end = np.searchsorted(ev.user, b, "left"), np.searchsorted(ev.user, b, "right")
        now = ev.ts[end - 1]  # each user's last event (merging bursts keeps at least one)
        return gather_history(end, start, ev.item.astype(np.int64) + 1, w, ev.ts, now, c.history.length,
                              c.history.half_life_days * DAY)

    def inputs(self, static: dict[str, np.ndarray], tails: list[EventTail]) -> dict[str, np.ndarray]:
        """User tower inputs of a batch: ``static`` the users' own inputs ([B] id row and features), ``tails``
        their events (each non-empty)."""
        rows, weights = self.bags(tails)
        return {**static, **bag_inputs(rows, weights, self.lookups)}


def blank_user(vocab: TowerVocab) -> dict[str, np.ndarray]:
    """User tower inputs [1, ...] of a user the artifact has never seen: no learned ID, every feature missing."""
    out = vocab.encode(vocab.id_vocab[:1] if len(vocab.id_vocab) else pa.array([0], pa.int64()), None)
    out["id"] = np.zeros(1, np.int64)
    return out
