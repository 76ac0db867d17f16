"""``GET /candidates``: the top-k candidates of one user (unknown users get conversion popularity)."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response

from serve.limits import check_query
from serve.responses import CandidatesResponse, json_response
from serve.settings import Settings

ALLOWED = {"user", "k", "exclude_purchased"}


def router(settings: Settings) -> APIRouter:
    """The route, with k's bounds and default from the settings."""
    r = APIRouter()

    # An async def answers on the event loop: a search is shorter than handing the request to a thread, so one
    # process answers on one core; scale out with processes. No Depends on this path: FastAPI's dependency
    # solving costs a good share of a search, so the state is read from the app directly.
    @r.get("/candidates", response_model=CandidatesResponse,
           responses={503: {"description": "no artifact loaded yet"}}, summary="Top-k candidates for a user")
    async def candidates(
        request: Request,
        user: Annotated[str, Query(min_length=1, max_length=settings.max_user_len, description="user id")],
        k: Annotated[int, Query(ge=1, le=settings.max_k, description="number of candidates")] = settings.default_k,
        exclude_purchased: Annotated[bool, Query(description="drop items the user already converted on")] = False,
    ) -> Response:
        check_query(request, ALLOWED)  # unknown or repeated parameters
        svc = request.app.state.service
        served = svc.served
        if served is None:
            raise HTTPException(503, "no artifact loaded")
        uid = served.users.parse(user)
        fallback, ids, scores = served.candidates(uid, k, exclude_purchased)
        if fallback:
            svc.metrics.fallbacks.inc()
        return json_response({"user": uid if uid is not None else user, "k": k, "model_version": served.model_version,
                              "fallback": fallback,
                              "candidates": [{"item_id": i, "score": s} for i, s in zip(ids, scores, strict=True)]})

    return r
