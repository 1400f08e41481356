"""An agent service's probes, its ``/health`` detail and ``/info``, every status computed.

- ``GET /health/live``: the process answers (200 ``ok`` while it serves).
- ``GET /health/ready``: it can answer every kind of ``POST /run``: the lifespan has opened
  its data gateway and built its pipeline (an ids-only context needs both); else 503 with
  the reasons. An exchange that fails does not make it unready: the orchestrator sends the
  data inline, and taking the service out of rotation would fail those runs too.
- ``GET /health``: the seed's ``status``, ``agent`` and ``timestamp`` (always 200 while the
  process serves, so the orchestrator's probe and ``conclave agents start`` can tell
  "reachable" from "down"), plus ``reasons``, ``dependencies`` and ``runs``. ``status`` is
  ``degraded`` (still 200: inline-data runs do not touch what failed) when its own data
  path fails: the exchange's newest fetch failed or a pause or ban latch holds
  (``dependencies.exchange``, as the orchestrator reports it), the Redis cache is
  unreachable or bypassed (``dependencies.cache``), or its newest ``POST /run`` answer was
  a failure (``runs.lastError``); ``ok`` otherwise. A success clears each one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from fastapi import FastAPI
from starlette.responses import Response

from conclave.agents import Agent
from conclave.market.gateway import MarketGateway
from conclave.pipeline.orchestrator import Pipeline
from conclave.services.health import EXCHANGE_FAILING, cache_state, gateway_state
from conclave.services.health_openapi import (
    AgentHealth,
    AgentInfo,
    AgentLive,
    AgentNotReady,
    AgentReady,
    unavailable,
)
from conclave.services.http_common import json_response
from conclave.settings import Settings
from conclave.timeframes import iso_ms

ENDPOINTS = {"health": "GET /health", "info": "GET /info", "run": "POST /run"}
#: Each dependency check's bound: the orchestrator waits 1 s for this whole answer.
CHECK_TIMEOUT_S = 0.3
#: ``meta.status`` values of a ``POST /run`` answer that count as failures of the service.
FAILED = ("error", "timeout")


class RunStats:
    """``POST /run`` answers since start, by outcome, and the newest failure.

    ``ok``: a signal; ``noSignal``: 200 without one for a data reason (stale, insufficient,
    no data); ``failed``: 200 with ``meta.status`` ``error``/``timeout``, or a 5xx;
    ``rejected``: a 4xx (the caller's input, not the service's fault).
    """

    def __init__(self, now_ms: Callable[[], int]) -> None:
        self.now_ms = now_ms
        self.started_ms = now_ms()
        self.counts = {"served": 0, "ok": 0, "noSignal": 0, "failed": 0, "rejected": 0}
        self.last_error: dict[str, Any] | None = None
        self.last_failed = False

    def answered(self, out: Any) -> None:
        """Count a 200 answer (the agent's wire result)."""
        meta = out.get("meta", {}) if isinstance(out, Mapping) else {}
        status = str(meta.get("status", "ok"))
        if status in FAILED:
            self._failed(200, status, str(meta.get("reason", "")))
        else:
            self._count("ok" if status == "ok" else "noSignal")
            self.last_failed = False

    def refused(self, http: int, code: str, reason: str) -> None:
        """Count a 4xx (the input) or a 5xx (a failure) answer."""
        if http >= 500:
            self._failed(http, code, reason)
        else:
            self._count("rejected")

    def _count(self, outcome: str) -> None:
        self.counts["served"] += 1
        self.counts[outcome] += 1

    def _failed(self, http: int, code: str, reason: str) -> None:
        self._count("failed")
        self.last_failed = True
        at = iso_ms(self.now_ms())
        self.last_error = {"at": at, "http": http, "code": code, "reason": reason[:200]}

    def to_wire(self) -> dict[str, Any]:
        return {"since": iso_ms(self.started_ms), **self.counts, "lastError": self.last_error}


class AgentService(Protocol):
    """What these routes read of the service (`conclave.services.agent_app._Service`)."""

    agent: Agent
    settings: Settings
    now_ms: Callable[[], int]
    gateway: MarketGateway | None
    pipeline: Pipeline | None
    stats: RunStats


def service_info(agent: Agent, settings: Settings) -> dict[str, Any]:
    """``GET /info``: name, version, endpoints, needs per timeframe, parameters and schema."""
    base = agent.info()
    needs = base["needs"]
    timeframes = list(settings.market.timeframes)
    return {
        "name": agent.name,
        "version": agent.version,
        "description": agent.description,
        "endpoints": ENDPOINTS,
        "timeframes": timeframes,
        "needs": {
            "minBars": needs["min_bars"],
            "lookback": needs["lookback"],
            "higherMultiples": needs["higher"],
            "news": needs["news"],
            "account": needs["account"],
        },
        "minBars": {tf: agent.min_bars(tf) for tf in timeframes},
        "lookback": {tf: agent.lookback(tf) for tf in timeframes},
        "higherTimeframes": {tf: list(agent.needs.higher_timeframes(tf)) for tf in timeframes},
        "parameters": base["parameters"],
        "parametersSchema": base["parameters_schema"],
    }


async def health_report(service: AgentService) -> dict[str, Any]:
    """The ``GET /health`` body; see the module docstring for what makes it ``degraded``."""
    deps: dict[str, Any] = {}
    reasons: list[str] = []
    gateway = service.gateway
    if gateway is None:
        deps["exchange"] = {"status": "not_configured"}  # before the lifespan: inline runs only
    else:
        checks = [gateway_state(gateway, timeout_s=CHECK_TIMEOUT_S)]
        if gateway.cache is not None:
            timeout_s = min(CHECK_TIMEOUT_S, service.settings.market.cache.redis_timeout_s)
            url = service.settings.redis_url
            checks.append(cache_state(gateway.cache, url, timeout_s=timeout_s))
        found = await asyncio.gather(*checks)
        deps["exchange"] = found[0]
        if found[0]["status"] in EXCHANGE_FAILING:
            error = found[0].get("lastError") or {}
            reasons.append(f"exchange {found[0]['status']}: {error.get('reason', 'latched')}")
        if len(found) > 1:
            deps["cache"] = found[1]
            if found[1]["status"] != "ok":
                reasons.append(f"cache {found[1]['status']}: {found[1].get('error', '')}")
    stats = service.stats
    if stats.last_failed and stats.last_error is not None:
        reasons.append(f"last run failed: {stats.last_error['code']}")
    return {
        "status": "degraded" if reasons else "ok",
        "agent": service.agent.name,
        "timestamp": iso_ms(service.now_ms()),
        "version": service.agent.version,
        "reasons": reasons,
        "dependencies": deps,
        "runs": stats.to_wire(),
    }


def install_agent_health(app: FastAPI, service: AgentService) -> None:
    """Add ``/health``, ``/health/live``, ``/health/ready`` and ``/info`` to ``app``."""
    name = service.agent.name

    @app.get(
        "/health",
        summary="This agent service and its own data path",
        responses={200: {"model": AgentHealth}},
    )
    async def health() -> Response:
        """``ok`` or ``degraded`` (both 200) with the reasons, dependencies and run counts."""
        t0 = time.perf_counter()
        body = await health_report(service)
        body["checkMs"] = round((time.perf_counter() - t0) * 1000.0, 3)
        return json_response(body)

    @app.get("/health/live", summary="The process answers", responses={200: {"model": AgentLive}})
    async def health_live() -> Response:
        """Always ``{"status": "ok"}`` while the process serves requests."""
        return json_response({"status": "ok", "agent": name})

    @app.get(
        "/health/ready",
        summary="It can answer any run: data gateway open, pipeline built",
        responses={
            200: {"model": AgentReady},
            503: unavailable(AgentNotReady, "not started: no data source or pipeline yet"),
        },
    )
    async def health_ready() -> Response:
        """``ready`` with the source, or 503 ``not_ready`` with the reasons."""
        reasons: list[str] = []
        if service.gateway is None:
            reasons.append("no data source configured")
        elif service.pipeline is None:
            reasons.append("not started: the pipeline for ids-only contexts is not built")
        if reasons:
            return json_response({"status": "not_ready", "agent": name, "reasons": reasons}, 503)
        assert service.gateway is not None
        return json_response({"status": "ready", "agent": name,
                              "source": service.gateway.source.name})  # fmt: skip

    @app.get(
        "/info",
        summary="What this agent needs and the parameters in effect",
        responses={200: {"model": AgentInfo}},
    )
    async def info() -> Response:
        return json_response(service_info(service.agent, service.settings))
