"""Liveness, readiness and Prometheus metrics."""

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse, Response

from serve.responses import json_response
from serve.service import Service, service

router = APIRouter()


@router.get("/healthz", summary="Alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Artifact loaded", responses={503: {"description": "no artifact loaded yet"}})
async def readyz(svc: Annotated[Service, Depends(service)]) -> Response:
    s = svc.served
    if s is None:
        return json_response({"status": "loading"}, 503)
    return json_response({"status": "ready", "model_version": s.model_version, "n_items": int(s.index.ntotal)})


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def prometheus(svc: Annotated[Service, Depends(service)]) -> Response:
    body, content_type = svc.metrics.render()
    return Response(body, media_type=content_type)
