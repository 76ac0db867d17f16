"""The candidates service: an app factory; the artifact loads in lifespan; admin swaps and adds items.

(No `from __future__ import annotations` here: FastAPI reads the endpoint annotations, which use settings.)
"""


import asyncio
import logging
import secrets
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import orjson
import pyarrow as pa
from fastapi import Body, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, Field

from index.artifact import ArtifactError
from retrieval.contract import DataError
from serve.metrics import Metrics
from serve.settings import Settings
from serve.store import Served, load_served

log = logging.getLogger(__name__)


class Candidate(BaseModel):
    item_id: int | str
    score: float


class CandidatesResponse(BaseModel):
    user: int | str
    k: int
    model_version: str
    fallback: str | None = Field(description='null, or "popular" for a user the model has never seen')
    candidates: list[Candidate]


class SwapRequest(BaseModel):
    path: str = Field(description="artifact folder, relative to the artifacts root or absolute inside it")


class AddItemsRequest(BaseModel):
    items: list[dict[str, Any]] = Field(description="item_id plus the item feature columns the model was trained on")


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()
    swap_lock = asyncio.Lock()

    def load(path: Path) -> Served:
        """An artifact, and with the admin endpoints on the model that embeds added items too: on first use it
        imports torch and lightning and reads the weights inside the request (27 s beside 16 busy connections
        in bench/soak.py), and loaded in the background after readiness it slowed the first requests instead.
        Without an admin token no item can be added, and that memory stays free."""
        served = load_served(path)
        if settings.admin_token is not None:
            try:
                _ = served.model  # cached on the Served: later adds reuse it
            except ArtifactError as e:  # candidates still work; /admin/items answers 409 with this reason
                log.error("serve: the model of %s cannot be loaded for new items: %s", served.model_version, e)
        return served

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.served = await run_in_threadpool(load, settings.artifacts)
        metrics.set_version(app.state.served.model_version)
        yield
        app.state.served = None

    app = FastAPI(title="Conversion candidate retrieval", version="0.1.0", lifespan=lifespan,
                  description="Top-k conversion candidates per user for the ranking stage.")
    app.state.served = None
    app.add_middleware(Metrics.Middleware, metrics=metrics)

    def served_now(request: Request) -> Served:
        s = request.app.state.served
        if s is None:
            raise HTTPException(503, "no artifact loaded")
        return s

    allowed = {"user", "k", "exclude_purchased"}

    async def strict_query(request: Request) -> None:  # async: a plain def would cost a threadpool hop
        """Unknown or repeated parameters are errors: a typo like ?K=10 must not silently mean k=100."""
        keys = [k for k, _ in request.query_params.multi_items()]
        unknown = sorted(set(keys) - allowed)
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        errors = [{"loc": ["query", k], "msg": "unknown parameter", "type": "extra_forbidden"} for k in unknown]
        errors += [{"loc": ["query", k], "msg": "parameter given more than once", "type": "repeated"} for k in repeated]
        if errors:
            raise RequestValidationError(errors)

    @app.get("/candidates", response_model=CandidatesResponse, dependencies=[Depends(strict_query)],
             responses={503: {"description": "no artifact loaded yet"}}, summary="Top-k candidates for a user")
    async def candidates(
        request: Request,
        user: Annotated[str, Query(min_length=1, max_length=settings.max_user_len, description="user id")],
        k: Annotated[int, Query(ge=1, le=settings.max_k, description="number of candidates")] = settings.default_k,
        exclude_purchased: Annotated[bool, Query(description="drop items the user already converted on")] = False,
    ) -> Response:
        # An async def answers on the event loop: a search takes ~0.1 ms (one vector) to ~0.25 ms (four), and
        # handing it to the threadpool cost ~0.15 ms a request on its own; requests/s at 16 connections rose
        # 1.6-1.8x (side by side with the plain def, 1M items; bench/serve_load.py measures the service now).
        # One process answers on one core; scale out with processes.
        served = served_now(request)
        uid = served.users.parse(user)
        fallback, ids, scores = served.candidates(uid, k, exclude_purchased)
        if fallback:
            metrics.fallbacks.inc()
        return _json({"user": uid if uid is not None else user, "k": k, "model_version": served.model_version,
                      "fallback": fallback, "candidates": [{"item_id": i, "score": s} for i, s in zip(ids, scores, strict=True)]})

    @app.get("/healthz", summary="Alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Artifact loaded", responses={503: {"description": "no artifact loaded yet"}})
    async def readyz(request: Request) -> Response:
        s = request.app.state.served
        if s is None:
            return _json({"status": "loading"}, 503)
        return _json({"status": "ready", "model_version": s.model_version, "n_items": int(s.index.ntotal)})

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    def admin(authorization: Annotated[str | None, Header()] = None) -> None:
        token = settings.admin_token
        if token is None:
            raise HTTPException(403, "admin endpoints are disabled: no admin token is configured")
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not authorization or not secrets.compare_digest(given.encode(), token.get_secret_value().encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    def inside_root(raw: str) -> Path:
        root = settings.root
        p = (root / raw).resolve() if not Path(raw).is_absolute() else Path(raw).resolve()
        if not p.is_relative_to(root):
            raise HTTPException(422, f"artifact path must lie inside the artifacts root {root}")
        return p

    admin_errors = {401: {"description": "missing or wrong bearer token"},
                    403: {"description": "admin endpoints disabled (no token configured)"},
                    409: {"description": "artifact refused; the previous version keeps serving"}}

    @app.post("/admin/swap", dependencies=[Depends(admin)], responses=admin_errors,
              summary="Load another artifact version and swap it in")
    async def swap(request: Request, body: SwapRequest) -> Response:
        path = inside_root(body.path)
        async with swap_lock:
            old = request.app.state.served
            try:
                new = await run_in_threadpool(load, path)
            except ArtifactError as e:
                metrics.swap_failures.inc()
                log.error("serve: swap to %s refused, still serving %s: %s", path, old and old.model_version, e)
                raise HTTPException(409, f"artifact refused, still serving the previous version: {e}") from None
            request.app.state.served = new  # one reference assignment: requests see old or new, never a mix
            metrics.set_version(new.model_version)
        log.info("serve: swapped %s -> %s", old and old.model_version, new.model_version)
        return _json({"model_version": new.model_version, "previous": old and old.model_version})

    @app.post("/admin/items", dependencies=[Depends(admin)], responses=admin_errors,
              summary="Embed new items from features and index them")
    async def add_items(request: Request, body: Annotated[AddItemsRequest, Body()]) -> Response:
        if not body.items or len(body.items) > settings.max_new_items:
            raise HTTPException(422, f"give between 1 and {settings.max_new_items} items")
        async with swap_lock:
            old = served_now(request)
            try:
                table = pa.Table.from_pylist(body.items)
                if "item_id" not in table.column_names:
                    raise DataError("new items: each item needs an item_id")
                new = await run_in_threadpool(old.with_items, table)
            except (DataError, pa.ArrowInvalid, pa.ArrowTypeError) as e:
                raise HTTPException(422, str(e)) from None
            except ArtifactError as e:
                raise HTTPException(409, str(e)) from None
            request.app.state.served = new
        return _json({"added": len(body.items), "n_items": int(new.index.ntotal), "model_version": new.model_version})

    return app
