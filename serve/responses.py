"""Response bodies: the candidates' shape (documented in OpenAPI) and a fast JSON response."""

from typing import Any

import orjson
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field


class Candidate(BaseModel):
    model_config = ConfigDict(extra="allow")  # p_<head>: one per calibrated head, named by the artifact's heads
    item_id: int | str
    score: float = Field(description="the conversion head's served score; with a utility, the utility's value")
    p_conversion: float | None = Field(None, description="calibrated probability that the user converts on this "
                                       "item in the horizon (absent: an uncalibrated artifact, or the fallback); "
                                       "p_<head> likewise for every other head of a utility answer")
    scores: dict[str, float] | None = Field(None, description="raw served score per head (when asked: scores=true)")


class CandidatesResponse(BaseModel):
    user: int | str | None
    k: int = Field(description="the k asked for; fewer candidates come back only when the catalogue holds fewer")
    model_version: str = Field(description="artifact version @ checkpoint hash (+N items.DIGEST after live adds)")
    fallback: str | None = Field(description='null, or "popular" for a user the model has never seen')
    candidates: list[Candidate]
    utility: dict[str, float] | None = Field(None, description="the weights the answer was ranked by (when asked)")
    utility_scale: str | None = Field(None, description="what those weights weighed: probability or score")


class LiveCandidatesResponse(CandidatesResponse):
    ignored_events: int = Field(description="events the model could not read (unknown item, event outside its roles)")


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")
