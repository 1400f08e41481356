"""What every Conclave HTTP service shares: a body-size limit, JSON errors, fast JSON.

Every error leaves as ``{"error": {"code", "message", "field"?}}`` and never carries a
traceback, a hostname or SQL (RELIABILITY.md E11):

- malformed JSON: 400, field ``body``; a content type other than JSON: 415;
- a body over the limit: 413, decided on the stream before the body is read whole (E3):
  at once from ``Content-Length``, else by counting the chunks as they arrive;
- an invalid field (`InvalidRequestError`, FastAPI's `RequestValidationError`): 422
  naming the field;
- any other HTTP error keeps its status (404, 405, ...);
- anything unexpected: 500 ``internal`` with a fixed message; the traceback goes to the
  server's log only.

Use `install_http_common` on an app; `read_json` reads a request body under these rules.
A pure ASGI route (the agent services' ``POST /run``) uses the same pieces: `check_json_type`,
`parse_json`, `error_of` and `send_json`, inside `BodyLimitMiddleware`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conclave.errors import InvalidRequestError
from conclave.observability.http import HttpMetricsMiddleware
from conclave.observability.metrics import CONTENT_TYPE, render
from conclave.observability.tracing import TraceMiddleware

log = structlog.get_logger(__name__)

_MAX_MESSAGE = 300
_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
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


class BodyLimitMiddleware:
    """Pure ASGI: refuse request bodies over ``max_body_bytes`` with 413, counting the stream.

    A declared ``Content-Length`` over the limit is refused before the app runs; otherwise
    the body is counted chunk by chunk as the app reads it and the read fails with
    `BodyTooLargeError` (413) the moment the count passes the limit, so chunked bodies
    without a length are refused without being held whole.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                if not value.isdigit():
                    await _send(send, 400, error_body("bad_request", "invalid Content-Length",
                                                      "content-length"))  # fmt: skip
                    return
                if int(value) > limit:
                    await _send(send, 413, BodyTooLargeError(limit).body())
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLargeError(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLargeError as exc:  # an app that does not translate HTTP errors itself
            if started:
                raise
            await _send(send, 413, exc.body())


async def _send(send: Send, status: int, body: dict[str, Any]) -> None:
    raw = orjson.dumps(body)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(raw)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": raw})


async def send_json(send: Send, status: int, raw: bytes) -> None:
    """Answer ``raw`` (JSON bytes) with ``status`` on a pure ASGI ``send``."""
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(raw))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": raw})


def check_json_type(content_type: str) -> None:
    """`ApiError` 415 naming ``content-type`` unless JSON (``application/json``, ``*+json``)."""
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", "expected Content-Type: application/json",
                       field="content-type")  # fmt: skip


def parse_json(raw: bytes) -> Any:
    """``raw`` parsed with orjson; `ApiError` 400 naming ``body`` when malformed."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson's message names the position only, never echoes the input
        raise ApiError(400, "invalid_json", f"malformed JSON: {exc}", field="body") from None


def error_of(exc: ApiError | InvalidRequestError) -> tuple[int, bytes]:
    """Status and JSON body the error handlers of `install_http_common` answer for ``exc``."""
    if isinstance(exc, ApiError):
        return exc.status_code, orjson.dumps(exc.body())
    return 422, orjson.dumps(error_body(exc.reason, str(exc), exc.field))


async def read_json(request: Request) -> Any:
    """The request body parsed as JSON: 415 unless JSON, 400 naming ``body`` if malformed."""
    check_json_type(request.headers.get("content-type", ""))
    return parse_json(await request.body())


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or "body"


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if isinstance(exc, ApiError):
        return error_response(exc.status_code, exc.code, exc.message, exc.field, exc.headers)
    code = _CODES.get(exc.status_code, "error" if exc.status_code >= 500 else "bad_request")
    return error_response(exc.status_code, code, str(exc.detail), None, exc.headers)


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
) -> None:
    """Add the body limit and the JSON error handlers of this module to ``app``, and (with
    ``metrics``) ``GET /metrics`` and the request metrics of ``service`` (its name in the
    ``service`` label); ``fixed_routes`` are paths answered in front of the router."""
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=max_body_bytes)
    if metrics:
        # outermost: a 413 from the body limit is timed and counted too
        app.add_middleware(HttpMetricsMiddleware, service=service, fixed_routes=fixed_routes)

        @app.get("/metrics", summary="Prometheus metrics of this process", tags=["operations"])
        async def metrics_endpoint() -> Response:
            return Response(render(), media_type=CONTENT_TYPE)

    # outermost of all: the request's server span (a no-op while tracing is off)
    app.add_middleware(TraceMiddleware, service=service, fixed_routes=fixed_routes)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(InvalidRequestError, _on_invalid_request)
    app.add_exception_handler(Exception, _on_unexpected)
