"""``GET /candidates``: the top-k candidates of one user (unknown users get conversion popularity);
``POST /candidates``: the same with fresh events in the body, which the user tower reads at request time after
the user's stored and live events. A user with live events (``POST /events``) is answered from them either way."""

import itertools
import re
from contextlib import nullcontext
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, WithJsonSchema

from index.artifact import Manifest
from retrieval.utility import MAX_TEXT, PROBABILITY, Utility, UtilityError
from serve.events import MAX_ID, EventModels, JsonInt, int_or_str, plain
from serve.limits import check_query
from serve.responses import CandidatesResponse, LiveCandidatesResponse, json_response
from serve.service import Service
from serve.settings import Settings
from serve.store import Answer, Served

ALLOWED = {"user", "k", "exclude_purchased", "utility", "utility_scale", "scores"}
UTILITY_DOC = ("rank by a utility: head:weight,... (e.g. conversion:1,engagement:0.3) or a preset the artifact "
               "names; the top k by the weighted sum of the heads' calibrated probabilities (utility_scale="
               "probability), or of their raw scores (utility_scale=score). Absent: the conversion head alone")
SCALE_DOC = ("what a utility's weights weigh: probability (each head's calibrated probability: weights keep "
             "their meaning across model versions; every weighted head needs a calibration) or score (raw "
             "scores: one search where the artifact has a joint index)")
Scale = Literal["probability", "score"]


# What FastAPI documents for a route whose parameters it validates (this one validates its query itself).
VALIDATION_ERROR = {"description": "Validation Error",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}}


# A weight as the schema states it: a decimal with a non-zero digit (the service also takes 0 for some heads, as
# long as one weight is above 0, and any float in a JSON body).
POSITIVE = r"([0-9]{0,6}[1-9][0-9]{0,6}(\.[0-9]{1,6})?|[0-9]{1,6}\.[0-9]{0,5}[1-9][0-9]{0,5})"


def utility_schema(m: Manifest) -> tuple[str, dict[str, Any]]:
    """The query pattern and the body schema of a utility, from the artifact the service starts with: its
    heads, each at most once in the artifact's order, or one of its presets. (On the probability scale a
    head without calibration gets a 422: the schema cannot tie one parameter to another. A swap may bring other
    heads; the service checks each request against the artifact it answers from.)"""
    heads = list(m.heads)[:6]  # 2^6 - 1 orderings at most
    terms = [f"{h}:{POSITIVE}" for h in heads]
    subsets = [",".join(t for t, keep in zip(terms, mask, strict=True) if keep)
               for mask in itertools.product((True, False), repeat=len(terms)) if any(mask)]
    presets = [re.escape(p) for p, w in m.utility_presets.items() if set(w) <= set(heads)]
    pattern = "^(" + "|".join(subsets + presets) + ")$"
    body = {"anyOf": [{"type": "string", "pattern": pattern, "maxLength": MAX_TEXT},
                      {"type": "object", "minProperties": 1, "additionalProperties": False,
                       "properties": {h: {"type": "number", "exclusiveMinimum": 0, "maximum": 1e6} for h in heads}},
                      {"type": "null"}]}
    return pattern, body


def router(settings: Settings, models: EventModels, manifest: Manifest) -> APIRouter:
    """The routes, with k's bounds and default from the settings, events typed by the artifact's ids, utilities
    by its heads."""
    r = APIRouter()
    pattern, body_schema = utility_schema(manifest)

    class CandidatesQuery(BaseModel):
        """GET /candidates' query: validated by pydantic from the raw query (:func:`query_of`)."""
        model_config = ConfigDict(extra="forbid")
        user: Annotated[str, StringConstraints(min_length=1, max_length=settings.max_user_len)] = Field(
            description="user id")
        k: int = Field(settings.default_k, ge=1, le=settings.max_k, description="number of candidates")
        exclude_purchased: bool = Field(False, description="drop items the user already converted on")
        utility: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT)] | None = Field(
            None, description=UTILITY_DOC, json_schema_extra={"pattern": pattern})
        utility_scale: Scale = Field(PROBABILITY, description=SCALE_DOC)
        scores: bool = Field(False, description="each candidate's raw score per head, and p_<head> of every "
                             "calibrated head")

    # An async def answers on the event loop: a search is shorter than handing the request to a thread, so one
    # process answers on one core; scale out with processes. No Depends and no declared query parameters on
    # this path: FastAPI's solving of them re-inspects every parameter's annotation on each request, a good
    # share of a search, so the query is validated by one pydantic model (the OpenAPI parameters are written
    # from it) and the state read from the app directly.
    @r.get("/candidates", response_model=CandidatesResponse, summary="Top-k candidates for a user",
           responses={503: {"description": "no artifact loaded yet"}, 422: VALIDATION_ERROR},
           openapi_extra={"parameters": query_parameters(CandidatesQuery)})
    async def candidates(request: Request) -> Response:
        check_query(request, ALLOWED)  # unknown or repeated parameters
        q = query_of(request, CandidatesQuery)
        svc: Service = request.app.state.service
        served = svc.served
        if served is None:
            raise HTTPException(503, "no artifact loaded")
        weights = checked_utility(served, q.utility, q.utility_scale, "query")
        uid = served.users.parse(q.user)
        live = await svc.store.get(str(uid)) if uid is not None else []
        body, _ = await answer(svc, served, uid, q.user, live, q.k, q.exclude_purchased, weights, q.scores)
        return json_response(body)

    class CandidatesRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        user: int_or_str(JsonInt, Annotated[str, StringConstraints(strict=True, min_length=1, max_length=MAX_ID)]) \
            | None = Field(None, description="user id (optional); one the artifact does not know is a new user")
        k: int = Field(settings.default_k, ge=1, le=settings.max_k, description="number of candidates")
        exclude_purchased: bool = Field(False, description="drop items the user (or these events) converted on")
        events: list[models.event] = Field(default_factory=list, max_length=settings.max_request_events,
                                           description="fresh events, after the user's stored and live ones")
        utility: Annotated[Annotated[str, StringConstraints(strict=True, min_length=1, max_length=MAX_TEXT)]
                           | dict[Annotated[str, StringConstraints(max_length=32)], float] | None,
                           WithJsonSchema(body_schema)] = Field(
            None, description=UTILITY_DOC + "; or an object {head: weight}")
        utility_scale: Scale = Field(PROBABILITY, description=SCALE_DOC)
        scores: bool = Field(False, description="each candidate's raw score per head, and p_<head> of every "
                             "calibrated head")

    @r.post("/candidates", response_model=LiveCandidatesResponse, summary="Top-k candidates from fresh events",
            responses={503: {"description": "no artifact loaded yet"}})
    async def candidates_live(request: Request, body: CandidatesRequest) -> Response:
        svc: Service = request.app.state.service
        served = svc.served
        if served is None:
            raise HTTPException(503, "no artifact loaded")
        weights = checked_utility(served, body.utility, body.utility_scale, "body")
        uid = None if body.user is None else served.users.parse(body.user)  # None: no user of this artifact
        live = []
        if uid is not None:
            with svc.batcher.on_the_way() if body.events else nullcontext():  # a run of the tower waits for it
                live = await svc.store.get(str(uid))
        out, ignored = await answer(svc, served, uid, body.user, live + plain(body.events), body.k,
                              body.exclude_purchased, weights, body.scores)
        out["ignored_events"] = ignored
        return json_response(out)

    return r


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """OpenAPI query parameters of a query model, as FastAPI writes declared ones."""
    schema = model.model_json_schema()
    return [{"name": name, "in": "query", "required": name in schema.get("required", []), "schema": prop,
             "description": prop["description"]} for name, prop in schema["properties"].items()]


