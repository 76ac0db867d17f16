"""The running service's state, one per app: settings, metrics, the artifact being served, the swap lock; and
the dependencies that hand them to the routes. Tokens are checked before any route runs (serve/limits.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from serve.metrics import Metrics
from serve.settings import Settings
from serve.store import Served, load_served


@dataclass
class Service:
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    served: Served | None = None  # replaced by one assignment: a request sees one version from start to end
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one swap or add at a time

    def load(self, path: Path) -> Served:
        """An artifact, validated whole (its model too) before it may serve."""
        return load_served(path)


# The dependencies are async: FastAPI runs a plain def dependency in its threadpool, a hop that costs more than
# the search it would wrap.
async def service(request: Request) -> Service:
    return request.app.state.service


async def served_now(svc: Annotated[Service, Depends(service)]) -> Served:
    if svc.served is None:
        raise HTTPException(503, "no artifact loaded")
    return svc.served
