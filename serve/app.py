"""The candidates service: an app factory; the artifact loads in lifespan; routers per area (candidates,
health and metrics, admin)."""

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from serve import admin, candidates, health
from serve.limits import RequestLimits
from serve.metrics import Metrics
from serve.service import Service
from serve.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    svc = Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc.served = await run_in_threadpool(svc.load, settings.artifacts)
        svc.metrics.set_version(svc.served.model_version)
        yield
        svc.served = None

    app = FastAPI(title="Conversion candidate retrieval", version="0.1.0", lifespan=lifespan,
                  description="Top-k conversion candidates per user for the ranking stage.")
    app.state.service = svc
    app.include_router(candidates.router(settings))
    app.include_router(health.router)
    app.include_router(admin.router(settings))
    admin_token = settings.admin_token.get_secret_value() if settings.admin_token else None
    app.add_middleware(RequestLimits, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s,
                       tokens={"/admin/": admin_token})
    app.add_middleware(Metrics.Middleware, metrics=svc.metrics)  # outermost: counts refused requests too
    return app
