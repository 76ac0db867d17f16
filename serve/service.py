"""The running service's state, one per app: settings, metrics, the artifact being served, the swap lock; and
the dependencies that hand them to the routes."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

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


def service(request: Request) -> Service:
    return request.app.state.service


def served_now(svc: Annotated[Service, Depends(service)]) -> Served:
    if svc.served is None:
        raise HTTPException(503, "no artifact loaded")
    return svc.served


def bearer(authorization: str | None, token: str) -> bool:
    """True when an Authorization header carries ``token`` under the Bearer scheme (case-insensitive, RFC 7235)."""
    scheme, _, given = (authorization or "").strip().partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(), token.encode())


def admin(svc: Annotated[Service, Depends(service)], authorization: Annotated[str | None, Header()] = None) -> None:
    """The admin endpoints' token check; it runs before their body is read."""
    token = svc.settings.admin_token
    if token is None:
        raise HTTPException(403, "admin endpoints are disabled: no admin token is configured")
    if not bearer(authorization, token.get_secret_value()):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
