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
"""

from __future__ import annotations

import asyncio
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

    def __init__(self, max_batch: int, on_run=None):
        if max_batch < 1:
            raise ValueError(f"max_batch is {max_batch}; expected at least 1")
        self.max_batch, self.on_run = max_batch, on_run
        self.waiting: list[_Waiting] = []

    async def state(self, served: Served, user: int | str | None, fresh: EventTail, heads: list[str]) -> UserState:
        """The state of ``user`` after ``fresh`` events (non-empty), by the artifact ``served``."""
        loop = asyncio.get_running_loop()
        if not self.waiting:
            loop.call_soon(self._tick, 0, 0)
        done = loop.create_future()
        self.waiting.append(_Waiting(served, user, fresh, heads, done))
        return await done

    def _tick(self, seen: int, hops: int) -> None:
        loop = asyncio.get_running_loop()
        if len(self.waiting) > seen and hops < MAX_HOPS and len(self.waiting) < self.max_batch:
            loop.call_soon(self._tick, len(self.waiting), hops + 1)
        else:
            self._run()

    def _run(self) -> None:
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
