"""`RunRoute`: an agent service's ``POST /run`` as a pure ASGI route in front of FastAPI.

FastAPI still documents the route (`conclave.services.agent_app`) and serves everything
else; this answers it with the same rules and error shapes, reading the body, the signature
(`conclave.security.signing`), the run id and the caller's deadline (``x-conclave-deadline``,
RELIABILITY C8) itself, and logs every failed request with its code and reason.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import orjson
import structlog
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
    """Pure ASGI ``POST /run``, in front of FastAPI's router; every other request goes on.

    Same rules and answers as the FastAPI route it shadows (415, 400 ``body``, 413 while
    streaming, 422 naming the field, 500 ``internal`` through the app's handler), without
    FastAPI's per-request layers (request object, dependencies, exception middleware): they
    cost 100-150 us of server CPU per call, nine calls per pipeline run. It sits inside
    `BodyLimitMiddleware`, which refuses a declared length over the limit before this runs
    and counts and times a streamed body as it is received here (413 over the limit, 408
    when it is late; both close the connection).
    """

    def __init__(
        self, app: ASGIApp, *, service: RunService, verifier: Verifier | None = None
    ) -> None:
        self.app = app
        self.service = service
        self.verifier = verifier  # signed calls only, when an agent secret is set (E8)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/run" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        t0, ctype, run_id, deadline = time.perf_counter(), b"", "", None
        for key, value in scope["headers"]:
            if key == b"content-type":
                ctype = value
            elif key == b"x-run-id":
                run_id = value.decode("latin-1")[:64]
            elif key == b"x-conclave-deadline" and value.isdigit() and len(value) <= 15:
                deadline = int(value)
        with structlog.contextvars.bound_contextvars(**({"run_id": run_id} if run_id else {})):
            await self._answer(ctype, receive, send, t0, scope["headers"], deadline)

    async def _answer(
        self, ctype: bytes, receive: Receive, send: Send, t0: float,
        headers: list[tuple[bytes, bytes]], deadline_ms: int | None,
    ) -> None:  # fmt: skip
        agent = self.service.agent.name
        try:
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
            _log_result(agent, out, t0)
            self.service.stats.answered(out)
        await send_json(send, status, raw)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)


def _log_result(agent: str, out: Any, t0: float) -> None:
    """Every run at debug; an answer without a signal at error (``error``) or warning."""
    meta = out.get("meta", {}) if isinstance(out, dict) else {}
    status, reason = meta.get("status", "ok"), meta.get("reason", "")
    if status in ("error", "timeout"):
        log.error("agent_request_failed", agent=agent, http=200, code=status,
                  reason=str(reason)[:300], duration_ms=_ms(t0))  # fmt: skip
    elif status != "ok":  # no_data is expected (no news source): info, as the orchestrator
        level = log.info if status == "no_data" else log.warning
        level("agent_no_signal", agent=agent, http=200, code=status,
              reason=str(reason)[:300], duration_ms=_ms(t0))  # fmt: skip
    log.debug("agent_run", agent=agent, status=status, duration_ms=_ms(t0))
