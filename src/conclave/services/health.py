"""The orchestrator's probes and its per-component health, every status computed.

- ``GET /health/live``: the process answers; 200 ``{"status": "ok"}`` while it serves.
- ``GET /health/ready``: it can serve runs: the database answers and, when the risk agent is
  called over HTTP, that service answers and its breaker is closed; else 503 with reasons.
- ``GET /health``: each component's real state. ``database`` (down: 503, runs could not be
  recorded), ``cache`` (Redis unreachable or bypassed: ``degraded``), ``exchange`` (clock
  skew; the rate limiter's pause or ban latch), ``agents`` (an agent service unreachable or
  its breaker not closed: ``degraded``, naming it; the risk agent so: ``critical``).
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

from conclave.market.cache import MemoryCache, RedisCache
from conclave.market.candles import Candles
from conclave.market.ratelimit import WeightLimiter
from conclave.pipeline.breaker import CircuitBreaker
from conclave.services.http_common import json_response
from conclave.timeframes import iso_ms

if TYPE_CHECKING:
    from conclave.services.runtime import AgentEndpoint, Runtime

#: How long ``GET /agents`` and ``GET /health`` wait for one agent's health answer.
HEALTH_TIMEOUT_S = 1.0
HealthHook = Callable[["Runtime", dict[str, Any]], Awaitable[dict[str, Any]]]


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
        status = "ok" if answer.get("status") == "ok" else str(answer.get("status", "down"))
        error = str(answer.get("error", "")) if status != "ok" else ""
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
        if s["status"] != "ok" or s.get("breaker", {}).get("state", "closed") != "closed"
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
    """Redis: a PING now and the cache not bypassed; memory: a write read back."""
    c = runtime.cache
    if isinstance(c, RedisCache):
        reachable, error = await _ping_redis(runtime)
        ok = reachable and c.available
        out = {"backend": "redis", "status": "ok" if ok else "degraded"}
        reason = error or ("bypassed after a failure" if not c.available else "")
        return out | ({"error": reason} if reason else {})
    if isinstance(c, MemoryCache):
        return {"backend": "memory", "status": "ok" if await _memory_round_trip(c) else "degraded"}
    return {"backend": type(c).__name__, "status": "unknown"}


async def _ping_redis(runtime: Runtime) -> tuple[bool, str]:
    url = runtime.settings.redis_url
    if not url:
        return False, "no REDIS_URL"
    timeout_s = runtime.settings.market.cache.redis_timeout_s
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
    """The source, its clock skew (A8: ``warn`` above the limit) and any pause or ban latch."""
    source = runtime.gateway.source
    out: dict[str, Any] = {"source": source.name, "simulated": source.simulated}
    problems: list[str] = []
    if (clock := runtime.gateway.exchange_clock) is not None:
        out |= await clock.health(timeout_s=HEALTH_TIMEOUT_S)
        if clock.skew_warning:
            problems.append("warn")
    limiter = getattr(source, "limiter", None)
    if isinstance(limiter, WeightLimiter):
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                pause = await limiter.paused_until()
        except Exception as exc:  # reported, never raised
            out["limiterError"] = type(exc).__name__
        else:
            if pause is not None:
                kind = "banned" if pause.banned else "paused"
                out[f"{kind}Until"] = iso_ms(int(pause.until_s * 1000))
                problems.insert(0, kind)
    return out | {"status": problems[0] if problems else "ok"}


async def report(runtime: Runtime) -> dict[str, Any]:
    """``ok``, ``degraded`` or ``critical``, the mode, and each component's state."""
    db, ch, ex, states = await asyncio.gather(
        database(runtime), cache(runtime), exchange(runtime), agent_states(runtime)
    )
    agents = agents_component(states, runtime.registry.risk)
    degraded = (
        db.get("status") != "ok"
        or ch["status"] != "ok"
        or ex["status"] in ("paused", "banned")
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

    @app.get("/health/live", summary="The process answers")
    async def live() -> Response:
        """Always ``{"status": "ok"}`` while the process serves requests."""
        return json_response({"status": "ok"})

    @app.get(
        "/health/ready",
        summary="The orchestrator can serve runs",
        responses={503: {"description": "the database or the risk agent is unavailable"}},
    )
    async def ready(request: Request) -> Response:
        """``ready``, or 503 ``not_ready`` with the reasons."""
        body = await readiness(runtime_of(request))
        ok = body["status"] == "ready"
        return json_response(body, 200 if ok else 503, None if ok else retry)

    @app.get(
        "/health",
        summary="The orchestrator and its dependencies",
        responses={503: {"description": "the database is unavailable"}},
    )
    async def health(request: Request) -> Response:
        """``ok``, ``degraded`` or ``critical``, naming which dependency is not ok."""
        runtime = runtime_of(request)
        base = await report(runtime)
        full = await hook(runtime, base)
        if base["status"] == "critical":  # a section hook may only say "degraded"
            full["status"] = "critical"
        db_ok = full["dependencies"]["database"].get("status") == "ok"
        return json_response(full, 200 if db_ok else 503, None if db_ok else retry)
