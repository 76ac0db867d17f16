"""What the service bounds before any work: the query string, the request body, the time a client may take to
send its headers and body. Each bound is a setting (serve/settings.py) and answers with its own status."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_PARAMS = 16  # more query parameters than any endpoint takes: refused whole, before looking at each
MAX_NAME = 64  # an unknown parameter's name is echoed in the error up to this length


def check_query(request: Request, allowed: set[str]) -> None:
    """Unknown or repeated parameters are errors (a typo like ?K=10 must not silently mean k=100). Linear in the
    query, and the error names at most MAX_PARAMS parameters, each cut to MAX_NAME characters."""
    items = request.query_params.multi_items()
    if len(items) > MAX_PARAMS:
        raise RequestValidationError([{"loc": ["query"], "type": "too_many_parameters",
                                       "msg": f"{len(items)} query parameters; at most {MAX_PARAMS}"}])
    counts = Counter(k for k, _ in items)
    errors = [{"loc": ["query", k[:MAX_NAME]], "msg": "unknown parameter", "type": "extra_forbidden"}
              for k in sorted(counts) if k not in allowed]
    errors += [{"loc": ["query", k], "msg": "parameter given more than once", "type": "repeated"}
               for k in sorted(counts) if k in allowed and counts[k] > 1]
    if errors:
        raise RequestValidationError(errors)


def json_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a body an endpoint reads itself (after its token check): what FastAPI would have written."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


async def read_json(request: Request, model: type[BaseModel]) -> Any:
    """The request body as ``model``, read only now (the body limit applies while it streams in); a 422 names
    each bad field, as FastAPI's own body validation does."""
    raw = await request.body()
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        errors = [{"loc": ["body", *err["loc"]], "msg": err["msg"], "type": err["type"]}
                  for err in e.errors(include_url=False, include_input=False)[:MAX_PARAMS]]
        raise RequestValidationError(errors) from None


class BodyLimit:
    """Pure ASGI middleware: a body longer than ``max_bytes`` is refused (413) before it is read when its
    Content-Length says so, and as soon as it passes the limit while streaming otherwise; a body that takes
    longer than ``timeout_s`` to arrive is refused (408)."""

    def __init__(self, app, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await _refuse(send, 413, f"request body over {self.max_bytes} bytes")
        loop = asyncio.get_running_loop()
        deadline, received = None, 0

        async def limited():
            nonlocal deadline, received
            deadline = deadline or loop.time() + self.timeout_s
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except TimeoutError:
                raise HTTPException(408, f"request body not received within {self.timeout_s:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, f"request body over {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


async def _refuse(send, status: int, detail: str) -> None:
    body = orjson.dumps({"detail": detail})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def header_deadline_protocol(timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a deadline on each request's headers: from the connection's start, and
    from the first byte of every later request on it, the headers must be complete within ``timeout_s`` or the
    connection is closed. uvicorn arms no timer before a connection's first response, so a silent client, or
    one sending a header byte at a time (slowloris), would hold its connection forever."""

    class HeaderDeadline(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadline
