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
                        answer, an answer over `MAX_ANSWER_BYTES`)
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

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aiohttp
import orjson
import structlog
from aiohttp.client import IDEMPOTENT_METHODS
from aiohttp.http import RawResponseMessage

from conclave.agents import AgentInput
from conclave.observability import tracing
from conclave.pipeline.breaker import CircuitBreaker
from conclave.pipeline.context import STEP_STATUSES, StepResult, StepStatus, valid_values
from conclave.pipeline.runners import RUN_ID
from conclave.pipeline.wire import encode_input
from conclave.security.signing import Signer

log = structlog.get_logger(__name__)
_JSON = {"content-type": "application/json", "accept": "application/json"}
#: Seconds an idle pooled connection is kept; below the services' keep-alive (30 s).
KEEPALIVE_S = 15.0
#: The largest answer body read from an agent service (a few KB is normal).
MAX_ANSWER_BYTES = 8 * 1024 * 1024


class AgentCallError(Exception):
    """A call that got no HTTP answer; ``reason`` is one of the codes in the docstring."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _UnansweredError(Exception):
    """The server closed or reset the connection before the first byte of its answer."""


def _refused(exc: BaseException | None) -> bool:
    """True when ``exc`` or an exception it was raised from is a refused connection."""
    for _ in range(6):
        if exc is None:
            return False
        if isinstance(exc, ConnectionRefusedError) or "connection refused" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _nothing_read(exc: aiohttp.ClientError) -> bool:
    """True when ``exc``, raised before the answer's headers, means no answer byte came.

    A clean close: aiohttp's C parser hands over the message it had begun, so a single
    byte read shows (its pure-Python parser does not: there a cut status line passes for
    nothing). A reset (ECONNRESET, EPIPE) before the headers counts as unanswered: it is
    what a server does to a request that reached a connection it had already closed.
    """
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return not isinstance(exc.message, RawResponseMessage)
    connector = isinstance(exc, aiohttp.ClientConnectorError)  # no connection: not a drop
    return not connector and isinstance(exc, aiohttp.ClientOSError | ConnectionResetError)


async def _body(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body (Content-Length, chunked or up to the close); refused over ``limit``.

    Raising leaves the rest unread, and aiohttp closes a connection released half-read:
    it is never pooled, and no more than ``limit`` plus aiohttp's read-ahead (its flow
    control stops reading at a few times 64 KiB) is ever held.
    """
    too_large = AgentCallError("protocol_error", f"answer larger than {limit} bytes")
    if resp.content_length is not None:
        if resp.content_length > limit:
            raise too_large
        return await resp.read()
    chunks: list[bytes] = []
    size = 0
    while chunk := await resp.content.readany():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _exchange(
    session: aiohttp.ClientSession, method: str, url: str, body: bytes | None, limit: int,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, bytes]:  # fmt: skip
    """One request on ``session``: status and body; `_UnansweredError` if no answer byte came."""
    headers_in = False
    sent = _JSON if not headers else {**_JSON, **headers}
    try:
        async with session.request(
            method, url, data=body, headers=sent, allow_redirects=False
        ) as resp:
            headers_in = True  # from here on, a failure is a broken answer: never resent
            return resp.status, await _body(resp, limit)
    except aiohttp.ClientError as exc:
        if headers_in or not _nothing_read(exc):
            raise
        why = f"closed before any byte of an answer ({type(exc).__name__}: {exc})"
        raise _UnansweredError(why) from exc


def _session(connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
    # no Accept-Encoding: bodies are read as sent (auto_decompress off); no User-Agent:
    # fewer header bytes for the service to parse; our deadline is the only timeout
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
        timeout=aiohttp.ClientTimeout(),
    )


