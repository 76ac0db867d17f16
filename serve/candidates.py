"""``GET /candidates``: the top-k candidates of one user (unknown users get conversion popularity);
``POST /candidates``: the same with fresh events in the body, which the user tower reads at request time after
the user's stored and live events. A user with live events (``POST /events``) is answered from them either way."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from serve.events import MAX_ID, EventModels, JsonInt, int_or_str, plain
from serve.limits import check_query
from serve.responses import CandidatesResponse, LiveCandidatesResponse, json_response
from serve.service import Service
from serve.settings import Settings
from serve.store import Served

ALLOWED = {"user", "k", "exclude_purchased"}


def router(settings: Settings, models: EventModels) -> APIRouter:
    """The routes, with k's bounds and default from the settings, events typed by the artifact's ids."""
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
        svc: Service = request.app.state.service
        served = svc.served
        if served is None:
            raise HTTPException(503, "no artifact loaded")
        uid = served.users.parse(user)
        live = await svc.store.get(str(uid)) if uid is not None else []
        body, _ = answer(svc, served, uid, user, live, k, exclude_purchased)
        return json_response(body)

    class CandidatesRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        user: int_or_str(JsonInt, Annotated[str, StringConstraints(strict=True, min_length=1, max_length=MAX_ID)]) \
            | None = Field(None, description="user id (optional); one the artifact does not know is a new user")
        k: int = Field(settings.default_k, ge=1, le=settings.max_k, description="number of candidates")
        exclude_purchased: bool = Field(False, description="drop items the user (or these events) converted on")
        events: list[models.event] = Field(default_factory=list, max_length=settings.max_request_events,
                                           description="fresh events, after the user's stored and live ones")

    @r.post("/candidates", response_model=LiveCandidatesResponse, summary="Top-k candidates from fresh events",
            responses={503: {"description": "no artifact loaded yet"}})
    async def candidates_live(request: Request, body: CandidatesRequest) -> Response:
        svc: Service = request.app.state.service
        served = svc.served
        if served is None:
            raise HTTPException(503, "no artifact loaded")
        uid = None if body.user is None else served.users.parse(body.user)  # None: no user of this artifact
        live = await svc.store.get(str(uid)) if uid is not None else []
        out, ignored = answer(svc, served, uid, body.user, live + plain(body.events), body.k,
                                    body.exclude_purchased)
        out["ignored_events"] = ignored
        return json_response(out)

    return r


def answer(svc: Service, served: Served, uid: int | str | None, raw_user, events: list[dict], k: int,
                 exclude_purchased: bool) -> tuple[dict, int]:
    """The response body for a user and their live events (stored answer when none is usable), and how many
    events the model could not read."""
    if events:
        fresh, ignored = served.fresh_tail(events)
        fallback, ids, scores = served.candidates_live(uid, fresh, k, exclude_purchased)
        if len(fresh):
            svc.metrics.live_answers.inc()
    else:
        ignored = 0
        fallback, ids, scores = served.candidates(uid, k, exclude_purchased)
    if fallback:
        svc.metrics.fallbacks.inc()
    user = uid if uid is not None else raw_user if isinstance(raw_user, str) else None
    return {"user": user, "k": k, "model_version": served.model_version, "fallback": fallback,
            "candidates": [{"item_id": i, "score": s} for i, s in zip(ids, scores, strict=True)]}, ignored
