"""What every Conclave HTTP service shares: a guarded edge, JSON errors, fast JSON.

Every error leaves as ``{"error": {"code", "message", "field"?}}`` and never carries a
traceback, a hostname or SQL (RELIABILITY.md E11):

- malformed JSON, or an object with a duplicate key: 400, field ``body`` (orjson would
  keep the last value silently; two parsers could disagree on which one counts);
- a content type other than ``application/json`` (charset, if given, ``utf-8``): 415;
- a body over the limit: 413, decided on the stream before the body is read whole (E3):
  at once from ``Content-Length``, else by counting the chunks as they arrive;
- a body that has not arrived within the body timeout: 408, and the connection closes;
- more than `MAX_HEADERS` headers or `MAX_HEADER_BYTES` of them: 431;
- an invalid field (`InvalidRequestError`, FastAPI's `RequestValidationError`): 422
  naming the field;
- a method the path does not serve: 405 with ``Allow`` listing every method of every route
  of that path;
- any other HTTP error keeps its status (404, ...);
- anything unexpected: 500 ``internal`` with a fixed message; the traceback goes to the
  server's log only.

Use `install_http_common` on an app; `conclave.services.json_body.read_json` reads a request
body under these rules (the 400 and 415 are raised there). A pure ASGI route (the agent
services' ``POST /run``) uses the same pieces: `check_json_type` and `parse_json` (of
`json_body`), `error_of` and `send_json`, inside `BodyLimitMiddleware`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conclave.errors import InvalidRequestError
from conclave.observability.http import HttpMetricsMiddleware
from conclave.observability.metrics import CONTENT_TYPE, render
from conclave.observability.tracing_http import TraceMiddleware

log = structlog.get_logger(__name__)

#: Seconds a request body may take to arrive (settings: ``api.body_timeout_s``, ``agents.``).
DEFAULT_BODY_TIMEOUT_S = 10.0
#: Request headers allowed; a browser sends about 15, our clients under 10.
MAX_HEADERS = 100
#: Bytes of request headers allowed (names and values), as h11's default head limit.
MAX_HEADER_BYTES = 16 * 1024
_MAX_MESSAGE = 300
_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    431: "headers_too_large",
    503: "unavailable",
}


class ApiError(HTTPException):
    """An error answered as ``{"error": {"code", "message", "field"}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(status_code=status, detail=message)
        self.code = code
        self.message = message
        self.field = field

    def body(self) -> dict[str, Any]:
        """The JSON error body of this error."""
        return error_body(self.code, self.message, self.field)


class BodyTooLargeError(ApiError):
    """The request body is longer than the service accepts."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, "payload_too_large", f"request body over {limit} bytes",
                         field="body")  # fmt: skip


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """``data`` serialised with orjson (numpy arrays allowed; NaN is refused upstream)."""
    body = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    """The error shape every service answers with (message cut to 300 characters)."""
    err: dict[str, Any] = {"code": code, "message": message[:_MAX_MESSAGE]}
    if field is not None:
        err["field"] = field[:100]
    return {"error": err}


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """An error `Response` in the common shape."""
    return json_response(error_body(code, message, field), status, headers)


class BodyTimeoutError(ApiError):
    """The request body did not arrive in time (a slow or stalled client): 408."""

    def __init__(self, timeout_s: float) -> None:
        message = f"request body not received within {timeout_s:g} s"
        super().__init__(408, "request_timeout", message, field="body")


class BodyLimitMiddleware:
    """Pure ASGI guard of every request's head and body: size, count, time.

    - more than ``max_headers`` headers, or more than ``max_header_bytes`` of them: 431
      before the app runs (the server bounds the header block too: `conclave.services.
      http_server`, this holds under any server);
    - a declared ``Content-Length`` over ``max_body_bytes`` (or not a number): 413 (400)
      before the app runs; otherwise the body is counted chunk by chunk as the app reads
      it, and the read fails with `BodyTooLargeError` (413) the moment the count passes
      the limit, so chunked bodies without a length are refused without being held whole;
    - the whole body must arrive within ``body_timeout_s`` of the request's start, else
      the read fails with `BodyTimeoutError` (408): a client that announces 100 bytes and
      sends 10 holds a connection for that long, not for as long as it likes.

    An answer given while the body is unread (408, 413) carries ``Connection: close``: the
    rest of the body would otherwise be read as the next request.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
        max_headers: int = MAX_HEADERS,
        max_header_bytes: int = MAX_HEADER_BYTES,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes

    def _refusal(self, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[str, Any]] | None:
        if len(headers) > self.max_headers:
            message = f"more than {self.max_headers} request headers"
            return 431, error_body("headers_too_large", message, "headers")
        if sum(len(k) + len(v) for k, v in headers) > self.max_header_bytes:
            message = f"request headers over {self.max_header_bytes} bytes"
            return 431, error_body("headers_too_large", message, "headers")
        for key, value in headers:
            if key == b"content-length":
                if not value.isdigit():
                    return 400, error_body("bad_request", "invalid Content-Length",
                                           "content-length")  # fmt: skip
                if int(value) > self.max_body_bytes:
                    return 413, BodyTooLargeError(self.max_body_bytes).body()
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = self._refusal(scope.get("headers", []))
        if refused is not None:
            await _send(send, *refused)
            return
        limit, timeout_s = self.max_body_bytes, self.body_timeout_s
        deadline = asyncio.get_running_loop().time() + timeout_s
        received = 0
        body_done = started = unread = False

        async def guarded_receive() -> Message:
            nonlocal received, body_done, unread
            if body_done:  # e.g. waiting for the client to disconnect: no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                unread = True
                raise BodyTimeoutError(timeout_s) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    unread = True
                    raise BodyTooLargeError(limit)
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if unread:
                    message = {**message, "headers": [*message.get("headers", ()), _CLOSE]}
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracking_send)
        except (BodyTooLargeError, BodyTimeoutError) as exc:  # an app that does not answer it
            if started:
                raise
            await _send(send, exc.status_code, exc.body())


