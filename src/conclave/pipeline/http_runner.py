"""`HttpRunner`: the `AgentRunner` that posts the context, data inline, to an agent service.

All nine runners share ONE `AgentHttpClient`: one pooled keep-alive connection set, so a run
costs nine requests on warm connections, never nine handshakes. Each call has the agent's
timeout and no retry (RELIABILITY.md: the run is the retry unit). Nothing is raised for
the agent's sake: every failure is a failed `StepResult` whose ``error`` starts with a
reason code (C1 to C4), and never a score of 0:

    connection_refused  nothing listens on the port (the process is gone)
    connect_error       the connection failed otherwise
    timeout             no complete answer within the timeout (status ``timeout``)
    protocol_error      the peer broke HTTP (garbage, reset mid-response)
    http_5xx, http_4xx  the service answered an error status
    non_json            the body is not JSON
    invalid_values      JSON, but not the contract: out-of-range or non-finite score or
                        confidence, a missing field, another agent's answer

An answer whose ``meta.status`` is not ``ok`` keeps that status and reason.

The client library was chosen by ``benchmarks/http_mode.py`` (2-core VM, nine uvicorn
agent services on loopback, the real 1h BTC contexts inline, 107 KB per run): see
`DEFAULT_BACKEND` for the figures. Every backend stays selectable for that comparison.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal, Protocol

import orjson

from conclave.agents.base import AgentInput
from conclave.pipeline.breaker import CircuitBreaker
from conclave.pipeline.context import STEP_STATUSES, StepResult, StepStatus, valid_values
from conclave.services.wire import encode_input

Backend = Literal["httptools", "aiohttp", "httpx2"]
BACKENDS: tuple[Backend, ...] = ("httptools", "aiohttp", "httpx2")
#: Measured by benchmarks/http_mode.py (full pipeline over nine local services, same run,
#: 2-core VM shared with other jobs, load average 2.8-3.6, three runs), p50 and runs/s with
#: 8 in flight: httptools (`conclave.pipeline.http_conn`) 6.6 ms / 163, 8.3 / 137,
#: 7.9 / 157; aiohttp 7.8 / 129, 8.1 / 126, 11.0 / 147; httpx2 12.7 / 58, 19.6 / 44,
#: 21.5 / 44. One sequential GET /health round trip: httptools 112 us (26 us of client
#: CPU, 85 us of server CPU), aiohttp 230 us (114 us, 115 us), httpx2 743 us. On a
#: quieter machine (load 1.5) after trimming the snapshot: httptools 5.03 ms / 272 runs/s,
#: aiohttp 5.14 / 281, httpx2 8.28 / 80: the two first are alike when CPU is free, and
#: httptools' lower client CPU is the margin when it is not.
DEFAULT_BACKEND: Backend = "httptools"
_JSON = {"content-type": "application/json", "accept": "application/json"}
#: Seconds an idle pooled connection is kept; below the services' keep-alive (30 s).
KEEPALIVE_S = 15.0


class AgentCallError(Exception):
    """A call that got no HTTP answer; ``reason`` is one of the codes in the docstring."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _refused(exc: BaseException | None) -> bool:
    """True when ``exc`` or an exception it was raised from is a refused connection."""
    for _ in range(6):
        if exc is None:
            return False
        if isinstance(exc, ConnectionRefusedError) or "connection refused" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class _Transport(Protocol):
    async def request(
        self, method: str, url: str, body: bytes | None, timeout_s: float
    ) -> tuple[int, bytes]: ...

    async def aclose(self) -> None: ...


