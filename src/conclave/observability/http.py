"""HTTP request metrics for any ASGI app: duration by route template and status class,
requests in flight (`conclave.observability.metrics`).

The route label is the template the router matched (``/pipeline/runs/{run_id}``), read from
the ASGI scope after the app ran, never the raw path (ids would make the label set
unbounded); a request no route matched counts as ``unmatched``. Requests for
``/metrics`` itself are not counted, so a scrape does not change what it reads.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conclave.observability.metrics import HTTP_DURATION, HTTP_IN_FLIGHT

_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


class HttpMetricsMiddleware:
    """Pure ASGI: time each HTTP request of ``service`` and count it by route and status."""

    def __init__(self, app: ASGIApp, *, service: str, fixed_routes: tuple[str, ...] = ()) -> None:
        self.app = app
        self.service = service
        #: paths answered in front of the router (a pure ASGI route): their own template
        self.fixed_routes = frozenset(fixed_routes)
        self.in_flight = HTTP_IN_FLIGHT.labels(service)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/metrics":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500  # an exception that escapes the app is answered 500 by the server

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.in_flight.dec()
            HTTP_DURATION.labels(
                self.service,
                scope["method"],
                self._route(scope),
                _CLASSES.get(status // 100, "5xx"),
            ).observe(time.perf_counter() - t0)

    def _route(self, scope: Scope) -> str:
        path: str = scope["path"]
        if path in self.fixed_routes:
            return path
        route = scope.get("route")
        template = getattr(route, "path", None)
        return template if isinstance(template, str) else "unmatched"
