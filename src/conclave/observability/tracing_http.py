"""Server spans for any ASGI app (`TraceMiddleware`): one per HTTP request, a child of the
caller's W3C ``traceparent``; see `conclave.observability.tracing` for the rest.

Server spans hold only the method, the route template and the status: never the query
string, a header or a body. While tracing is off the middleware calls the app straight
through.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.trace import Span, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conclave.observability.tracing import enabled, remote_parent, server_span


def _parent(scope: Scope) -> otel_context.Context | None:
    """The remote parent named by the request's ``traceparent``, if any."""
    carrier: dict[str, str] = {}
    for key, value in scope.get("headers", ()):
        if key == b"traceparent" or key == b"tracestate":
            carrier[key.decode("latin-1")] = value.decode("latin-1")
    return remote_parent(carrier) if carrier else None


class TraceMiddleware:
    """Pure ASGI: one server span per HTTP request of ``service``, a child of the caller's
    ``traceparent`` when it sends one; passes straight through while tracing is off.

    Named ``METHOD route-template`` (``fixed_routes`` are paths answered in front of the
    router, such as an agent's ``/run``), else ``METHOD path``; attributes: method, route
    and response status only.

    ``bare_routes`` get no server span of their own: the caller's ``traceparent`` only
    becomes the current context, so the span the route opens itself is the caller's child.
    An agent's ``POST /run`` is one: its ``agent.compute`` span says all a server span would
    (the caller's client span holds the status), and nine calls a run made the second span
    per call the largest part of tracing's cost in HTTP mode.
    """

    def __init__(self, app: ASGIApp, *, service: str, fixed_routes: tuple[str, ...] = (),
                 bare_routes: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.app = app
        self.service = service
        self.fixed_routes = frozenset(fixed_routes)
        self.bare_routes = frozenset(bare_routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not enabled() or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] in self.bare_routes:
            parent = _parent(scope)
            if parent is None:
                await self.app(scope, receive, send)
                return
            token = otel_context.attach(parent)
            try:
                await self.app(scope, receive, send)
            finally:
                otel_context.detach(token)
            return
        method: str = scope["method"]
        path: str = scope["path"]
        status = 500  # an exception that escapes the app is answered 500 by the server

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        fixed = path in self.fixed_routes
        with server_span(f"{method} {path}" if fixed else method, _parent(scope)) as server:
            try:
                await self.app(scope, receive, send_status)
            finally:
                if server.is_recording():
                    self._finish(server, scope, method, path if fixed else None, status)

    @staticmethod
    def _finish(server: Span, scope: Scope, method: str, route: str | None, status: int) -> None:
        if route is None:
            template = getattr(scope.get("route"), "path", None)
            route = template if isinstance(template, str) else None
        server.update_name(f"{method} {route or scope['path'][:100]}")
        attributes: dict[str, Any] = {"http.request.method": method,
                                      "http.response.status_code": status}  # fmt: skip
        if route is not None:
            attributes["http.route"] = route
        server.set_attributes(attributes)
        if status >= 500:
            server.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
