"""The orchestrator's probes and its per-component health, every status computed.

- ``GET /health/live``: the process answers; 200 ``{"status": "ok"}`` while it serves.
- ``GET /health/ready``: it can serve runs: the database answers and, when the risk agent is
  called over HTTP, that service answers and its breaker is closed; else 503 with reasons.
- ``GET /health``: each component's real state. ``database`` (down: 503, runs could not be
  recorded), ``cache`` (Redis unreachable or bypassed: ``degraded``), ``exchange`` (see
  `gateway_state`), ``agents`` (an agent service unreachable or its breaker not closed:
  ``degraded``, naming it; the risk agent so: ``critical``; one that answers but reports
  itself ``degraded`` still serves the orchestrator's inline-data runs: listed, not
  unavailable).

`gateway_state` and `cache_state` take the parts themselves, not the runtime, so the agent
services' ``/health`` (`conclave.services.agent_health`) reports them the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from starlette.responses import Response

from conclave.market.cache import CandleCache, MemoryCache, RedisCache
from conclave.market.candles import Candles
from conclave.market.gateway import FetchLog, MarketGateway
from conclave.market.ratelimit import WeightLimiter
from conclave.pipeline.breaker import CircuitBreaker
from conclave.services.health_openapi import (
    REPORT_OR_ERROR,
    HealthReport,
    Live,
    NotReady,
    Ready,
    unavailable,
)
from conclave.services.http_common import json_response
from conclave.services.openapi_docs import KEY_ERRORS, error_responses
from conclave.timeframes import iso_ms

if TYPE_CHECKING:
    from conclave.services.runtime import AgentEndpoint, Runtime

#: How long ``GET /agents`` and ``GET /health`` wait for one agent's health answer.
HEALTH_TIMEOUT_S = 1.0
HealthHook = Callable[["Runtime", dict[str, Any]], Awaitable[dict[str, Any]]]
#: Exchange statuses that make a report ``degraded`` (``warn`` and ``unknown`` do not).
EXCHANGE_FAILING = ("banned", "paused", "down", "degraded")
#: Fetch failures that mean the exchange cannot be reached at all: ``down``, not ``degraded``.
UNREACHABLE = ("exchange_unavailable", "exchange_timeout")


async def agent_states(
    runtime: Runtime, use_http: bool | None = None, *, timeout_s: float = HEALTH_TIMEOUT_S
) -> list[dict[str, Any]]:
    """Each agent's mode, URL, port, role, status, latency and (over HTTP) breaker state."""
    checks = [_agent_state(runtime, e, timeout_s) for e in runtime.endpoints(use_http)]
    return list(await asyncio.gather(*checks))


async def _agent_state(
    runtime: Runtime, endpoint: AgentEndpoint, timeout_s: float
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": endpoint.name,
        "mode": endpoint.mode,
        "url": endpoint.url,
        "port": endpoint.port,
        "role": runtime.registry.role(endpoint.name),
    }
    t0 = time.perf_counter()
    if endpoint.mode == "local":  # in process: there as long as the registry has its class
        known = endpoint.name in runtime.registry.names
        took = round((time.perf_counter() - t0) * 1000.0, 3)
        return out | {"status": "ok" if known else "missing", "latencyMs": took}
    runner = runtime.runner(endpoint.name)
    try:
        async with asyncio.timeout(timeout_s):
            answer: Mapping[str, Any] = await runner.health()
    except TimeoutError:
        status, error = "down", f"no answer within {timeout_s * 1000:.0f} ms"
    except Exception as exc:  # a dead agent is a status, not an error of this endpoint
        status, error = "down", type(exc).__name__
    else:
        status = str(answer.get("status", "down"))
        error = str(answer.get("error", "")) if status not in ("ok", "degraded") else ""
    out |= {"status": status, "latencyMs": round((time.perf_counter() - t0) * 1000.0, 3)}
    breaker = getattr(runner, "breaker", None)
    if isinstance(breaker, CircuitBreaker):
        snap = breaker.snapshot()
        wait_ms = int(snap["nextProbeInS"] * 1000)
        at = iso_ms(runtime.local_ms() + wait_ms) if snap["state"] == "open" else None
        out["breaker"] = snap | {"nextProbeAt": at}
    return out | ({"error": error[:200]} if error else {})


def agents_component(states: list[dict[str, Any]], risk: str) -> dict[str, Any]:
    """``ok``, ``degraded`` naming the unavailable agents, or ``critical`` (the risk agent)."""
    bad = [
        s["name"]
        for s in states
        if s["status"] not in ("ok", "degraded")  # degraded: its own data path, not ours
        or s.get("breaker", {}).get("state", "closed") != "closed"
    ]
    status = "critical" if risk in bad else "degraded" if bad else "ok"
    detail = {s["name"]: _agent_brief(s) for s in states}
    return {"status": status, "unavailable": bad, "items": detail}


