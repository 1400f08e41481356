"""Admission control: past ``api.max_runs_in_flight`` runs, a new run is refused at once.

RELIABILITY F2: at twice the capacity the orchestrator must shed load quickly (503 or 429
within 50 ms) and keep the runs it admits near their normal latency, instead of letting every
run queue behind the others until all of them miss their deadline. `AdmissionMiddleware`
counts the ``POST /pipeline/run`` requests being served; one more than the limit is answered
503 ``overloaded`` with ``Retry-After`` before its body is read, and counted in
``conclave_runs_shed_total``. Other routes are cheap reads and pass untouched.

It sits inside the key check and the per-key rate limit (`conclave.services.edge_auth`): a
caller without a valid key gets 401 and one over its own limit 429 first, so neither can use
up the admission slots of the others.
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from conclave.observability.metrics import RUNS_SHED
from conclave.services.http_common import error_body

RUN_PATH = "/pipeline/run"
#: Seconds a shed caller is told to wait (a run takes milliseconds; slots free up fast).
RETRY_AFTER_S = 1


class AdmissionMiddleware:
    """Pure ASGI: at most ``limit`` ``POST /pipeline/run`` in flight in this process."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != RUN_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            RUNS_SHED.inc()
            await _overloaded(send, self.limit)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


async def _overloaded(send: Send, limit: int) -> None:
    message = (f"{limit} runs are in progress (CONCLAVE_API__MAX_RUNS_IN_FLIGHT); "
               f"retry after {RETRY_AFTER_S} s")  # fmt: skip
    body = orjson.dumps(error_body("overloaded", message))
    await send({
        "type": "http.response.start",
        "status": 503,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(RETRY_AFTER_S).encode())],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})