_CLOSE = (b"connection", b"close")


async def _send(send: Send, status: int, body: dict[str, Any]) -> None:
    raw = orjson.dumps(body)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(raw)).encode()),
        _CLOSE,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": raw})


async def send_json(send: Send, status: int, raw: bytes) -> None:
    """Answer ``raw`` (JSON bytes) with ``status`` on a pure ASGI ``send``."""
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(raw))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": raw})


def error_of(exc: ApiError | InvalidRequestError) -> tuple[int, bytes]:
    """Status and JSON body the error handlers of `install_http_common` answer for ``exc``."""
    if isinstance(exc, ApiError):
        return exc.status_code, orjson.dumps(exc.body())
    return 422, orjson.dumps(error_body(exc.reason, str(exc), exc.field))


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or "body"


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str:
    """The ``Allow`` value for ``request``'s path: every method some route serves on it.

    Starlette answers 405 from the first route whose path matches, so a path served by
    two routes (``GET`` and ``POST /accounts``) would list only one of them. Each method is
    tried against every route (included routers too) through the routes' own matching.
    """
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = exc.headers
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": allowed_methods(request)}
    if isinstance(exc, ApiError):
        return error_response(exc.status_code, exc.code, exc.message, exc.field, headers)
    code = _CODES.get(exc.status_code, "error" if exc.status_code >= 500 else "bad_request")
    return error_response(exc.status_code, code, str(exc.detail), None, headers)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        return error_response(400, "invalid_json", "malformed JSON", "body")
    return error_response(422, "invalid_request", str(first.get("msg")),
                          _field(tuple(first.get("loc", ()))))  # fmt: skip


async def _on_invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidRequestError)
    return error_response(422, exc.reason, str(exc), exc.field)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled_error", path=request.url.path, exc_info=exc)
    return error_response(500, "internal", "internal error")


def install_http_common(
    app: FastAPI,
    *,
    max_body_bytes: int,
    service: str,
    metrics: bool = True,
    fixed_routes: tuple[str, ...] = (),
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    bare_routes: tuple[str, ...] = (),
) -> None:
    """Add the edge guard (`BodyLimitMiddleware`: ``max_body_bytes``, ``body_timeout_s``,
    headers) and the JSON error handlers of this module to ``app``, and (with ``metrics``)
    ``GET /metrics`` and the request metrics of ``service`` (its name in the ``service``
    label); ``fixed_routes`` are paths answered in front of the router; ``bare_routes``
    open their own span as the caller's child, with no server span (`TraceMiddleware`)."""
    app.add_middleware(
        BodyLimitMiddleware, max_body_bytes=max_body_bytes, body_timeout_s=body_timeout_s
    )
    if metrics:
        # outermost: a 413 from the body limit is timed and counted too
        app.add_middleware(HttpMetricsMiddleware, service=service, fixed_routes=fixed_routes)

        @app.get(
            "/metrics",
            summary="Prometheus metrics of this process",
            tags=["operations"],
            response_class=PlainTextResponse,  # documented as text/plain, as it answers
        )
        async def metrics_endpoint() -> Response:
            return Response(render(), media_type=CONTENT_TYPE)

    # outermost of all: the request's server span (a no-op while tracing is off)
    app.add_middleware(
        TraceMiddleware, service=service, fixed_routes=fixed_routes, bare_routes=bare_routes
    )
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(InvalidRequestError, _on_invalid_request)
    app.add_exception_handler(Exception, _on_unexpected)
