"""Admin: swap the served artifact, add items without retraining. Bearer token (checked before the body is read).

Added items are ephemeral: they live in the service's indexes until the next swap or restart, and the
``model_version`` an answer carries says how many were added (and a digest of which), so two catalogues never
report the same version. To keep them, rebuild the artifact with them in the item table. With several workers,
both operations reach every one (serve/journal.py); the answer says how many serve the result (``processes``).
"""

import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, Field, field_validator

from index.artifact import ArtifactError
from retrieval.contract import DataError
from serve.limits import json_body_schema, read_json
from serve.responses import json_response
from serve.service import Service, served_now, service
from serve.settings import Settings
from serve.store import Served

log = logging.getLogger(__name__)

class SwapRequest(BaseModel):
    path: str = Field(min_length=1, max_length=1024,
                      description="artifact folder, relative to the artifacts root or absolute inside it")

    @field_validator("path")
    @classmethod
    def _no_nul(cls, v: str) -> str:
        if "\x00" in v:
            raise ValueError("must not contain a NUL character")
        return v


class AddItemsRequest(BaseModel):
    items: list[dict[str, Any]] = Field(description="item_id plus the item feature columns the model was trained on")


def inside_root(raw: str, root: Path) -> Path:
    """The artifact folder a swap names, resolved; a 422 unless it lies inside the artifacts root."""
    try:
        p = (root / raw).resolve()
    except (OSError, ValueError, RuntimeError) as e:  # too long, a link loop
        raise HTTPException(422, f"artifact path cannot be resolved ({type(e).__name__})") from None
    if not p.is_relative_to(root):
        raise HTTPException(422, f"artifact path must lie inside the artifacts root {root}")
    return p


def router(settings: Settings) -> APIRouter:
    # The bearer token of /admin/* is checked in serve.limits.RequestLimits, before the body is read.
    r = APIRouter(prefix="/admin", responses={
        401: {"description": "missing or wrong bearer token"},
        403: {"description": "admin endpoints disabled (no token configured)"},
        409: {"description": "artifact refused; the previous version keeps serving"},
        413: {"description": "request body too large"}})

    @r.post("/swap", summary="Load another artifact version and swap it in", openapi_extra=json_body_schema(SwapRequest))
    async def swap(request: Request, svc: Annotated[Service, Depends(service)]) -> Response:
        body = await read_json(request, SwapRequest)
        path = inside_root(body.path, settings.root)
        async with svc.lock:
            old = svc.served
            try:
                await run_in_threadpool(svc.commit, {"op": "swap", "path": str(path)}, lambda _: (svc.load(path), None))
            except ArtifactError as e:
                svc.metrics.swap_failures.inc()
                log.error("serve: swap to %s refused, still serving %s: %s", path, old and old.model_version, e)
                raise HTTPException(409, f"artifact refused, still serving the previous version: {e}") from None
            new = svc.served
            processes = await run_in_threadpool(svc.wait_workers)
        log.info("serve: swapped %s -> %s", old and old.model_version, new.model_version)
        return json_response({"model_version": new.model_version, "previous": old and old.model_version,
                              "processes": processes})

    @r.post("/items", summary="Embed new items from features and index them (until the next swap or restart)",
            openapi_extra=json_body_schema(AddItemsRequest))
    async def add_items(request: Request, svc: Annotated[Service, Depends(service)],
                        _: Annotated[Served, Depends(served_now)]) -> Response:
        body = await read_json(request, AddItemsRequest)
        if not body.items or len(body.items) > settings.max_new_items:
            raise HTTPException(422, f"give between 1 and {settings.max_new_items} items")
        async with svc.lock:
            try:
                ignored = await run_in_threadpool(svc.commit, {"op": "items", "items": body.items},
                                                  lambda served: served.with_items(body.items))
            except DataError as e:
                raise HTTPException(422, str(e)) from None
            new = svc.served
            processes = await run_in_threadpool(svc.wait_workers)
        return json_response({"added": len(body.items), "n_items": int(new.index.ntotal),
                              "model_version": new.model_version, "persisted": False, "ignored_fields": ignored,
                              "processes": processes})

    return r
