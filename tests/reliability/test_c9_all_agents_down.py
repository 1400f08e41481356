"""RELIABILITY C9: all nine agents down for 60 s at 5 runs/s: no retry storm.

Pass figure of the row: **agent call attempts <= 1 per agent per run; <= 1 probe per agent
per 30 s while open.** The nine agent services are one real uvicorn server on loopback that
counts every ``POST /<agent>/run`` and answers 503 (each service down behind its endpoint).
The pipeline calls all nine over HTTP through the real client, runners and breakers; the
breakers' clock is the test's, moved 0.2 s per run, so 300 runs are 60 s at 5 runs/s. Every
call is counted per agent and run and stamped with the breakers' time: at most 1 per agent
per run; 5 calls open each breaker at 1.0 s; while open, one probe at 31.0 s (it fails and
reopens the breaker) and no other call: 6 calls per agent in the 60 s. Then the same through
``POST /pipeline/run`` on the real clock: the orchestrator keeps each agent's breaker across
runs, so 15 runs at 5 runs/s reach each agent exactly 5 times.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from starlette.types import Receive, Scope, Send

from conclave.agents import REGISTRY
from conclave.pipeline import Pipeline
from conclave.pipeline.agent_client import AgentHttpClient
from conclave.pipeline.breaker import CircuitBreaker
from conclave.pipeline.http_runner import HttpRunner
from tests.services.helpers import NOW_ISO, SIM_NOW, served, sim_gateway
from tests.services.test_api import make_settings

RUNS, RUN_EVERY_S = 300, 0.2  # 60 s at 5 runs/s
OPEN_S = 30.0


class DownAgents:
    """Nine agent services that are down: every ``POST /<agent>/run`` is counted (with the
    time ``clock`` says) and answered 503."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []
        self.clock = time.monotonic

    def count(self) -> Counter[str]:
        return Counter(agent for agent, _ in self.calls)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        self.calls.append((scope["path"].strip("/").split("/")[0], self.clock()))
        body = b'{"error":{"code":"unavailable","message":"down"}}'
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def down() -> Iterator[tuple[DownAgents, str]]:
    agents = DownAgents()
    with served(agents) as url:
        yield agents, url


async def test_c9_sixty_seconds_at_5_runs_a_second_no_retry_storm(
    down: tuple[DownAgents, str],
) -> None:
    """C9 (pass figure: agent call attempts <= 1 per agent per run; <= 1 probe per agent
    per 30 s while open): 300 runs, 0.2 s apart on the breakers' clock, all nine agents
    answering 503: 0 runs with more than one call to an agent; per agent exactly 5 calls
    before its breaker opens at 1.0 s and 1 probe at 31.0 s, no call 30 s apart or closer
    while open; 6 calls per agent, 54 in all, against 2,700 without breakers."""
    server, url = down
    now = [0.0]
    server.clock = lambda: now[0]
    async with AgentHttpClient() as client:
        runners = {name: HttpRunner(name, f"{url}/{name}", client=client, timeout_s=2.0,
                                    breaker=CircuitBreaker(clock=lambda: now[0]))
                   for name in REGISTRY}  # fmt: skip
        over_one: list[tuple[int, str, int]] = []
        async with Pipeline(sim_gateway(), runners=runners) as pipe:
            for run_no in range(1, RUNS + 1):
                now[0] = run_no * RUN_EVERY_S
                before = server.count()
                run = await pipe.run(None, "BTCUSDT", "1h", as_of_ms=SIM_NOW, now_iso=NOW_ISO)
                assert run.decision.status == "failed"
                delta = server.count() - before
                over_one += [(run_no, a, n) for a, n in delta.items() if n > 1]
    assert over_one == []
    for name in REGISTRY:
        times = [t for agent, t in server.calls if agent == name]
        assert times == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 31.0]), name
        probes = times[5:]  # calls while the breaker was open or half open
        assert all(b - a >= OPEN_S for a, b in zip([1.0, *probes], probes, strict=False))
    assert len(server.calls) == 6 * len(REGISTRY)


async def test_c9_through_the_api_each_agent_is_called_5_times_in_15_runs(
    tmp_path: Path, down: tuple[DownAgents, str]
) -> None:
    """C9 through ``POST /pipeline/run`` (real clock, default breakers: 5 failures, 30 s):
    15 runs at 5 runs/s with all nine agents over HTTP answering 503: every run recorded
    ``failed``; each agent reached exactly 5 times (then skipped, ``circuit_open``), at most
    once per run. Tolerance: the 15 runs take about 3 s and must end inside the 30 s the
    breakers stay open, else a probe would be due."""
    from conclave.services.api import create_app

    server, url = down
    agents = {"urls": {name: f"{url}/{name}" for name in REGISTRY}}
    app = create_app(make_settings(tmp_path, use_http_agents=True, agents=agents))
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx2.AsyncClient(transport=transport, base_url="http://t") as api:
            began = time.monotonic()
            for run_no in range(15):
                started = time.monotonic()
                before = server.count()
                resp = await api.post("/pipeline/run", json={"symbol": "BTCUSDT",
                                                              "timeframe": "1h"})  # fmt: skip
                assert resp.status_code == 201, resp.text
                assert resp.json()["decision"]["status"] == "failed"
                assert max((server.count() - before).values(), default=0) <= 1, run_no
                await asyncio.sleep(max(0.0, RUN_EVERY_S - (time.monotonic() - started)))
            last = resp.json()["steps"]
            # the stated bound: all 15 inside one open period (about 3 s; 30 s even loaded)
            assert time.monotonic() - began < OPEN_S
    assert server.count() == dict.fromkeys(REGISTRY, 5)
    assert all(s["meta"]["reason"].startswith("circuit_open") for s in last.values())