def _agent_brief(state: dict[str, Any]) -> dict[str, Any]:
    brief: dict[str, Any] = {k: state[k] for k in ("mode", "status") if k in state}
    if "breaker" in state:
        brief["breaker"] = state["breaker"]["state"]
    return brief | ({"error": state["error"]} if "error" in state else {})


async def database(runtime: Runtime) -> dict[str, Any]:
    """The run store's own check (``ok`` or ``down``), without URLs."""
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_S * 2):
            db = dict(await runtime.store.health())
    except Exception as exc:  # reported, never raised: /health must answer
        db = {"status": "unavailable", "error": type(exc).__name__}
    return {k: v for k, v in db.items() if k not in ("url", "dsn", "database_url")}


async def cache(runtime: Runtime) -> dict[str, Any]:
    """The orchestrator's cache; see `cache_state`."""
    timeout_s = runtime.settings.market.cache.redis_timeout_s
    return await cache_state(runtime.cache, runtime.settings.redis_url, timeout_s=timeout_s)


async def cache_state(c: CandleCache, redis_url: str | None, *, timeout_s: float) -> dict[str, Any]:
    """Redis: a PING now and the cache not bypassed; memory: a write read back."""
    if isinstance(c, RedisCache):
        reachable, error = await _ping_redis(redis_url, timeout_s)
        ok = reachable and c.available
        out = {"backend": "redis", "status": "ok" if ok else "degraded"}
        reason = error or ("bypassed after a failure" if not c.available else "")
        return out | ({"error": reason} if reason else {})
    if isinstance(c, MemoryCache):
        return {"backend": "memory", "status": "ok" if await _memory_round_trip(c) else "degraded"}
    return {"backend": type(c).__name__, "status": "unknown"}


async def _ping_redis(url: str | None, timeout_s: float) -> tuple[bool, str]:
    if not url:
        return False, "no REDIS_URL"
    client: Redis = Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
    )
    try:
        async with asyncio.timeout(timeout_s * 2):
            await client.ping()
    except Exception as exc:  # unreachable is a status; the cause's text may name the host
        return False, f"unreachable ({type(exc).__name__})"
    finally:
        await client.aclose()
    return True, ""


async def _memory_round_trip(c: MemoryCache) -> bool:
    probe = Candles.empty("HEALTH", "1m", source="health")
    await c.set("__health__", probe, 1.0)
    return await c.get("__health__") is probe


async def exchange(runtime: Runtime) -> dict[str, Any]:
    """The orchestrator's exchange; see `gateway_state`."""
    return await gateway_state(runtime.gateway, timeout_s=HEALTH_TIMEOUT_S)


def fetch_state(fetches: FetchLog) -> dict[str, Any]:
    """``lastSuccess`` (ISO UTC or None) and ``lastError`` (``{at, reason, message}`` or None)."""
    ok, err = fetches.last_success, fetches.last_error
    error = None if err is None else {"at": iso_ms(err.at_ms), "reason": err.reason,
                                      "message": err.message}  # fmt: skip
    return {"lastSuccess": None if ok is None else iso_ms(ok.at_ms), "lastError": error}


async def gateway_state(gateway: MarketGateway, *, timeout_s: float) -> dict[str, Any]:
    """The source, its last fetches, its clock skew and any pause or ban latch, with a status.

    The status is the worst that holds: ``banned`` or ``paused`` (the rate limiter's latch,
    ``bannedUntil``/``pausedUntil``); ``down`` (the newest fetch failed and the exchange could
    not be reached: ``exchange_unavailable``, ``exchange_timeout``) or ``degraded`` (it
    failed otherwise: ``rate_limited``, ``exchange_data``, ...), until a fetch succeeds;
    ``warn`` (clock skew over the limit, A8; corrected for, so not a failure); ``ok`` (the
    newest fetch succeeded, or none yet but the exchange answered its time probe); else
    ``unknown``: nothing has been fetched yet, so nothing is known.
    """
    source = gateway.origin
    out: dict[str, Any] = {"source": source.name, "simulated": source.simulated}
    out |= fetch_state(gateway.fetches)
    problems: list[str] = []
    if (clock := gateway.exchange_clock) is not None:
        out |= await clock.health(timeout_s=timeout_s)
    limiter = getattr(source, "limiter", None)
    if isinstance(limiter, WeightLimiter):
        try:
            async with asyncio.timeout(timeout_s):
                pause = await limiter.paused_until()
        except Exception as exc:  # reported, never raised
            out["limiterError"] = type(exc).__name__
        else:
            if pause is not None:
                kind = "banned" if pause.banned else "paused"
                out[f"{kind}Until"] = iso_ms(int(pause.until_s * 1000))
                problems.append(kind)
    if gateway.fetches.failing:
        err = gateway.fetches.last_error
        problems.append("down" if err is not None and err.reason in UNREACHABLE else "degraded")
    if clock is not None and clock.skew_warning:
        problems.append("warn")
    if problems:
        return out | {"status": problems[0]}
    clocked = out.get("clockSkewMs") is not None and "clockError" not in out
    known = gateway.fetches.last_success is not None or clocked
    return out | {"status": "ok" if known else "unknown"}


