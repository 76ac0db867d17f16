"""Users' live histories: the raw events posted to ``/events``, newest last, at most ``per_user`` a user.

Events are kept raw (item_id, event, ts, dwell_s as posted), so a swap to another model reads them with its own
roles and vocabulary. Two stores with one interface:

- ``MemoryStore`` (the default): one process's memory, an LRU cap on users (evictions counted); lost on restart.
- ``RedisStore`` (``RETRIEVAL_REDIS_URL``): a list per user in Redis, shared by every service process; an event
  is acknowledged only after Redis has it, so it survives a restart of the service (and of Redis, as far as its
  own persistence settings go).
"""

from __future__ import annotations

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
    kind = "redis"

    def __init__(self, url: str, per_user: int, prefix: str = "retrieval:live:"):
        self.per_user, self.prefix = per_user, prefix
        self.client = aioredis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

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
        return [orjson.loads(v) for v in await self.client.lrange(self._key(user), 0, -1)]

    async def close(self) -> None:
        await self.client.aclose()
