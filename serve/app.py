"""The candidates service: an app factory; the artifact and the live store open in lifespan; routers per area
(candidates, live events, health and metrics, admin)."""

import asyncio
import logging
import time
from contextlib import asynccontextmanager, suppress

import torch
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from threadpoolctl import threadpool_limits

from index.artifact import read_manifest
from serve import admin, candidates, events, health
from serve.events import event_models
from serve.limits import RequestLimits
from serve.metrics import Metrics
from serve.service import Service
from serve.settings import Settings

log = logging.getLogger(__name__)
SETTLE_AFTER_S = 1.0  # a new version has served this long before the garbage collector is frozen again


def create_app(settings: Settings) -> FastAPI:
    svc = Service(settings)
    m = read_manifest(settings.artifacts)  # the id types make the request schemas; a swap keeps them
    models = event_models(m.item_id_type, m.user_id_type)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(svc.start)
        await svc.open_store()
        tasks = [asyncio.create_task(follow(svc))] if svc.journal else []
        if settings.gc_freeze:
            svc.settle()
            tasks.append(asyncio.create_task(keep_settled(svc)))
        yield
        for task in tasks:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        if svc.journal:
            svc.journal.close()
        await svc.store.close()
        svc.metrics.close()
        svc.served = None

    app = FastAPI(title="Conversion candidate retrieval", version="0.1.0", lifespan=lifespan,
                  description="Top-k conversion candidates per user for the ranking stage.")
    app.state.service = svc
    app.include_router(candidates.router(settings, models, m))
    app.include_router(health.router)
    app.include_router(admin.router(settings))
    app.include_router(events.router(settings, models))
    tokens = {prefix: token.get_secret_value() if token else None
              for prefix, token in (("/admin/", settings.admin_token), ("/events", settings.events_token))}
    app.add_middleware(RequestLimits, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s,
                       tokens=tokens)
    app.add_middleware(Metrics.Middleware, metrics=svc.metrics)  # outermost: counts refused requests too
    app.add_exception_handler(RedisError, live_store_down)
    return app


async def live_store_down(request: Request, e: RedisError) -> JSONResponse:
    """Redis (the live store) failed in a request: a 503 that says so; an answer without the user's live events
    would be silently wrong, and an event not stored must not look accepted."""
    log.warning("live store (Redis) failed: %s: %s", type(e).__name__, e)
    return JSONResponse({"detail": f"the live store (Redis) is unavailable: {type(e).__name__}"}, status_code=503,
                        headers={"retry-after": "1"})


def from_env() -> FastAPI:
    """The app of the settings in the environment: what each worker of ``python -m serve --workers N`` runs
    (uvicorn imports it by name in every process it spawns)."""
    one_thread()
    return create_app(Settings())


def one_thread() -> None:
    """One request, one core: the user tower and the searches run on the event loop's thread, and a thread pool
    of torch, BLAS or OpenMP would fight the other processes (and the other requests) for the cores; processes
    (``--workers``) are how the service uses more."""
    torch.set_num_threads(1)
    threadpool_limits(1)  # numpy's BLAS (the exact search's matrix product) and OpenMP


async def follow(svc: Service) -> None:
    """Apply, a few times a second, the admin operations other workers received (serve/journal.py)."""
    while True:
        await asyncio.sleep(svc.settings.journal_poll_s)
        if svc.journal.changed():
            async with svc.lock:
                await run_in_threadpool(svc.follow)


async def keep_settled(svc: Service) -> None:
    """Freeze the garbage collector's view again once a swap or an add has served SETTLE_AFTER_S (Service.settle)."""
    while True:
        await asyncio.sleep(SETTLE_AFTER_S / 2)
        since = svc.unsettled_since
        if since is not None and time.monotonic() - since >= SETTLE_AFTER_S:
            async with svc.lock:  # not between a swap's new version and its unfreeze
                svc.settle()
