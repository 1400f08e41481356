"""RELIABILITY F2, the behaviour: a few runs execute, a bounded FIFO queue waits, past
``api.max_runs_in_flight`` a run is refused at once.

The speed of shedding (503 within 50 ms at twice the capacity) is measured by
``benchmarks/load.py``; these tests hold what it answers and when. Timing is asserted only
where it is the behaviour (the queue's wait bound), with the tolerance stated.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import orjson
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from conclave.errors import ConfigurationError
from conclave.observability.metrics import (
    RUN_QUEUE_TIMEOUTS,
    RUN_QUEUE_WAIT,
    RUNS_QUEUED,
    RUNS_RUNNING,
    RUNS_SHED,
)
from conclave.services.admission import QUEUE_WAIT_S, AdmissionMiddleware, install_admission
from conclave.settings import Settings
from conclave.settings.sections import ApiSettings
from tests.security.procs import clean_env, conclave, started, wait_live
from tests.services.helpers import free_port

#: Seconds of slack for a wait bound on a loaded machine (measured: a few ms when quiet).
TOLERANCE_S = 1.5


class Gate:
    """An ASGI app whose run requests wait until the test opens the gate."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.two_in = asyncio.Event()
        self.entered = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.entered += 1
        if self.entered == 2:
            self.two_in.set()
        if scope["path"] == "/pipeline/run":
            await self.open.wait()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


class Turnstile:
    """An ASGI app that records which run entered, its queue wait, and holds each run until
    the test lets it go (`release`)."""

    def __init__(self) -> None:
        self.entered: list[int] = []
        self.waits: dict[int, float] = {}
        self.gates: dict[int, asyncio.Event] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        n = scope["n"]
        self.entered.append(n)
        self.waits[n] = QUEUE_WAIT_S.get()
        await self.gates.setdefault(n, asyncio.Event()).wait()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    def release(self, n: int) -> None:
        self.gates.setdefault(n, asyncio.Event()).set()


