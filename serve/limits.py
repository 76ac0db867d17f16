"""What the service bounds before any work: the query string, the request body, the time a client may take to
send its headers and body. Each bound is a setting (serve/settings.py) and answers with its own status."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serve.admission import Admission

MAX_PARAMS = 16  # more query parameters than any endpoint takes: refused whole, before looking at each
MAX_NAME = 64  # an unknown parameter's name is echoed in the error up to this length
MAX_QUERY_BYTES = 4096  # longer query strings are refused (414) before they are parsed
MAX_URL_BYTES = 8192  # a longer request target is refused by the protocol while it arrives
_BODY = orjson.dumps({"detail": f"request target over {MAX_URL_BYTES} bytes"})
URL_TOO_LONG = (b"HTTP/1.1 414 URI Too Long\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(_BODY)).encode() + b"\r\nconnection: close\r\n\r\n" + _BODY)


def check_query(request: Request, allowed: set[str]) -> None:
    """Unknown or repeated parameters are errors (a typo like ?K=10 must not silently mean k=100). Linear in the
    query; RequestLimits has refused more than MAX_PARAMS already, and a name is echoed cut to MAX_NAME."""
    counts = Counter(k for k, _ in request.query_params.multi_items())
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


class RequestLimits:
    """Pure ASGI middleware, before any parsing: a query string over MAX_QUERY_BYTES is refused (414), one of
    more than MAX_PARAMS parameters too (422, counted on the raw bytes); a body longer than ``max_bytes`` is
    refused (413) before it is read when its Content-Length says so, and as soon as it passes the limit while
    streaming otherwise; a body that takes longer than ``timeout_s`` to arrive is refused (408)."""

    def __init__(self, app, max_bytes: int, timeout_s: float, tokens: dict[str, str | None]):
        """tokens: path prefix -> the bearer token its requests need (None: those endpoints are disabled)."""
        self.app, self.max_bytes, self.timeout_s, self.tokens = app, max_bytes, timeout_s, tokens

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        for prefix, token in self.tokens.items():  # before anything is read or parsed
            if path.startswith(prefix):
                if token is None:
                    return await _refuse(send, 403, f"{prefix}* endpoints are disabled: no token is configured")
                if not bearer(dict(scope["headers"]).get(b"authorization", b"").decode("latin-1"), token):
                    return await _refuse(send, 401, "missing or wrong bearer token",
                                         [(b"www-authenticate", b"Bearer")])
        query = scope.get("query_string", b"")
        if len(query) > MAX_QUERY_BYTES:
            return await _refuse(send, 414, f"query string over {MAX_QUERY_BYTES} bytes")
        n = query.count(b"&") + 1 if query else 0
        if n > MAX_PARAMS:
            return await _refuse(send, 422, [{"loc": ["query"], "type": "too_many_parameters",
                                              "msg": f"{n} query parameters; at most {MAX_PARAMS}"}])
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


def bearer(authorization: str | None, token: str) -> bool:
    """True when an Authorization header carries ``token`` under the Bearer scheme (case-insensitive, RFC 7235)."""
    scheme, _, given = (authorization or "").strip().partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(), token.encode())


async def _refuse(send, status: int, detail: str | list, headers: list | None = None) -> None:
    body = orjson.dumps({"detail": detail})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class ServeConfig(uvicorn.Config):
    """uvicorn's Config with the header deadline of :class:`HeaderDeadline` and the admission of new connections
    (serve/admission.py). A module-level class: with several workers uvicorn pickles the config into each spawned
    process, which then keeps its own admission schedule."""

    def __init__(self, app, header_timeout_s: float, admission: Admission | None = None, **kwargs):
        super().__init__(app, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.admission = admission

    def load(self) -> None:
        """uvicorn's load, then the admission counts its delays and refusals in the app's metrics."""
        super().load()
        app = self.loaded_app
        for _ in range(8):  # uvicorn's wrappers (proxy headers, ASGI2, message logger) keep what they wrap in .app
            if isinstance(app, FastAPI):
                break
            app = getattr(app, "app", None)
        if self.admission is not None and isinstance(app, FastAPI):
            self.admission.metrics = app.state.service.metrics


class HeaderDeadline(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on each request's headers (``config.header_timeout_s``): from
    the connection's start, and from the first byte of every later request on it, the headers must be complete
    in time or the connection is closed. uvicorn arms no timer before a connection's first response, so a silent
    client, or one sending a header byte at a time (slowloris), would hold its connection forever."""

    _deadline: asyncio.TimerHandle | None = None
    _refused = False
    _made = False  # uvicorn's connection_made ran: not for a connection refused or still waiting for admission
    _turn: asyncio.TimerHandle | None = None  # a connection waiting for admission: when it will be read
    _early: tuple | list = ()  # bytes handed over while it waited for admission, fed in when its turn comes

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.config.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport) -> None:
        admission: Admission | None = self.config.admission
        wait = 0.0
        if admission is not None:
            peer = transport.get_extra_info("peername")
            wait = admission.wait(peer[0] if isinstance(peer, tuple) else None, self.loop.time())
        if wait is None:  # over the address's rate: refused unread
            self._refused = True
            transport.write(admission.refusal)
            transport.close()
        elif wait > 0:  # its turn comes later: unread (the kernel holds what it sends) until then
            transport.pause_reading()
            self._turn = self.loop.call_later(wait, self._admit, transport)
            self._early: list[bytes] = []
        else:
            self._admit(transport)

    def _admit(self, transport) -> None:
        if self._turn is not None:
            self._turn = None
            self.config.admission.done_waiting()
            transport.resume_reading()
        self._made = True
        super().connection_made(transport)
        self._arm()
        for data in self._early:
            self.data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > MAX_URL_BYTES:  # refused while it streams in: never collected, never parsed
            self._disarm()
            self._refused = True
            self.transport.write(URL_TOO_LONG)
            self.transport.close()
            raise ValueError("request target too long")  # stops the parser (uvicorn answers a parse error...)

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # ... with a 400, unless the 414 went out already
            super().send_400_response(msg)

    def data_received(self, data: bytes) -> None:
        if self._made and not self._refused:
            super().data_received(data)
        elif self._turn is not None:  # paused reading still hands over what was read before the pause (uvloop:
            # without this buffer a paced request is lost, test_admission's flood times out); fed in at its turn
            self._early.append(data)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc) -> None:
        self._disarm()
        if self._turn is not None:  # the client left while waiting for admission
            self._turn.cancel()
            self._turn = None
            self.config.admission.done_waiting()
        if self._made:
            super().connection_lost(exc)

