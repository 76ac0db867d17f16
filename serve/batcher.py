"""The user tower once for the live requests that arrive together.

A live answer (``POST /candidates`` with fresh events, or a user with live events) runs the user tower at
request time, and one tower call on one user costs about what a call on a few dozen users costs: the fixed cost
of a torch call per layer, and the training rules' pass over the events, dominate. So the handler of a live
request awaits its user's state here, and one run embeds every user waiting ([B] users: one bagging pass, one
tower call, ``Served.live_states``); each handler then searches and answers alone.

When a run starts: the first waiter schedules a check for the end of the event loop's current round, after the
handlers of the other requests read in that round have added their users. While a round adds users, the run
waits one more round (at most MAX_HOPS rounds, or until ``max_batch`` users wait): under load, requests whose
bytes arrive while the loop answers others keep joining, and a lone request waits only for a few empty rounds
of the loop (microseconds), never for a timer.

A live request on its way (``on_the_way``: reading the user's live events from Redis, a round trip) when a run
is first asked for is waited for as well: under load its read ends a few rounds later than the others', and it
would otherwise start a run of its own. The run waits for those requests only (not for ones that start later),
and for at most ``max_wait_s`` (the setting ``live_wait_s``; 0: not at all).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

from retrieval.live import EventTail
from serve.store import Served, UserState

MAX_HOPS = 4  # rounds of the event loop a run waits while each adds users


class _Waiting(NamedTuple):
    served: Served
    user: int | str | None
    fresh: EventTail
    heads: list[str]
    done: asyncio.Future


class TowerBatcher:
    """Collects live users for one tower run (see the module doc); at most ``max_batch`` users per run (1: every
    user alone, as without batching). ``on_run(size)`` is told each run's batch size (the metrics)."""

    def __init__(self, max_batch: int, on_run=None, max_wait_s: float = 0.0):
        """max_wait_s: the longest a run waits for the live requests that were on their way when it was asked for
        (the service passes its ``live_wait_s``; 0: none)."""
        if max_batch < 1:
            raise ValueError(f"max_batch is {max_batch}; expected at least 1")
        self.max_batch, self.on_run, self.max_wait_s = max_batch, on_run, max_wait_s
        self.waiting: list[_Waiting] = []
        self.coming: set[int] = set()  # live requests on their way (on_the_way), by ticket
        self.expected: set[int] = set()  # those the open run waits for
        self._tickets = itertools.count()
        self._run_id = 0  # the open run's number: a tick or a timer of a run already gone does nothing
        self._timer: asyncio.TimerHandle | None = None

    @contextmanager
    def on_the_way(self) -> Iterator[None]:
        """Around what a live request awaits before asking for its state (its read of the live store): a run
        asked for meanwhile waits for it (see the module doc)."""
        ticket = next(self._tickets)
        self.coming.add(ticket)
        try:
            yield
        finally:
            self.coming.discard(ticket)
            if ticket in self.expected:
                self.expected.discard(ticket)
                if not self.expected:  # the last one the run waited for: it asks for its state next, in this step
                    asyncio.get_running_loop().call_soon(self._tick, self._run_id, -1, 0)

    async def state(self, served: Served, user: int | str | None, fresh: EventTail, heads: list[str]) -> UserState:
        """The state of ``user`` after ``fresh`` events (non-empty), by the artifact ``served``."""
        loop = asyncio.get_running_loop()
        if not self.waiting:
            self._run_id += 1
            self.expected = set(self.coming) if self.max_wait_s > 0 else set()
            if self.expected:
                self._timer = loop.call_later(self.max_wait_s, self._expire, self._run_id)
            loop.call_soon(self._tick, self._run_id, 0, 0)
        done = loop.create_future()
        self.waiting.append(_Waiting(served, user, fresh, heads, done))
        return await done

    def _expire(self, run_id: int) -> None:
        if run_id == self._run_id:
            self.expected.clear()
            self._tick(run_id, -1, 0)

    def _tick(self, run_id: int, seen: int, hops: int) -> None:
        if run_id != self._run_id or not self.waiting:
            return
        if len(self.waiting) >= self.max_batch:
            self._run()
        elif self.expected:
            return  # parked: the last expected request's arrival (or the timer) ticks again
        elif len(self.waiting) > seen and hops < MAX_HOPS:
            asyncio.get_running_loop().call_soon(self._tick, run_id, len(self.waiting), hops + 1)
        else:
            self._run()

    def _run(self) -> None:
        self._run_id += 1  # ticks and timers of this run are stale from here
        self.expected.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self.waiting = self.waiting, []
        groups: dict[int, list[_Waiting]] = {}  # a swap between two arrivals: each artifact embeds its own users
        for w in batch:
            groups.setdefault(id(w.served), []).append(w)
        for group in groups.values():
            for i in range(0, len(group), self.max_batch):
                self._embed(group[i: i + self.max_batch])

    def _embed(self, part: list[_Waiting]) -> None:
        served = part[0].served
        wanted = {h for w in part for h in w.heads}
        heads = [h for h in served.heads if h in wanted]  # the union, in the artifact's order
        if self.on_run is not None:
            self.on_run(len(part))
        try:
            states = served.live_states([w.user for w in part], [w.fresh for w in part], heads)
        except Exception as e:  # noqa: BLE001 (each request answers it: the service's error handler)
            for w in part:
                if not w.done.done():
                    w.done.set_exception(e)
            return
        for w, s in zip(part, states, strict=True):
            if not w.done.done():  # a client that left: its handler was cancelled
                own = {h: s.vecs[h] for h in w.heads}  # the heads this request reads, as when alone
                w.done.set_result(UserState(own, s.hist_rows, {h: s.hist_scores[h] for h in w.heads}))