class Call:
    """One ``POST /pipeline/run`` through ``app`` as a task: its status, whether it read its
    body, when it was answered."""

    def __init__(self, app: AdmissionMiddleware, n: int) -> None:
        self.status: int | None = None
        self.body = b""
        self.read_body = False
        self.t0 = time.monotonic()
        self.took_s = 0.0
        scope = {"type": "http", "method": "POST", "path": "/pipeline/run", "n": n}
        self.task = asyncio.create_task(app(scope, self._receive, self._send))

    async def _receive(self) -> dict[str, Any]:
        self.read_body = True
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def _send(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = dict(message["headers"])
            self.took_s = time.monotonic() - self.t0
        else:
            self.body += message.get("body", b"")


async def settle() -> None:
    """Let every ready task take its next steps."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_f2_one_run_over_the_limit_is_refused_503_before_it_enters() -> None:
    """Two runs in flight with a limit of 2 (no queue): the third gets 503 ``overloaded`` with
    Retry-After without reaching the app, a GET passes; once a slot frees, a run enters."""
    gate = Gate()
    app = AdmissionMiddleware(gate, limit=2)
    transport = httpx2.ASGITransport(app=app)
    shed_before = RUNS_SHED._value.get()
    async with httpx2.AsyncClient(transport=transport, base_url="http://a") as c:
        first = [asyncio.create_task(c.post("/pipeline/run", json={})) for _ in range(2)]
        await asyncio.wait_for(gate.two_in.wait(), 10.0)
        third = await c.post("/pipeline/run", json={})
        assert third.status_code == 503
        assert third.headers["retry-after"] == "1"
        assert third.json()["error"]["code"] == "overloaded"
        assert "CONCLAVE_API__MAX_RUNS_IN_FLIGHT" in third.json()["error"]["message"]
        assert gate.entered == 2
        assert (await c.get("/pipeline/runs")).status_code == 201  # reads are not counted
        gate.open.set()
        assert [r.status_code for r in await asyncio.gather(*first)] == [201, 201]
        assert (await c.post("/pipeline/run", json={})).status_code == 201
    assert app.in_flight == 0
    assert RUNS_SHED._value.get() == shed_before + 1


async def test_f2_queued_runs_start_in_arrival_order_as_slots_free() -> None:
    """With 2 running and 4 more queued, the waiting runs enter strictly in the order they
    came, one per finished run, and each knows how long it waited (`QUEUE_WAIT_S`)."""
    app = Turnstile()
    mw = AdmissionMiddleware(app, limit=6, running=2, max_wait_s=30.0)
    calls = []
    for n in range(6):
        calls.append(Call(mw, n))
        await settle()
    assert app.entered == [0, 1]
    assert (mw.running, len(mw.queue), mw.in_flight) == (2, 4, 6)
    for done, expected in [(1, [0, 1, 2]), (0, [0, 1, 2, 3]), (3, [0, 1, 2, 3, 4])]:
        app.release(done)
        await settle()
        assert app.entered == expected
    latecomer = Call(mw, 9)  # a slot is not free: it queues behind run 5, it does not overtake
    await settle()
    assert app.entered == [0, 1, 2, 3, 4]
    for n in (2, 4, 5, 9):
        app.release(n)
    await asyncio.gather(*(c.task for c in [*calls, latecomer]))
    assert app.entered == [0, 1, 2, 3, 4, 5, 9]
    assert all(c.status == 201 for c in [*calls, latecomer])
    assert app.waits[0] == app.waits[1] == 0.0
    assert all(app.waits[n] > 0 for n in (2, 3, 4, 5, 9))
    assert (mw.running, len(mw.queue)) == (0, 0)


async def test_f2_past_running_plus_queued_a_run_is_refused_at_once_unread() -> None:
    """1 running and 2 queued fill a limit of 3: the fourth is answered 503 ``overloaded``
    with Retry-After at once, before its body is read, and never reaches the app; the
    queued ones have not read theirs either."""
    app = Turnstile()
    mw = AdmissionMiddleware(app, limit=3, running=1, max_wait_s=30.0)
    shed_before = RUNS_SHED._value.get()
    held = [Call(mw, n) for n in range(3)]
    await settle()
    fourth = Call(mw, 3)
    await asyncio.wait_for(fourth.task, 5.0)
    assert fourth.status == 503
    assert fourth.headers[b"retry-after"] == b"1"
    assert orjson.loads(fourth.body)["error"]["code"] == "overloaded"
    assert not fourth.read_body
    assert not held[1].read_body
    assert not held[2].read_body
    assert app.entered == [0]
    assert RUNS_SHED._value.get() == shed_before + 1
    for n in range(3):
        app.release(n)
    await asyncio.gather(*(c.task for c in held))
    assert [c.status for c in held] == [201, 201, 201]


async def test_f2_a_run_that_waits_too_long_is_refused_and_does_no_work() -> None:
    """``max_wait_s`` 0.2: a run queued behind one that does not finish is answered 503
    ``overloaded`` (naming CONCLAVE_API__MAX_QUEUE_WAIT_S) after 0.2 s, within the stated
    tolerance, without entering the app; it counts as shed and as a queue timeout."""
    app = Turnstile()
    mw = AdmissionMiddleware(app, limit=2, running=1, max_wait_s=0.2)
    shed, timeouts = RUNS_SHED._value.get(), RUN_QUEUE_TIMEOUTS._value.get()
    first = Call(mw, 0)
    await settle()
    second = Call(mw, 1)
    await asyncio.wait_for(second.task, 0.2 + TOLERANCE_S)
    assert second.status == 503
    assert 0.2 <= second.took_s <= 0.2 + TOLERANCE_S
    error = orjson.loads(second.body)["error"]
    assert error["code"] == "overloaded"
    assert "CONCLAVE_API__MAX_QUEUE_WAIT_S" in error["message"]
    assert not second.read_body
    assert app.entered == [0]
    assert (RUNS_SHED._value.get(), RUN_QUEUE_TIMEOUTS._value.get()) == (shed + 1, timeouts + 1)
    assert len(mw.queue) == 0
    app.release(0)
    await first.task
    assert mw.in_flight == 0
    third = Call(mw, 2)  # the slot is free again: straight in
    app.release(2)
    await third.task
    assert third.status == 201


async def test_f2_a_run_that_would_wait_too_long_is_refused_at_once() -> None:
    """Runs have taken at least 0.4 s each and ``max_wait_s`` is 0.3 with 1 running: a run
    that would queue behind the running one is answered 503 ``overloaded`` at once (within
    the stated tolerance, far below the 0.3 s it would have waited) and does not queue."""
    app = Turnstile()
    mw = AdmissionMiddleware(app, limit=4, running=1, max_wait_s=0.3)
    slow = Call(mw, 0)
    await asyncio.sleep(0.4)
    app.release(0)
    await slow.task
    assert mw.run_s >= 0.4
    held = Call(mw, 1)
    await settle()
    timeouts = RUN_QUEUE_TIMEOUTS._value.get()
    refused = Call(mw, 2)
    await asyncio.wait_for(refused.task, TOLERANCE_S)
    assert refused.status == 503
    assert "CONCLAVE_API__MAX_QUEUE_WAIT_S" in orjson.loads(refused.body)["error"]["message"]
    assert refused.took_s < 0.3
    assert len(mw.queue) == 0
    assert RUN_QUEUE_TIMEOUTS._value.get() == timeouts + 1
    app.release(1)
    await held.task


async def test_a_cancelled_waiting_run_gives_up_its_place() -> None:
    """A queued run whose task is cancelled (the server stopping) leaves the queue; the next
    one gets the slot, and nothing stays counted."""
    app = Turnstile()
    mw = AdmissionMiddleware(app, limit=3, running=1, max_wait_s=30.0)
    queued_before = RUNS_QUEUED._value.get()
    calls = [Call(mw, n) for n in range(3)]
    await settle()
    calls[1].task.cancel()
    await settle()
    assert len(mw.queue) == 1
    for n in (0, 2):
        app.release(n)
    await asyncio.gather(calls[0].task, calls[2].task)
    assert app.entered == [0, 2]
    assert (mw.running, len(mw.queue)) == (0, 0)
    assert RUNS_QUEUED._value.get() == queued_before


async def test_the_queue_depth_and_waits_are_metrics() -> None:
    """While 1 runs and 2 wait, ``conclave_runs_queued`` is up by 2 and
    ``conclave_runs_running`` by 1; each admitted run adds one queue-wait observation."""
    app = Turnstile()
    mw = AdmissionMiddleware(app, limit=3, running=1, max_wait_s=30.0)
    queued, running = RUNS_QUEUED._value.get(), RUNS_RUNNING._value.get()
    observed = _histogram_count()
    calls = [Call(mw, n) for n in range(3)]
    await settle()
    assert RUNS_QUEUED._value.get() == queued + 2
    assert RUNS_RUNNING._value.get() == running + 1
    for n in range(3):
        app.release(n)
    await asyncio.gather(*(c.task for c in calls))
    assert (RUNS_QUEUED._value.get(), RUNS_RUNNING._value.get()) == (queued, running)
    assert _histogram_count() == observed + 3


def _histogram_count() -> float:
    samples = next(iter(RUN_QUEUE_WAIT.collect())).samples
    return float(next(s.value for s in samples if s.name.endswith("_count")))


def test_the_limits_are_checked() -> None:
    """Limits below 1 and a wait of 0 are refused; ``running`` is capped at ``limit``."""
    with pytest.raises(ValueError, match="at least 1"):
        AdmissionMiddleware(Gate(), limit=0)
    with pytest.raises(ValueError, match="at least 1"):
        AdmissionMiddleware(Gate(), limit=4, running=0)
    with pytest.raises(ValueError, match="positive"):
        AdmissionMiddleware(Gate(), limit=4, max_wait_s=0)
    mw = AdmissionMiddleware(Gate(), limit=1, running=8)
    assert (mw.max_running, mw.max_queued) == (1, 0)


def test_settings_keep_max_runs_in_flight_as_the_total_bound() -> None:
    """``CONCLAVE_API__MAX_RUNS_IN_FLIGHT`` alone still bounds everything (the running
    default is capped by it); naming more running runs than that is an error."""
    assert ApiSettings(max_runs_in_flight=1).max_runs_in_flight == 1
    with pytest.raises(ValidationError, match="must not exceed max_runs_in_flight"):
        ApiSettings(max_runs_in_flight=4, max_runs_running=5)


def test_a_queue_wait_as_long_as_the_run_deadline_is_refused() -> None:
    """A run must not start with its budget spent: ``max_queue_wait_s`` set at or above
    ``pipeline.run_deadline_s`` stops the app from being built; left at its default, the
    wait is capped at half the deadline."""
    settings = Settings(api={"max_queue_wait_s": 10.0}, pipeline={"run_deadline_s": 10.0})
    with pytest.raises(ConfigurationError, match="MAX_QUEUE_WAIT_S"):
        install_admission(FastAPI(), settings)
    app = FastAPI()
    install_admission(app, Settings(pipeline={"run_deadline_s": 0.5}))
    assert app.user_middleware[0].kwargs["max_wait_s"] == 0.25
    app = FastAPI()
    install_admission(app, Settings())
    assert app.user_middleware[0].kwargs["max_wait_s"] == 5.0


async def test_f2_a_real_orchestrator_sheds_with_503_and_nothing_else(tmp_path: Path) -> None:
    """``conclave serve`` with 3 runs admitted, 1 at a time, and 24 runs sent at once: every
    answer is 201 or 503 ``overloaded`` (no other status, no 500), some of each; the shed
    ones are counted in ``conclave_runs_shed_total`` and every admitted one's queue wait in
    ``conclave_run_queue_wait_seconds``."""
    port = free_port()
    env = clean_env(
        tmp_path, CONCLAVE_API__MAX_RUNS_IN_FLIGHT="3", CONCLAVE_API__MAX_RUNS_RUNNING="1"
    )
    url = f"http://127.0.0.1:{port}"
    cmd = conclave("serve", "--host", "127.0.0.1", "--port", str(port))
    with started(cmd, env, tmp_path, tmp_path / "serve.log") as proc:
        wait_live(url, proc)
        body = orjson.dumps({"symbol": "BTCUSDT", "timeframe": "1h"})
        headers = {"content-type": "application/json"}
        async with aiohttp.ClientSession() as session:

            async def one() -> tuple[int, dict[str, Any]]:
                async with session.post(f"{url}/pipeline/run", data=body, headers=headers) as r:
                    return r.status, await r.json()

            answers = await asyncio.gather(*(one() for _ in range(24)))
            async with session.get(f"{url}/metrics") as r:
                metrics = await r.text()
    statuses = [s for s, _ in answers]
    assert set(statuses) <= {201, 503}, statuses
    assert 201 in statuses, statuses
    assert 503 in statuses, statuses
    assert all(a["error"]["code"] == "overloaded" for s, a in answers if s == 503)
    assert _metric(metrics, "conclave_runs_shed_total") == statuses.count(503)
    assert _metric(metrics, "conclave_run_queue_wait_seconds_count") == statuses.count(201)
    assert _metric(metrics, "conclave_runs_queued") == 0


def _metric(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[1])
