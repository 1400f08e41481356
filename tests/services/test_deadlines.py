"""RELIABILITY C8: the run's deadline travels to the agents, and no agent starts expired work.

Pass figure of the row: **0 agent computations start with remaining budget <= 0**. The
orchestrator sends each call's deadline (the agent's timeout or what is left of the run's
budget, whichever ends first) as ``x-conclave-deadline`` (ms since the epoch); the agent
checks it before it reads the context and again before it computes, and answers a
``timeout`` step with a ``deadline_exceeded`` reason instead. A run whose budget is spent
sends nothing at all, and the breaker is left alone (the service did nothing wrong).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import orjson
import pytest
from starlette.requests import Request
from starlette.responses import Response

from conclave.agents import REGISTRY
from conclave.agents.plain import wire_answer
from conclave.market.gateway import MarketGateway
from conclave.market.sources.sim import SimSource
from conclave.pipeline import Pipeline
from conclave.pipeline.agent_client import AgentHttpClient
from conclave.pipeline.http_runner import DEADLINE_HEADER, HttpRunner
from conclave.pipeline.runners import RUN_DEADLINE_MS
from conclave.pipeline.wire import encode_input
from tests.services.helpers import SIM_NOW, agent_process, served
from tests.services.test_agent_app import JSON, client

#: Scheduling slack for wall-clock deadlines with both cores busy (ms).
TOLERANCE_MS = 250


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


async def momentum_body() -> bytes:
    return encode_input(await momentum_input())


@pytest.fixture
def computations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every start of the momentum agent's computation in this process."""
    started: list[int] = []
    cls = REGISTRY["momentum"]
    original = cls.run

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        started.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "run", counting)
    return started


async def test_c8_an_agent_starts_no_computation_past_the_deadline(
    computations: list[int],
) -> None:
    """C8: a call whose deadline has passed (by the service's clock) is answered 200 with a
    ``timeout`` step naming ``deadline_exceeded``, and the agent's computation never
    starts; a call inside its deadline, or with none, computes as before."""
    body = await momentum_body()
    async with client("momentum") as c:
        late = await c.post("/run", content=body,
                            headers=JSON | {DEADLINE_HEADER: str(SIM_NOW - 1)})  # fmt: skip
        assert late.status_code == 200
        meta = late.json()["meta"]
        assert meta["status"] == "timeout"
        assert meta["reason"].startswith("deadline_exceeded: the caller's deadline passed")
        assert late.json()["score"] is None
        assert computations == []
        on_time = await c.post("/run", content=body,
                               headers=JSON | {DEADLINE_HEADER: str(SIM_NOW + 5_000)})  # fmt: skip
        assert on_time.json()["meta"]["status"] == "ok"
        none = await c.post("/run", content=body, headers=JSON)
        assert none.json()["meta"]["status"] == "ok"
        assert len(computations) == 2
        junk = await c.post("/run", content=body, headers=JSON | {DEADLINE_HEADER: "soon"})
        assert junk.json()["meta"]["status"] == "ok"  # an unreadable deadline is no deadline


@pytest.fixture
def stopped_agent() -> Iterator[tuple[int, str]]:
    with agent_process("momentum") as (proc, url):
        try:
            yield proc.pid, url
        finally:
            os.kill(proc.pid, signal.SIGCONT)  # never leave it stopped for the kill


