"""Live events: ``POST /events`` appends to users' live histories (its own bearer token); the event model and
the checks that ``POST /candidates`` shares. A request with one bad event stores nothing."""

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    WithJsonSchema,
)

from retrieval.contract import INT64
from retrieval.events import MAX_TS_S
from serve.ids import CANONICAL_INT
from serve.limits import json_body_schema, read_json
from serve.responses import json_response
from serve.service import Service, served_now, service
from serve.settings import Settings
from serve.store import Served

MAX_ID = 1024  # longest string id


def _json_integer(v: Any) -> Any:
    """JSON Schema's integer: a number with no fractional part (1.0 is 1); never a string or a boolean."""
    if isinstance(v, bool) or isinstance(v, str):
        raise ValueError("must be an integer")
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def json_int(lo: int | None = None, hi: int | None = None) -> Any:
    """An integer (in [lo, hi] when given) as JSON Schema has it (1.0 is 1; strings and booleans are not
    integers), with its bounds stated in the OpenAPI schema (pydantic leaves them out beside a validator)."""
    bounds = {k: v for k, v in (("minimum", lo), ("maximum", hi)) if v is not None}
    return Annotated[int, BeforeValidator(_json_integer), Field(strict=True, ge=lo, le=hi),
                     WithJsonSchema({"type": "integer", **bounds})]


JsonInt = json_int()  # any integer: one outside int64 names no user or item of an artifact, so it is unknown
Int64 = json_int(*INT64)


def id_type(kind: str, canonical_string: bool = False, stored: bool = False) -> Any:
    """The JSON type of an id, as the artifact types it: an integer (an int64 where it is stored), or a string of
    1 to MAX_ID characters; with ``canonical_string``, an int id may also come as its canonical decimal spelling."""
    if kind == "str":
        return Annotated[str, StringConstraints(strict=True, min_length=1, max_length=MAX_ID)]
    integer = Int64 if stored else JsonInt
    if canonical_string:
        return int_or_str(integer, Annotated[str, StringConstraints(strict=True, pattern=f"^{CANONICAL_INT.pattern}$")])
    return integer


def int_or_str(integer: Any, string: Any) -> Any:
    """A value that is one of two types, chosen by its JSON type, so that an error's loc ends in "int" or "str"."""
    return Annotated[Annotated[integer, Tag("int")] | Annotated[string, Tag("str")],
                     Discriminator(lambda v: "str" if isinstance(v, str) else "int")]


@dataclass(frozen=True)
class EventModels:
    """Request models typed by the served artifact's ids, so the OpenAPI schema says exactly what is accepted."""

    event: type[BaseModel]
    events_request: type[BaseModel]


def event_models(item_ids: str, user_ids: str) -> EventModels:
    class LiveEvent(BaseModel):
        model_config = ConfigDict(extra="forbid")
        item_id: id_type(item_ids) = Field(description="the item, typed as the artifact's item ids")
        event: str = Field(min_length=1, max_length=64, description="event name (the model's roles say which "
                           "it reads)")
        ts: json_int(0, MAX_TS_S) = Field(description="epoch seconds")
        dwell_s: float | None = Field(None, ge=0, allow_inf_nan=False, description="seconds; omitted: derived "
                                      "from the gap to the next event, as in training")

    class UserEvent(LiveEvent):  # kept in the live store: ids within the artifact's types
        item_id: id_type(item_ids, stored=True) = Field(description="the item, typed as the artifact's item ids")
        user_id: id_type(user_ids, canonical_string=True, stored=True) = Field(
            description="the user, typed as the artifact's user ids")

    class EventsRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        events: list[UserEvent] = Field(min_length=1)

    return EventModels(LiveEvent, EventsRequest)


def plain(events: list[BaseModel]) -> list[dict[str, Any]]:
    """Events as the live store keeps them (raw, as posted)."""
    return [{"item_id": e.item_id, "event": e.event, "ts": e.ts, "dwell_s": e.dwell_s} for e in events]


def router(settings: Settings, models: EventModels) -> APIRouter:
    # The bearer token of /events is checked in serve.limits.RequestLimits, before the body is read.
    r = APIRouter(responses={401: {"description": "missing or wrong bearer token"},
                             403: {"description": "/events disabled (no events token configured)"},
                             413: {"description": "request body too large"}})

    @r.post("/events", summary="Append events to users' live histories",
            openapi_extra=json_body_schema(models.events_request))
    async def post_events(request: Request, svc: Annotated[Service, Depends(service)],
                          served: Annotated[Served, Depends(served_now)]) -> Response:
        body = await read_json(request, models.events_request)
        if len(body.events) > settings.max_post_events:
            raise RequestValidationError([{"loc": ["body", "events"], "type": "too_long",
                                           "msg": f"{len(body.events)} events; at most {settings.max_post_events}"}])
        batch: dict[str, list[dict[str, Any]]] = {}
        for e, raw in zip(body.events, plain(body.events), strict=True):
            batch.setdefault(str(e.user_id), []).append(raw)  # canonical: an int, or its canonical spelling
        await svc.store.append(batch)  # every event checked first: a bad one stores nothing
        svc.metrics.live_events.inc(len(body.events))
        names = set(served.event_names)
        return json_response({"accepted": len(body.events), "users": len(batch), "store": svc.store.kind,
                              "readable_by_model": sum(e.event in names for e in body.events)})

    return r
