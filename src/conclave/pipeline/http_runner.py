"""`HttpRunner`: the `AgentRunner` that posts the context, data inline, to an agent service.

All nine runners share ONE `AgentHttpClient` (aiohttp): one pooled keep-alive connection
set, so a run costs nine requests on warm connections, never nine handshakes. Each call has
the agent's timeout and no retry of its own (RELIABILITY.md: the run is the retry unit), with
one exception below the call: a request the server dropped before the first byte of its
answer is sent once more on a new connection (see `AgentHttpClient.request`). Nothing is
raised for the agent's sake: every failure is a failed `StepResult` whose ``error`` starts
with a reason code (C1 to C4), and never a score of 0:

    connection_refused  nothing listens on the port (the process is gone)
    connect_error       the connection failed otherwise
    timeout             no complete answer within the timeout (status ``timeout``)
    protocol_error      the peer broke HTTP (garbage, closed or reset before a complete
                        answer, an answer over `agent_client.MAX_ANSWER_BYTES`)
    http_5xx, http_4xx  the service answered an error status
    non_json            the body is not JSON
    invalid_values      JSON, but not the contract: out-of-range or non-finite score or
                        confidence, a missing field, another agent's answer

An answer whose ``meta.status`` is not ``ok`` keeps that status and reason.

Each call sends the run's id (``x-run-id``) and, while tracing, the W3C ``traceparent`` of
the orchestrator's ``agent.call`` span: the agent's logs and spans join the run's. With a
`Signer` (``CONCLAVE_AGENTS__SECRET`` set) every request is signed (`conclave.security.signing`:
method, URL path, time, nonce, body digest), each send afresh, so a POST resent on a new
connection is never refused as a replay of the first attempt.
"""

from __future__ import annotations

import json
import time
from typing import Any, ClassVar

import orjson
import structlog

from conclave.agents import AgentInput
from conclave.observability import tracing
from conclave.pipeline.agent_client import AgentCallError, AgentHttpClient
from conclave.pipeline.breaker import CircuitBreaker
from conclave.pipeline.context import STEP_STATUSES, StepResult, StepStatus, valid_values
from conclave.pipeline.runners import RUN_DEADLINE_MS, RUN_ID
from conclave.pipeline.wire import encode_input

log = structlog.get_logger(__name__)


#: The call's deadline, ms since the epoch: the agent starts no work past it (C8).
DEADLINE_HEADER = "x-conclave-deadline"


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _call_headers(deadline_ms: int) -> dict[str, str]:
    """``x-run-id`` of the run in progress, the call's deadline and, while tracing, the W3C
    ``traceparent``."""
    run_id = RUN_ID.get()
    headers = {"x-run-id": run_id} if run_id else {}
    headers[DEADLINE_HEADER] = str(deadline_ms)
    tracing.inject(headers)
    return headers


def _error_message(raw: bytes) -> str:
    try:
        err = orjson.loads(raw)["error"]
        return f"{err.get('code', '')}: {err.get('message', '')}"[:200]
    except Exception:
        return raw[:120].decode("utf-8", "replace")


