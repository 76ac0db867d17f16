"""Response bodies: the candidates' shape (documented in OpenAPI) and a fast JSON response."""

from typing import Any

import orjson
from fastapi.responses import Response
from pydantic import BaseModel, Field


class Candidate(BaseModel):
    item_id: int | str
    score: float


class CandidatesResponse(BaseModel):
    user: int | str | None
    k: int = Field(description="the k asked for; fewer candidates come back only when the catalogue holds fewer")
    model_version: str = Field(description="artifact version @ checkpoint hash (+N items.DIGEST after live adds)")
    fallback: str | None = Field(description='null, or "popular" for a user the model has never seen')
    candidates: list[Candidate]


class LiveCandidatesResponse(CandidatesResponse):
    ignored_events: int = Field(description="events the model could not read (unknown item, event outside its roles)")


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")