def query_of(request: Request, model: type[BaseModel]):
    """The request's query as ``model`` (each parameter given once: check_query ran); a 422 names each bad
    parameter, as FastAPI's own query validation does."""
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as e:
        raise RequestValidationError([{"loc": ["query", *err["loc"]], "msg": err["msg"], "type": err["type"]}
                                      for err in e.errors(include_url=False, include_input=False)]) from None


def candidate_list(a: Answer) -> list[dict]:
    """The candidates as the response lists them: item_id, score, p_<head> per calibrated head, scores when
    asked. One comprehension per shape: this runs for every request."""
    if a.raw is None and not a.probs:
        return [{"item_id": i, "score": s} for i, s in zip(a.ids, a.scores, strict=True)]
    if a.raw is None and len(a.probs) == 1:  # the default answer: the conversion head's probability
        (head, p), = a.probs.items()
        name = f"p_{head}"
        return [{"item_id": i, "score": s, name: q} for i, s, q in zip(a.ids, a.scores, p, strict=True)]
    out = [{"item_id": i, "score": s} for i, s in zip(a.ids, a.scores, strict=True)]
    for head, p in a.probs.items():
        for c, q in zip(out, p, strict=True):
            c[f"p_{head}"] = q
    if a.raw is not None:
        for j, c in enumerate(out):
            c["scores"] = {h: v[j] for h, v in a.raw.items()}
    return out


def checked_utility(served: Served, utility: str | dict[str, float] | None, scale: str,
                    where: str) -> Utility | None:
    """The checked utility (None: the conversion head alone); a 422 names what is wrong with it."""
    if utility is None:
        return None
    try:
        return served.utility(utility, scale)
    except UtilityError as e:
        raise RequestValidationError([{"loc": [where, "utility"], "msg": str(e), "type": "value_error"}]) from None


async def answer(svc: Service, served: Served, uid: int | str | None, raw_user, events: list[dict], k: int,
                 exclude_purchased: bool, utility: Utility | None = None,
                 with_scores: bool = False) -> tuple[dict, int]:
    """The response body for a user and their live events (stored answer when none is usable), and how many
    events the model could not read. A live user is embedded with the live users of the requests that arrived
    with this one (serve/batcher.py)."""
    fresh, ignored = served.fresh_tail(events) if events else (None, 0)
    if fresh is not None and len(fresh):
        state = await svc.batcher.state(served, uid, fresh, served.heads_for(utility, with_scores))
        a = served.answer_live(uid, fresh, state, k, exclude_purchased, utility, with_scores)
        svc.metrics.live_answers.inc()
    else:
        a = served.candidates(uid, k, exclude_purchased, utility, with_scores)
    if a.fallback:
        svc.metrics.fallbacks.inc()
    if utility is not None:
        svc.metrics.utility_answers.inc()
        if not a.certified:
            svc.metrics.utility_uncertified.inc()
    user = uid if uid is not None else raw_user if isinstance(raw_user, str) else None
    body = {"user": user, "k": k, "model_version": served.model_version, "fallback": a.fallback,
            "candidates": candidate_list(a)}
    if utility is not None:
        body["utility"], body["utility_scale"] = utility.weights, utility.scale
    return body, ignored