def parse_answer(
    name: str, status: int, raw: bytes, *, duration_ms: float, now_iso: str
) -> StepResult:
    """The step for agent ``name``'s HTTP answer; anything off the contract fails it."""

    def fail(reason: str, step_status: StepStatus = "error") -> StepResult:
        return StepResult.failed(name, step_status, reason, duration_ms=duration_ms,
                                 timestamp=now_iso)  # fmt: skip

    if status >= 500:
        return fail(f"http_5xx: {status} {_error_message(raw)}")
    if status >= 400:
        return fail(f"http_4xx: {status} {_error_message(raw)}")
    if status != 200:
        return fail(f"protocol_error: unexpected status {status}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:  # the standard parser accepts NaN and Infinity: valid JSON would not
            json.loads(raw)
        except ValueError:
            return fail(f"non_json: {raw[:60]!r}")
        return fail("invalid_values: the answer holds a non-finite number")
    if not isinstance(data, dict) or not isinstance(data.get("meta"), dict):
        return fail("invalid_values: expected an object with score, confidence, payload, meta")
    meta: dict[str, Any] = data["meta"]
    if meta.get("agent") != name:
        return fail(f"invalid_values: meta.agent is {str(meta.get('agent'))[:40]!r}, not {name!r}")
    version, timestamp = str(meta.get("version", "")), str(meta.get("timestamp", now_iso))
    as_of = meta.get("as_of")
    as_of = as_of if isinstance(as_of, str) else None
    answer_status = meta.get("status", "ok")
    if answer_status != "ok":
        st: StepStatus = answer_status if answer_status in STEP_STATUSES else "error"
        reason = str(meta.get("reason") or answer_status)[:500]
        return StepResult.failed(name, st, reason, duration_ms=duration_ms, timestamp=timestamp,
                                 version=version, as_of=as_of)  # fmt: skip
    score, confidence, payload = data.get("score"), data.get("confidence"), data.get("payload")
    if not valid_values(score, confidence) or not isinstance(payload, dict):
        return fail(
            f"invalid_values: score {str(score)[:20]} must lie in [-1, 1], confidence"
            f" {str(confidence)[:20]} in [0, 100], payload an object"
        )
    assert isinstance(score, int | float)
    assert isinstance(confidence, int | float)
    return StepResult(name, "ok", float(score), float(confidence), payload, duration_ms,
                      version, timestamp, as_of)  # fmt: skip


#: Step reasons that mean the service gave no well-formed answer (the breaker counts them).
CALL_FAILURES = (
    "connection_refused", "connect_error", "timeout", "protocol_error", "http_5xx",
    "http_4xx", "non_json", "invalid_values", "runner:",
)  # fmt: skip


class HttpRunner:
    """Runs agent ``name`` at ``url`` (``http://host:port``) through the shared ``client``.

    A `CircuitBreaker` per runner (one per agent service, kept across runs) skips a service
    after consecutive failed calls: the step fails at once with ``circuit_open``, no
    request is sent, until a single probe after ``open_s`` succeeds (RELIABILITY C2, C9).
    """

    mode: ClassVar[str] = "http"

    def __init__(
        self,
        name: str,
        url: str,
        *,
        client: AgentHttpClient,
        timeout_s: float,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be above 0, got {timeout_s!r}")
        self.name = name
        self.url = url.rstrip("/")
        self.client = client
        self.timeout_s = timeout_s
        self.breaker = breaker if breaker is not None else CircuitBreaker()

    async def run(self, agent_input: AgentInput, *, now_iso: str) -> StepResult:
        """POST the context to ``/run``; every failure is a failed step with its reason.

        The call asks for the agent's timeout or what is left of the run's budget
        (`RUN_DEADLINE_MS`), whichever ends first, and sends that deadline to the agent,
        which starts no work past it (C8). With the budget already spent nothing is sent
        and the breaker is left alone: the service did nothing wrong.
        """
        now = _wall_ms()
        deadline = now + round(self.timeout_s * 1000)
        run_deadline = RUN_DEADLINE_MS.get()
        if run_deadline is not None and run_deadline < deadline:
            deadline = run_deadline
            if deadline <= now:
                reason = f"deadline_exceeded: the run's budget was spent {now - deadline} ms ago"
                return StepResult.failed(self.name, "timeout", reason, duration_ms=0.0,
                                         timestamp=now_iso)  # fmt: skip
        if not self.breaker.allow():
            wait = self.breaker.retry_in_s()
            reason = (
                f"circuit_open: {self.breaker.failures} consecutive failed calls;"
                f" next probe in {wait:.1f} s"
            )
            return StepResult.failed(self.name, "error", reason, duration_ms=0.0,
                                     timestamp=now_iso)  # fmt: skip
        answered = False
        try:
            step = await self._call(agent_input, now_iso, deadline, now)
            answered = step.ok or not step.error.startswith(CALL_FAILURES)
            return step
        finally:  # a cancelled call counts as failed, so a probe is never left hanging
            before = self.breaker.state
            self.breaker.record(answered)
            self._log_breaker(before)

    def _log_breaker(self, before: str) -> None:
        after, breaker = self.breaker.state, self.breaker
        if after == "open" and before != "open":
            log.error("breaker_opened", agent=self.name, failures=breaker.failures,
                      open_s=breaker.open_s, probe=before == "half_open")  # fmt: skip
        elif after == "closed" and before != "closed":
            log.info("breaker_closed", agent=self.name)

    async def _call(
        self, agent_input: AgentInput, now_iso: str, deadline: int, now: int
    ) -> StepResult:
        t0 = time.perf_counter()
        try:
            body = encode_input(agent_input)
            status, raw = await self.client.request(
                "POST", f"{self.url}/run", body, timeout_s=(deadline - now) / 1000.0,
                headers=_call_headers(deadline),
            )  # fmt: skip
        except AgentCallError as exc:
            st: StepStatus = "timeout" if exc.reason == "timeout" else "error"
            took = (time.perf_counter() - t0) * 1000.0
            return StepResult.failed(self.name, st, f"{exc.reason}: {exc}"[:500],
                                     duration_ms=took, timestamp=now_iso)  # fmt: skip
        except Exception as exc:  # the runner must not take the run down
            took = (time.perf_counter() - t0) * 1000.0
            return StepResult.failed(self.name, "error", f"runner: {type(exc).__name__}: {exc}",
                                     duration_ms=took, timestamp=now_iso)  # fmt: skip
        took = (time.perf_counter() - t0) * 1000.0
        return parse_answer(self.name, status, raw, duration_ms=took, now_iso=now_iso)

    async def health(self) -> dict[str, Any]:
        """``GET /health`` within ``min(1 s, timeout)``: status ``ok`` or ``down`` and why."""
        t0 = time.perf_counter()
        out: dict[str, Any] = {"agent": self.name, "mode": "http", "url": self.url}
        said: object = None
        try:
            status, raw = await self.client.request(
                "GET", f"{self.url}/health", None, timeout_s=min(1.0, self.timeout_s)
            )
            body = orjson.loads(raw) if status == 200 else {}
            # "degraded": the service's own data path (exchange, Redis) fails; it still
            # answers runs with inline data, which is all the orchestrator sends
            said = body.get("status") if isinstance(body, dict) else None
            ok = said in ("ok", "degraded") and body.get("agent") == self.name
            error = "" if ok else f"unexpected answer: HTTP {status}"
        except AgentCallError as exc:
            ok, error = False, f"{exc.reason}: {exc}"[:200]
        except orjson.JSONDecodeError:
            ok, error = False, "non_json"
        out["latency_ms"] = round((time.perf_counter() - t0) * 1000.0, 3)
        out["status"] = str(said) if ok else "down"
        if error:
            out["error"] = error
        return out
