"""What one finished run adds to the orchestrator's metrics, and the breaker gauges.

Recorded by `Runtime.run` for every run it makes (API and scheduler alike; the backtester
replays agents without a runtime and records nothing): the run by decision action and
status, each degraded run under every agent that gave no usable answer, the run's duration,
each agent step's duration by agent, mode and outcome, and the age of the newest closed
candle the run used (the latest ``as_of`` any step reported, to the run's now).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime

from conclave.observability.metrics import (
    AGENT_CALL_DURATION,
    BREAKER_NEXT_PROBE,
    BREAKER_STATE,
    BREAKER_STATES,
    CANDLE_AGE,
    RUN_DURATION,
    RUNS,
    RUNS_DEGRADED,
    StateCollector,
    agent_outcome,
)
from conclave.pipeline.breaker import CircuitBreaker
from conclave.pipeline.orchestrator import PipelineRun


def record_run(run: PipelineRun, http_agents: frozenset[str]) -> None:
    """Count ``run``, whose ``http_agents`` were called over HTTP (the rest in process)."""
    mode = "microservices" if len(http_agents) >= len(run.steps) else "mixed"
    mode = mode if http_agents else "monolithic"
    decision = run.decision
    RUNS.labels(decision.action or "none", decision.status).inc()
    for agent in run.missing_agents:
        RUNS_DEGRADED.labels(agent).inc()
    RUN_DURATION.labels(mode).observe(run.duration_ms / 1000.0)
    newest = 0
    for name, step in run.steps.items():
        outcome = agent_outcome(step.status, step.error)
        where = "http" if name in http_agents else "local"
        AGENT_CALL_DURATION.labels(name, where, outcome).observe(step.duration_ms / 1000.0)
        if step.as_of:
            newest = max(newest, _ms(step.as_of))
    if newest:
        age_s = max(0.0, (run.as_of_ms - newest) / 1000.0)
        CANDLE_AGE.labels(run.symbol, run.timeframe).set(age_s)


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def breaker_collectors(breakers: Callable[[], Mapping[str, CircuitBreaker]]) -> None:
    """Serve each HTTP agent's breaker state (0 closed, 1 half open, 2 open) and the unix
    time of its next probe (0 when closed) from the live breakers at every scrape."""

    def states() -> Iterator[tuple[tuple[str, ...], float]]:
        for name, breaker in sorted(breakers().items()):
            yield (name,), BREAKER_STATES[breaker.state]

    def next_probe() -> Iterator[tuple[tuple[str, ...], float]]:
        for name, breaker in sorted(breakers().items()):
            wait = breaker.retry_in_s()
            yield (name,), (time.time() + wait) if breaker.state != "closed" else 0.0

    StateCollector(*BREAKER_STATE, states).register()
    StateCollector(*BREAKER_NEXT_PROBE, next_probe).register()