class _AiohttpTransport:
    def __init__(self, max_connections: int) -> None:
        self._max = max_connections
        self._session: Any = None

    def _open(self) -> Any:
        import aiohttp

        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max, keepalive_timeout=KEEPALIVE_S)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self._session

    async def request(
        self, method: str, url: str, body: bytes | None, timeout_s: float
    ) -> tuple[int, bytes]:
        import aiohttp

        session = self._open()
        try:
            async with session.request(
                method,
                url,
                data=body,
                headers=_JSON,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                return int(resp.status), bytes(await resp.read())
        except TimeoutError as exc:
            raise AgentCallError("timeout", f"no answer within {timeout_s * 1000:.0f} ms") from exc
        except aiohttp.ClientConnectorError as exc:
            refused = _refused(exc.os_error) or _refused(exc)
            raise AgentCallError("connection_refused" if refused else "connect_error",
                                 str(exc)) from exc  # fmt: skip
        except (aiohttp.ClientError, OSError) as exc:
            raise AgentCallError("protocol_error", f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _Httpx2Transport:
    def __init__(self, max_connections: int) -> None:
        import httpx2

        limits = httpx2.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=KEEPALIVE_S,
        )
        self._client = httpx2.AsyncClient(limits=limits, headers=_JSON, trust_env=False)

    async def request(
        self, method: str, url: str, body: bytes | None, timeout_s: float
    ) -> tuple[int, bytes]:
        import httpx2

        try:
            resp = await self._client.request(method, url, content=body, timeout=timeout_s)
        except httpx2.TimeoutException as exc:
            raise AgentCallError("timeout", f"no answer within {timeout_s * 1000:.0f} ms") from exc
        except httpx2.ConnectError as exc:
            refused = _refused(exc)
            raise AgentCallError("connection_refused" if refused else "connect_error",
                                 str(exc)) from exc  # fmt: skip
        except (httpx2.HTTPError, OSError) as exc:
            raise AgentCallError("protocol_error", f"{type(exc).__name__}: {exc}") from exc
        return resp.status_code, resp.content

    async def aclose(self) -> None:
        await self._client.aclose()


class AgentHttpClient:
    """The one pooled keep-alive HTTP client all runners of a process share.

    ``backend`` picks the library (`DEFAULT_BACKEND` by measurement); ``max_connections``
    covers nine services times eight runs in flight with room. Close with `aclose` (or
    ``async with``).
    """

    def __init__(self, *, backend: Backend = DEFAULT_BACKEND, max_connections: int = 96) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        self.backend = backend
        self._transport: _Transport
        if backend == "httptools":
            from conclave.pipeline.http_conn import HttptoolsTransport

            self._transport = HttptoolsTransport(max_connections, KEEPALIVE_S)
        elif backend == "aiohttp":
            self._transport = _AiohttpTransport(max_connections)
        else:
            self._transport = _Httpx2Transport(max_connections)

    async def __aenter__(self) -> AgentHttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def request(
        self, method: str, url: str, body: bytes | None, *, timeout_s: float
    ) -> tuple[int, bytes]:
        """Status and body of one call; `AgentCallError` when no HTTP answer came."""
        return await self._transport.request(method, url, body, timeout_s)

    async def aclose(self) -> None:
        """Close the pool."""
        await self._transport.aclose()


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
            self.breaker.record(answered)

    async def _call(self, agent_input: AgentInput, now_iso: str) -> StepResult:
        t0 = time.perf_counter()
        try:
            body = encode_input(agent_input)
            status, raw = await self.client.request(
                "POST", f"{self.url}/run", body, timeout_s=self.timeout_s
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
        try:
            status, raw = await self.client.request(
                "GET", f"{self.url}/health", None, timeout_s=min(1.0, self.timeout_s)
            )
            body = orjson.loads(raw) if status == 200 else {}
            ok = isinstance(body, dict) and body.get("status") == "ok"
            ok = ok and body.get("agent") == self.name
            error = "" if ok else f"unexpected answer: HTTP {status}"
        except AgentCallError as exc:
            ok, error = False, f"{exc.reason}: {exc}"[:200]
        except orjson.JSONDecodeError:
            ok, error = False, "non_json"
        out["latency_ms"] = round((time.perf_counter() - t0) * 1000.0, 3)
        out["status"] = "ok" if ok else "down"
        if error:
            out["error"] = error
        return out