async def report(runtime: Runtime) -> dict[str, Any]:
    """``ok``, ``degraded`` or ``critical``, the mode, and each component's state."""
    db, ch, ex, states = await asyncio.gather(
        database(runtime), cache(runtime), exchange(runtime), agent_states(runtime)
    )
    agents = agents_component(states, runtime.registry.risk)
    degraded = (
        db.get("status") != "ok"
        or ch["status"] != "ok"
        or ex["status"] in EXCHANGE_FAILING
        or agents["status"] != "ok"
    )
    status = "critical" if agents["status"] == "critical" else "degraded" if degraded else "ok"
    deps = {"database": db, "cache": ch, "exchange": ex, "agents": agents}
    return {"status": status, "mode": runtime.deployment_mode(), "dependencies": deps}


async def readiness(runtime: Runtime) -> dict[str, Any]:
    """``ready``, or ``not_ready`` with the reasons: database down, risk agent unreachable."""
    reasons: list[str] = []
    db = await database(runtime)
    if db.get("status") != "ok":
        reasons.append(
            f"database {db.get('status', 'down')}: {db.get('detail', db.get('error', ''))}"
        )
    risk = runtime.registry.risk
    risk_http = [e for e in runtime.endpoints() if e.name == risk and e.mode == "http"]
    if risk_http:
        state = await _agent_state(runtime, risk_http[0], HEALTH_TIMEOUT_S)
        breaker = state.get("breaker", {}).get("state", "closed")
        if state["status"] != "ok":
            reasons.append(f"{risk} unreachable at {state['url']}: {state.get('error', '')}")
        elif breaker != "closed":
            reasons.append(f"{risk} circuit breaker {breaker}")
    return {"status": "not_ready" if reasons else "ready", "reasons": reasons}


def install_health(app: FastAPI, hook: HealthHook, *, retry_after_s: int) -> None:
    """Add ``/health/live``, ``/health/ready`` and ``/health``; ``hook`` adds sections."""

    def runtime_of(request: Request) -> Runtime:
        runtime: Runtime = request.app.state.runtime
        return runtime

    retry = {"Retry-After": str(retry_after_s)}

    @app.get("/health/live", summary="The process answers", responses={200: {"model": Live}})
    async def live() -> Response:
        """Always ``{"status": "ok"}`` while the process serves requests."""
        return json_response({"status": "ok"})

    @app.get(
        "/health/ready",
        summary="The orchestrator can serve runs",
        responses={
            200: {"model": Ready},
            503: unavailable(NotReady, "the database or the risk agent is unavailable",
                             retry_after=True),
        },
    )  # fmt: skip
    async def ready(request: Request) -> Response:
        """``ready``, or 503 ``not_ready`` with the reasons."""
        body = await readiness(runtime_of(request))
        ok = body["status"] == "ready"
        return json_response(body, 200 if ok else 503, None if ok else retry)

    @app.get(
        "/health",
        summary="The orchestrator and its dependencies",
        responses={
            200: {"model": HealthReport},
            503: unavailable(REPORT_OR_ERROR, "the database is unavailable (the report), or "
                             "the API keys cannot be checked now", retry_after=True),
            **error_responses(*KEY_ERRORS),
        },
    )  # fmt: skip
    async def health(request: Request) -> Response:
        """``ok``, ``degraded`` or ``critical``, naming which dependency is not ok."""
        runtime = runtime_of(request)
        base = await report(runtime)
        full = await hook(runtime, base)
        if base["status"] == "critical":  # a section hook may only say "degraded"
            full["status"] = "critical"
        db_ok = full["dependencies"]["database"].get("status") == "ok"
        return json_response(full, 200 if db_ok else 503, None if db_ok else retry)
