"""The running service's state, one per app: settings, metrics, the artifact being served, the swap lock, the
journal that several workers share; and the dependencies that hand them to the routes. Tokens are checked
before any route runs (serve/limits.py)."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from redis.exceptions import RedisError

from index.artifact import ArtifactError
from serve.batcher import TowerBatcher
from serve.journal import Journal, replay_from
from serve.live_store import MemoryStore, RedisStore
from serve.load import load_served
from serve.metrics import Metrics
from serve.settings import Settings
from serve.store import Served

log = logging.getLogger(__name__)


@dataclass
class Service:
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    served: Served | None = None  # replaced by one assignment: a request sees one version from start to end
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one swap or add at a time
    store: MemoryStore | RedisStore | None = None  # live histories, opened in lifespan (outlives swaps)
    journal: Journal | None = None  # the admin operations every worker applies (None: one process)
    batcher: TowerBatcher | None = None  # live users embedded together (serve/batcher.py)
    unsettled_since: float | None = None  # a new version serves, and what was alive is not frozen again yet

    def __post_init__(self) -> None:
        self.batcher = TowerBatcher(self.settings.live_batch, self.metrics.live_batch.observe,
                                    self.settings.live_wait_s)
        if self.settings.control_dir is not None:
            self.journal = Journal(self.settings.control_dir, self.settings.workers)

    def start(self) -> None:
        """The artifact of the settings, then what the journal holds (a worker started after swaps or adds)."""
        served = self.load(self.settings.artifacts)
        self._serve(self._replay(served, self.journal.pending()) if self.journal else served)

    def apply(self, served: Served, op: dict[str, Any]) -> Served:
        """One journal operation on ``served``: a swap loads its artifact, an add embeds its items."""
        if op["op"] == "swap":
            return self.load(Path(op["path"]))
        return served.with_items(op["items"])[0]

    def _replay(self, served: Served, ops: list[dict[str, Any]]) -> Served:
        for op in replay_from(ops):
            served = self.apply(served, op)
        return served

    def _serve(self, served: Served) -> None:
        self.served = served  # one reference assignment: requests see old or new, never a mix
        self.metrics.set_version(served.model_version)
        if self.settings.gc_freeze:
            gc.unfreeze()  # the version served until now may be garbage, cycles and all: collectable again
            self.unsettled_since = time.monotonic()
        if self.journal:
            self.journal.ack(served.model_version)

    def follow(self) -> None:
        """Apply what other workers appended (in a thread, under ``lock``). An operation this process cannot
        apply is logged and left: it keeps serving what it had, and its acknowledgement says which version."""
        ops = self.journal.pending()
        if not ops:
            return
        try:
            self._serve(self._replay(self.served, ops))
        except Exception as e:  # noqa: BLE001 (the worker must keep serving; the admin answer shows the versions)
            log.error("serve: cannot apply a journal operation another worker accepted (%s); still serving %s",
                      e, self.served.model_version)
            self.journal.ack(self.served.model_version)

    def commit(self, op: dict[str, Any], make: Callable[[Served], tuple[Served, Any]]) -> Any:
        """An admin operation (in a thread, under ``lock``): with several workers, under the journal's lock,
        after catching up with it; ``make`` builds the new state from the current one (an exception refuses the
        operation, and nothing is appended); then every worker is told. Returns make's second value."""
        with self.journal.locked() if self.journal else nullcontext():
            if self.journal:
                self.follow()
            new, extra = make(self.served)
            if self.journal:
                self.journal.append(op)
            self._serve(new)
        return extra

    def wait_workers(self) -> dict[str, Any]:
        """After a commit (in a thread): how many workers serve it, once all do or the timeout passes."""
        if self.journal is None:
            return {"applied": 1, "of": 1, "versions": [self.served.model_version]}
        n, versions = self.journal.wait_all(self.settings.sync_timeout_s)
        return {"applied": n, "of": self.journal.workers, "versions": versions}

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

    def settle(self) -> None:
        """Collect what the last version left, then freeze what is alive (``settings.gc_freeze``; under ``lock``).
        A full collection walks every tracked object, and with torch, faiss and an artifact loaded it pauses the
        event loop each time one runs; frozen objects are skipped, so the routine full collections walk only what
        requests allocated. One such pause here, after a start, a swap or an add, instead of one every so many
        requests. Called a moment after the swap (serve/app.py), once the requests that held the old version,
        the admin request among them, have let it go: frozen while still held, its cycles would stay for good."""
        gc.collect()
        gc.freeze()
        self.unsettled_since = None

    def load(self, path: Path) -> Served:
        """An artifact, validated whole (its model too) before it may serve; a swap keeps the id types the
        service's request schemas were made for."""
        new = load_served(path, gpu=self.settings.gpu)
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
