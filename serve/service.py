"""The running service's state, one per app: settings, metrics, the artifact being served, the swap lock; and
the dependencies that hand them to the routes. Tokens are checked before any route runs (serve/limits.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from redis.exceptions import RedisError

from index.artifact import ArtifactError
from serve.live_store import MemoryStore, RedisStore
from serve.metrics import Metrics
from serve.settings import Settings
from serve.store import Served, load_served


@dataclass
class Service:
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    served: Served | None = None  # replaced by one assignment: a request sees one version from start to end
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one swap or add at a time
    store: MemoryStore | RedisStore | None = None  # live histories, opened in lifespan (outlives swaps)

    async def open_store(self) -> None:
        """The live history store; with Redis, reachable now or the service does not start."""
        per_user = self.served.live.config.history.length
        if self.settings.redis_url:
            store = RedisStore(self.settings.redis_url, per_user)
            try:
                await store.ping()
            except (OSError, RedisError) as e:
                await store.close()
                raise RuntimeError(f"serve: Redis at {self.settings.redis_url} is not reachable ({e})") from None
            self.store = store
        else:
            self.store = MemoryStore(per_user, self.settings.live_max_users, self.metrics.live_evictions)

    def load(self, path: Path) -> Served:
        """An artifact, validated whole (its model too) before it may serve; a swap keeps the id types the
        service's request schemas were made for."""
        new = load_served(path)
        old = self.served
        if old is not None and (new.manifest.item_id_type, new.manifest.user_id_type) != (
                old.manifest.item_id_type, old.manifest.user_id_type):
            raise ArtifactError(f"artifact {path}: ids typed item {new.manifest.item_id_type} / user "
                                f"{new.manifest.user_id_type}, the service serves item {old.manifest.item_id_type} / "
                                f"user {old.manifest.user_id_type}; start a service for it")
        return new


# The dependencies are async: FastAPI runs a plain def dependency in its threadpool, a hop that costs more than
# the search it would wrap.
async def service(request: Request) -> Service:
    return request.app.state.service


async def served_now(svc: Annotated[Service, Depends(service)]) -> Served:
    if svc.served is None:
        raise HTTPException(503, "no artifact loaded")
    return svc.served
