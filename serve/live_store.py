"""Users' live histories: the raw events posted to ``/events``, newest last, at most ``per_user`` a user.

Events are kept raw (item_id, event, ts, dwell_s as posted), so a swap to another model reads them with its own
roles and vocabulary. Two stores with one interface:

- ``MemoryStore`` (the default): one process's memory, an LRU cap on users (evictions counted); lost on restart.
- ``RedisStore`` (``RETRIEVAL_REDIS_URL``): a list per user in Redis, shared by every service process; an event
  is acknowledged only after Redis has it, so it survives a restart of the service (and of Redis, as far as its
  own persistence settings go).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

import orjson
import redis.asyncio as aioredis
from prometheus_client import Counter


class MemoryStore:
    kind = "memory"

    def __init__(self, per_user: int, max_users: int, evictions: Counter):
        self.per_user, self.max_users, self.evictions = per_user, max_users, evictions
        self._users: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()

    async def append(self, batch: dict[str, list[dict[str, Any]]]) -> None:
        for user, events in batch.items():
            kept = self._users.pop(user, [])
            kept.extend(events)
            self._users[user] = kept[-self.per_user:]  # most recently written last: the LRU order
            while len(self._users) > self.max_users:
                self._users.popitem(last=False)
                self.evictions.inc()

    async def get(self, user: str) -> list[dict[str, Any]]:
        events = self._users.get(user)
        if events is None:
            return []
        self._users.move_to_end(user)
        return list(events)

    def __len__(self) -> int:
        return len(self._users)

    async def close(self) -> None:
        self._users.clear()


class RedisStore:
    """Reads coalesce: the users asked for in one round of the event loop (the requests read together) are
    fetched in one pipeline, one round trip, instead of one each; their requests then reach the user tower
    together too (serve/batcher.py)."""

    kind = "redis"

    def __init__(self, url: str, per_user: int, prefix: str = "retrieval:live:"):
        self.per_user, self.prefix = per_user, prefix
        self.client = aioredis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._asked: list[tuple[str, asyncio.Future]] = []  # this round's reads, not yet sent
        self._reading: set[asyncio.Task] = set()  # the reads in flight (the loop keeps only weak references)
        self.round_trips = 0  # pipelines sent for reads

    def _key(self, user: str) -> str:
        return self.prefix + user

    async def ping(self) -> None:
        await self.client.ping()

    async def append(self, batch: dict[str, list[dict[str, Any]]]) -> None:
        """All of a request's events in one transaction: every user's list gets its events, or none does."""
        async with self.client.pipeline(transaction=True) as p:
            for user, events in batch.items():
                key = self._key(user)
                p.rpush(key, *(orjson.dumps(e) for e in events))
                p.ltrim(key, -self.per_user, -1)
            await p.execute()

    async def get(self, user: str) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        if not self._asked:
            task = loop.create_task(self._read())  # its first step runs after this round's other handlers
            self._reading.add(task)
            task.add_done_callback(self._reading.discard)
        done = loop.create_future()
        self._asked.append((user, done))
        return [orjson.loads(v) for v in await done]

    async def _read(self) -> None:
        asked, self._asked = self._asked, []
        self.round_trips += 1
        try:
            async with self.client.pipeline(transaction=False) as p:
                for user, _ in asked:
                    p.lrange(self._key(user), 0, -1)
                lists = await p.execute()
        except Exception as e:  # noqa: BLE001 (every read of the round fails with it: each request answers it)
            for _, done in asked:
                if not done.done():
                    done.set_exception(e)
            return
        for (_, done), values in zip(asked, lists, strict=True):
            if not done.done():  # a request that was cancelled (its client left)
                done.set_result(values)

    async def close(self) -> None:
        await self.client.aclose()