class AgentHttpClient:
    """The one pooled keep-alive HTTP client (aiohttp) all runners of a process share.

    ``max_connections`` covers nine services times eight runs in flight with room; an
    answer over ``max_answer_bytes`` fails the call. ``signer`` (one per process) signs
    every request; None sends them unsigned (agents on loopback without a secret). Close
    with `aclose` (or ``async with``).
    """

    def __init__(
        self,
        *,
        max_connections: int = 96,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        signer: Signer | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.max_answer_bytes = max_answer_bytes
        self.signer = signer
        self._pooled: aiohttp.ClientSession | None = None
        self._fresh: aiohttp.ClientSession | None = None  # a new connection per request

    async def __aenter__(self) -> AgentHttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _pool(self) -> aiohttp.ClientSession:
        if self._pooled is None:
            limit = self.max_connections
            self._pooled = _session(
                aiohttp.TCPConnector(limit=limit, keepalive_timeout=KEEPALIVE_S)
            )
        return self._pooled

    def _new_connection(self) -> aiohttp.ClientSession:
        if self._fresh is None:
            self._fresh = _session(
                aiohttp.TCPConnector(limit=self.max_connections, force_close=True)
            )
        return self._fresh

    async def _send(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str] | None
    ) -> tuple[int, bytes]:
        limit = self.max_answer_bytes
        try:
            sent = self._signed(method, url, body, headers)
            return await _exchange(self._pool(), method, url, body, limit, sent)
        except _UnansweredError:
            if method in IDEMPOTENT_METHODS:  # aiohttp resends those itself, once
                raise
        sent = self._signed(method, url, body, headers)  # fresh: the first may have arrived
        return await _exchange(self._new_connection(), method, url, body, limit, sent)

    def _signed(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str] | None
    ) -> Mapping[str, str] | None:
        if self.signer is None:
            return headers
        signed = self.signer.headers(method, urlsplit(url).path or "/", body or b"")
        return signed if not headers else {**headers, **signed}

    async def request(
        self, method: str, url: str, body: bytes | None, *, timeout_s: float,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:  # fmt: skip
        """Status and body of one call; `AgentCallError` when no complete HTTP answer came.

        A request the server drops before the first byte of its answer, the signature of
        a keep-alive connection it closed while ours sat idle in the pool, is sent once
        more on a new connection, inside the same ``timeout_s``; a second drop fails the
        call. Nothing else is resent: not a timeout, not an error status, not an answer cut
        short (an agent's ``/run`` has no side effects, so resending unanswered is safe).
        aiohttp resends GET by itself (`ClientSession._request`: once, on the next pooled
        connection) but never POST, so only POST is resent here. ``headers`` are sent
        besides the JSON content type.
        """
        try:
            async with asyncio.timeout(timeout_s):
                return await self._send(method, url, body, headers)
        except TimeoutError as exc:
            raise AgentCallError("timeout", f"no answer within {timeout_s * 1000:.0f} ms") from exc
        except aiohttp.ClientConnectorError as exc:
            refused = _refused(exc.os_error) or _refused(exc)
            raise AgentCallError("connection_refused" if refused else "connect_error",
                                 str(exc)) from exc  # fmt: skip
        except _UnansweredError as exc:
            raise AgentCallError("protocol_error", str(exc)) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise AgentCallError("protocol_error", f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        """Close both pools."""
        for session in (self._pooled, self._fresh):
            if session is not None:
                await session.close()
        self._pooled = self._fresh = None


def _call_headers() -> dict[str, str] | None:
    """``x-run-id`` of the run in progress and, while tracing, the W3C ``traceparent``."""
    run_id = RUN_ID.get()
    headers = {"x-run-id": run_id} if run_id else {}
    tracing.inject(headers)
    return headers or None


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
        """POST the context to ``/run``; every failure is a failed step with its reason."""
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
            step = await self._call(agent_input, now_iso)
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

    async def _call(self, agent_input: AgentInput, now_iso: str) -> StepResult:
        t0 = time.perf_counter()
        try:
            body = encode_input(agent_input)
            status, raw = await self.client.request(
                "POST", f"{self.url}/run", body, timeout_s=self.timeout_s, headers=_call_headers()
            )
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
