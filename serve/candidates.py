"""``GET /candidates``: the top-k candidates of one user (unknown users get conversion popularity)."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from serve.limits import check_query
from serve.responses import CandidatesResponse, json_response
from serve.service import Service, served_now, service
from serve.settings import Settings
from serve.store import Served

ALLOWED = {"user", "k", "exclude_purchased"}


async def strict_query(request: Request) -> None:  # async: a plain def would cost a threadpool hop
    check_query(request, ALLOWED)


def router(settings: Settings) -> APIRouter:
    """The route, with k's bounds and default from the settings."""
    r = APIRouter()

    # An async def answers on the event loop: a search is shorter than handing the request to a thread, so one
    # process answers on one core; scale out with processes.
    @r.get("/candidates", response_model=CandidatesResponse, dependencies=[Depends(strict_query)],
           responses={503: {"description": "no artifact loaded yet"}}, summary="Top-k candidates for a user")
    async def candidates(
        svc: Annotated[Service, Depends(service)],
        served: Annotated[Served, Depends(served_now)],
        user: Annotated[str, Query(min_length=1, max_length=settings.max_user_len, description="user id")],
        k: Annotated[int, Query(ge=1, le=settings.max_k, description="number of candidates")] = settings.default_k,
        exclude_purchased: Annotated[bool, Query(description="drop items the user already converted on")] = False,
    ) -> Response:
        uid = served.users.parse(user)
        fallback, ids, scores = served.candidates(uid, k, exclude_purchased)
        if fallback:
            svc.metrics.fallbacks.inc()
        return json_response({"user": uid if uid is not None else user, "k": k, "model_version": served.model_version,
                              "fallback": fallback,
                              "candidates": [{"item_id": i, "score": s} for i, s in zip(ids, scores, strict=True)]})

    return r