async def test_c8_work_that_waited_past_its_deadline_in_the_agents_queue_is_refused(
    stopped_agent: tuple[int, str],
) -> None:
    """C8 with a real agent process: the call is sent with a deadline 300 ms ahead while the
    service is stopped (SIGSTOP: the request waits in its queue); resumed 1 s later, it
    answers a ``timeout`` step with ``deadline_exceeded`` instead of computing."""
    pid, url = stopped_agent
    body = await momentum_body()
    os.kill(pid, signal.SIGSTOP)
    deadline = wall_ms() + 300
    resume = threading.Timer(1.0, os.kill, (pid, signal.SIGCONT))
    resume.start()
    try:
        t0 = time.monotonic()
        async with httpx2.AsyncClient(timeout=20.0, trust_env=False) as http:
            resp = await http.post(f"{url}/run", content=body,
                                   headers=JSON | {DEADLINE_HEADER: str(deadline)})  # fmt: skip
        waited = time.monotonic() - t0
    finally:
        resume.cancel()
        os.kill(pid, signal.SIGCONT)
    assert waited >= 0.9  # it really waited in the stopped service
    meta = resp.json()["meta"]
    assert (resp.status_code, meta["status"]) == (200, "timeout")
    assert meta["reason"].startswith("deadline_exceeded")
    late_ms = int(meta["reason"].split("passed ")[1].split(" ms")[0])
    assert 500 <= late_ms <= 700 + 20 * TOLERANCE_MS  # about 1 s - 0.3 s late, loose above


class Recorder:
    """A stand-in agent service on loopback that records each call's headers and answers
    a valid momentum answer."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        await request.body()
        self.headers.append(dict(request.headers))
        answer = wire_answer(0.1, 50.0, {}, agent="momentum", version="1.0.0", duration_ms=0.1,
                             timestamp="2026-01-01T00:00:00.000Z", as_of=None, status="ok",
                             reason="")  # fmt: skip
        await Response(orjson.dumps(answer), media_type="application/json")(scope, receive, send)


@pytest.fixture
def recorder() -> Iterator[tuple[Recorder, str]]:
    app = Recorder()
    with served(app) as url:
        yield app, url


async def _call(url: str, body_input: Any, run_deadline: int | None) -> Any:
    token = RUN_DEADLINE_MS.set(run_deadline)
    try:
        async with AgentHttpClient() as http:
            runner = HttpRunner("momentum", url, client=http, timeout_s=2.0)
            step = await runner.run(body_input, now_iso="2026-01-01T00:00:00.000Z")
            return step, runner
    finally:
        RUN_DEADLINE_MS.reset(token)


async def momentum_input() -> Any:
    gateway = MarketGateway(SimSource(now_ms=lambda: SIM_NOW))
    async with Pipeline(gateway) as pipe:
        limit, higher = pipe.plan("1h")
        snap = await gateway.snapshot("BTCUSDT", "1h", higher=higher, limit=limit,
                                      as_of_ms=SIM_NOW)  # fmt: skip
        ctx = await pipe.context(snap, None)
        return ctx.input_for(pipe.agents["momentum"])


async def test_c8_the_call_carries_the_earlier_of_the_agent_timeout_and_the_run_budget(
    recorder: tuple[Recorder, str],
) -> None:
    """The header holds the run's deadline when it ends first (0.5 s left of the run, a 2 s
    agent timeout), else now + the agent timeout."""
    app, url = recorder
    body_input = await momentum_input()  # built first: its time is not the run's budget
    run_deadline = wall_ms() + 500
    step, _ = await _call(url, body_input, run_deadline)
    assert step.ok
    assert int(app.headers[-1][DEADLINE_HEADER]) == run_deadline
    before = wall_ms()
    step, _ = await _call(url, body_input, None)
    sent = int(app.headers[-1][DEADLINE_HEADER])
    assert before + 2000 <= sent <= wall_ms() + 2000 + TOLERANCE_MS


async def test_c8_a_spent_budget_sends_nothing_and_leaves_the_breaker_alone(
    recorder: tuple[Recorder, str],
) -> None:
    """With the run's budget spent, no request leaves: the step is a ``timeout`` with
    ``deadline_exceeded``, and the agent's breaker counts no failure."""
    app, url = recorder
    step, runner = await _call(url, await momentum_input(), wall_ms() - 10)
    assert step.status == "timeout"
    assert step.error.startswith("deadline_exceeded")
    assert app.headers == []
    assert runner.breaker.snapshot()["consecutiveFailures"] == 0
    assert runner.breaker.state == "closed"
