"""`RunRoute`: an agent service's ``POST /run`` as a pure ASGI endpoint in front of FastAPI.

FastAPI still documents the route (`conclave.services.agent_app`) and serves everything
else; `AgentApp` hands ``POST /run`` to this endpoint inside the app's own middleware (the
edge guard, metrics, tracing: `run_stack`), and it answers with the same rules and error
shapes, reading the body, the signature (`conclave.security.signing`), the run id and the
caller's deadline (``x-conclave-deadline``, RELIABILITY C8) itself, and logs every failed
request with its code and reason.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import orjson
import structlog
from starlette.middleware import Middleware
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from conclave.agents import Agent
from conclave.errors import InvalidRequestError
from conclave.security.signing import Verifier
from conclave.services.agent_health import RunStats
from conclave.services.http_common import ApiError, error_of, send_json
from conclave.services.json_body import check_json_type, parse_json

log = structlog.get_logger("conclave.services.agent_app")


class RunService(Protocol):
    """What the route needs of the service (`conclave.services.agent_app`'s)."""

    agent: Agent
    stats: RunStats

    async def run(self, data: Any, *, deadline_ms: int | None = None) -> Any: ...


class RunRoute:
    """Pure ASGI ``POST /run`` (the caller routes only that request here).

    Same rules and answers as the FastAPI route it shadows (415, 400 ``body``, 413 while
    streaming, 422 naming the field, 500 ``internal`` through the app's handler), without
    FastAPI's per-request layers (request object, dependencies, exception middleware): they
    cost 100-150 us of server CPU per call, nine calls per pipeline run. It sits inside
    `BodyLimitMiddleware`, which refuses a declared length over the limit before this runs
    and counts and times a streamed body as it is received here (413 over the limit, 408
    when it is late; both close the connection).
    """

    def __init__(
        self, *, service: RunService, verifier: Verifier | None = None, log_runs: bool = False
    ) -> None:
        self.service = service
        self.verifier = verifier  # signed calls only, when an agent secret is set (E8)
        # the debug line of every run, only when the service logs at DEBUG: a disabled
        # line costs as much to skip through structlog's lazy logger as a cheap answer
        self.log_runs = log_runs
        self.no_data_reason: str | None = None  # the no_data reason logged at info last

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        t0, ctype, run_id, deadline = time.perf_counter(), b"", "", None
        for key, value in scope["headers"]:
            if key == b"content-type":
                ctype = value
            elif key == b"x-run-id":
                run_id = value.decode("latin-1")[:64]
            elif key == b"x-conclave-deadline" and value.isdigit() and len(value) <= 15:
                deadline = int(value)
        if not run_id:
            await self._answer(ctype, receive, send, t0, scope["headers"], deadline)
            return
        bound = structlog.contextvars.bind_contextvars(run_id=run_id)
        try:
            await self._answer(ctype, receive, send, t0, scope["headers"], deadline)
        finally:
            structlog.contextvars.reset_contextvars(**bound)

    async def _answer(
        self, ctype: bytes, receive: Receive, send: Send, t0: float,
        headers: list[tuple[bytes, bytes]], deadline_ms: int | None,
    ) -> None:  # fmt: skip
        agent = self.service.agent.name
        try:
            if ctype != b"application/json":  # what our client sends: nothing to parse
                check_json_type(ctype.decode("latin-1"))
            chunks: list[bytes] = []
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return  # nobody to answer
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if self.verifier is not None:
                verdict = self.verifier.verify_asgi("POST", "/run", body, headers)
                if not verdict.ok:
                    raise ApiError(401, "unauthorized", f"call not accepted: {verdict.reason}")
            data = parse_json(body)
            out = await self.service.run(data, deadline_ms=deadline_ms)
            raw, status = orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY), 200
        except (ApiError, InvalidRequestError) as exc:
            status, raw = error_of(exc)
            code = exc.code if isinstance(exc, ApiError) else exc.reason
            fields = {"agent": agent, "http": status, "code": code, "field": exc.field,
                      "reason": str(exc)[:300], "duration_ms": _ms(t0)}  # fmt: skip
            if status < 500:  # the caller's input: a warning, the service is fine
                log.warning("agent_request_rejected", **fields)
            else:
                log.error("agent_request_failed", **fields)
            self.service.stats.refused(status, code, str(exc))
        except Exception as exc:  # answered 500 ``internal`` by the app's handler
            log.error("agent_request_failed", agent=agent, http=500, code="internal",
                      reason=f"{type(exc).__name__}: {exc}"[:300], duration_ms=_ms(t0))  # fmt: skip
            self.service.stats.refused(500, "internal", type(exc).__name__)
            raise
        else:
            self._log_result(agent, out, t0)
            self.service.stats.answered(out)
        await send_json(send, status, raw)

    def _log_result(self, agent: str, out: Any, t0: float) -> None:
        """An answer without a signal at error (``error``, ``timeout``) or warning; one of
        ``no_data`` (expected: news-sentiment without a news source) at info when its
        reason differs from the last one logged; every run at debug with ``log_runs``."""
        meta = out.get("meta", {}) if isinstance(out, dict) else {}
        status, reason = meta.get("status", "ok"), meta.get("reason", "")
        if status in ("error", "timeout"):
            log.error("agent_request_failed", agent=agent, http=200, code=status,
                      reason=str(reason)[:300], duration_ms=_ms(t0))  # fmt: skip
        elif status == "no_data" and reason != self.no_data_reason:
            self.no_data_reason = reason
            log.info("agent_no_signal", agent=agent, http=200, code=status,
                     reason=str(reason)[:300], duration_ms=_ms(t0))  # fmt: skip
        elif status not in ("ok", "no_data"):
            log.warning("agent_no_signal", agent=agent, http=200, code=status,
                        reason=str(reason)[:300], duration_ms=_ms(t0))  # fmt: skip
        if self.log_runs:
            log.debug("agent_run", agent=agent, status=status, duration_ms=_ms(t0))


def run_stack(
    route: ASGIApp, middleware: Sequence[Middleware], error_handler: Any | None
) -> ASGIApp:
    """``route`` inside ``middleware`` (an app's ``user_middleware``, outermost first) and
    Starlette's `ServerErrorMiddleware` with ``error_handler`` (the app's handler of
    `Exception`): the layers a FastAPI app puts around its routes, built the same way,
    without the framework's own (its exception and telemetry middleware, the router).
    """
    app = route
    for cls, args, kwargs in reversed(middleware):
        app = cls(app, *args, **kwargs)
    return ServerErrorMiddleware(app, handler=error_handler)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)
