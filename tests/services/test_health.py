"""The orchestrator's probes and health report flip with the real state of each component.

Faults are real: a closed port for an agent service, a redis-server of our own killed by
PID, a TCP proxy in front of PostgreSQL closed and reopened and a PostgreSQL of our own
stopped (the shared servers are never touched), an agent service started on the port a
breaker has opened for, and Stub-BX (the fake Binance on loopback) answering 503, a body
that is not klines, or 418 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from conclave.agents import REGISTRY
from conclave.market.sources import open_source
from conclave.market.sources.binance import BinanceSource
from conclave.market.sources.sim import SimSource
from conclave.services.agent_app import create_agent_app
from conclave.services.api import create_app
from conclave.services.execute import build_scheduler
from conclave.settings import Settings
from conclave.timeframes import iso_ms
from tests.fakes import FakeBinance
from tests.fakes.fake_binance import KLINES, Fault
from tests.market.test_exchange_time import CLOSE, Wall
from tests.scheduler.conftest import DAY0, FakeClock
from tests.services.helpers import free_port, served, sim_gateway, wait_health
from tests.services.test_api import RUN, closed_port, make_settings

RISK = REGISTRY.risk


async def _client(settings: Settings) -> AsyncIterator[httpx2.AsyncClient]:
    source = open_source("sim", settings, now_ms=lambda: time.time_ns() // 1_000_000)
    app = create_app(settings, source=source)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            yield c


async def _health(api: httpx2.AsyncClient) -> tuple[int, dict[str, Any]]:
    resp = await api.get("/health")
    body: dict[str, Any] = resp.json()
    return resp.status_code, body


# -- probes ----------------------------------------------------------------------------------


async def test_live_and_ready_on_embedded_defaults(tmp_path: Path) -> None:
    """live is ok; ready is ready (SQLite answers, every agent in process)."""
    async for api in _client(make_settings(tmp_path)):
        live = await api.get("/health/live")
        assert (live.status_code, live.json()) == (200, {"status": "ok"})
        ready = await api.get("/health/ready")
        assert (ready.status_code, ready.json()["status"]) == (200, "ready")
        code, report = await _health(api)
        assert (code, report["status"]) == (200, "ok")
        assert report["dependencies"]["agents"]["status"] == "ok"


# -- the exchange ----------------------------------------------------------------------------


@pytest.fixture
def stub(shared_data: Path) -> Iterator[FakeBinance]:
    """Stub-BX on its own port; its clock is the test's fixed wall clock (the CSV's end)."""
    with FakeBinance(shared_data, wall_ms=Wall(CLOSE + 1000)).running() as fake:
        yield fake
    assert fake.server_errors == []


@pytest.fixture
async def bx_api(tmp_path: Path, stub: FakeBinance) -> AsyncIterator[httpx2.AsyncClient]:
    """The orchestrator over Stub-BX, SQLite. No retries: one answer decides a fetch; a 2 s
    deadline less a 1.5 s read timeout: a latch longer than 0.5 s fails a fetch at once."""
    binance = {"base_url": stub.base_url, "max_retries": 0, "deadline_s": 2.0,
               "read_timeout_s": 1.5}  # fmt: skip
    market = {"source": "binance", "binance": binance}
    settings = make_settings(tmp_path, market=market)
    wall = stub.wall_ms
    source = BinanceSource(settings.market.binance, wall_ms=wall)
    app = create_app(settings, now_ms=wall, source=source)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            yield c


async def _exchange_after_run(api: httpx2.AsyncClient) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run once; return the run's body and /health's report (which must answer 200)."""
    run = (await api.post("/pipeline/run", json={"symbol": "BTCUSDT", "timeframe": "1h"})).json()
    code, report = await _health(api)
    assert code == 200, report
    return run, report


async def test_exchange_failing_fetches_degrade_health_until_one_succeeds(
    bx_api: httpx2.AsyncClient, stub: FakeBinance
) -> None:
    """No fetch yet: lastSuccess and lastError null (ok only because the time probe answered).
    Klines answering 503: the run fails ``exchange_unavailable`` and /health shows exchange
    ``down`` with that error, the report ``degraded``. A body that is not klines: ``degraded``
    with ``exchange_data``. Stub-BX healthy again: the next run's success makes it ``ok``
    with ``lastSuccess`` after the error, which stays on record."""
    _, report = await _health(bx_api)
    ex = report["dependencies"]["exchange"]
    assert (ex["lastSuccess"], ex["lastError"]) == (None, None)
    assert ex["status"] == "ok"
    assert ex["clockSkewMs"] == 0

    stub.rule = lambda path, _: Fault(503) if path == KLINES else None
    run, report = await _exchange_after_run(bx_api)
    assert run["decision"]["reason"].startswith("exchange_unavailable"), run["decision"]
    ex = report["dependencies"]["exchange"]
    assert ex["status"] == "down"
    assert ex["lastError"]["reason"] == "exchange_unavailable"
    assert "HTTP 503" in ex["lastError"]["message"]
    assert ex["lastSuccess"] is None
    assert report["status"] == "degraded"

    stub.rule = lambda path, _: (
        Fault(200, body=b"<html>maintenance</html>") if path == KLINES else None
    )
    _, report = await _exchange_after_run(bx_api)
    ex = report["dependencies"]["exchange"]
    assert (ex["status"], ex["lastError"]["reason"]) == ("degraded", "exchange_data")
    assert report["status"] == "degraded"

    stub.rule = None
    run, report = await _exchange_after_run(bx_api)
    assert run["decision"]["status"] in ("ok", "blocked"), run["decision"]
    ex = report["dependencies"]["exchange"]
    assert ex["status"] == "ok"
    assert ex["lastSuccess"] is not None
    assert ex["lastSuccess"] >= ex["lastError"]["at"]
    assert ex["lastError"]["reason"] == "exchange_data"
    assert report["status"] == "ok"


async def test_a_ban_shows_banned_until_then_clears_after_retry_after(
    bx_api: httpx2.AsyncClient, stub: FakeBinance
) -> None:
    """418 with Retry-After 1: exchange ``banned`` with ``bannedUntil`` and the ``ip_banned``
    error, report ``degraded``; a run inside the ban sends nothing; 1 s later (the latch's
    own clock; 0.3 s margin) a run succeeds and the exchange is ``ok``."""
    stub.push(Fault(418, headers={"Retry-After": "1"}))
    _, report = await _exchange_after_run(bx_api)
    ex = report["dependencies"]["exchange"]
    assert ex["status"] == "banned"
    assert ex["bannedUntil"]
    assert ex["lastError"]["reason"] == "ip_banned"
    assert report["status"] == "degraded"
    sent = len(stub.requests())
    _, report = await _exchange_after_run(bx_api)
    assert len(stub.requests()) == sent  # the latch holds every call back
    assert report["dependencies"]["exchange"]["status"] == "banned"
    await asyncio.sleep(1.3)
    run, report = await _exchange_after_run(bx_api)
    assert run["decision"]["status"] in ("ok", "blocked"), run["decision"]
    ex = report["dependencies"]["exchange"]
    assert ex["status"] == "ok"
    assert "bannedUntil" not in ex
    assert report["status"] == "ok"


# -- agents in HTTP mode ---------------------------------------------------------------------


async def test_an_agent_service_down_degrades_health_naming_it(tmp_path: Path) -> None:
    """momentum over HTTP on a closed port: /health degraded naming it, still ready."""
    agents = {"http": {"momentum": True}, "ports": {"momentum": closed_port()}}
    async for api in _client(make_settings(tmp_path, agents=agents)):
        code, report = await _health(api)
        assert (code, report["status"]) == (200, "degraded")
        section = report["dependencies"]["agents"]
        assert section["status"] == "degraded"
        assert section["unavailable"] == ["momentum"]
        assert section["items"]["momentum"]["status"] == "down"
        assert (await api.get("/health/ready")).status_code == 200


async def test_risk_manager_down_is_critical_and_not_ready(tmp_path: Path) -> None:
    """The risk agent over HTTP on a closed port: /health critical, /health/ready 503 naming it."""
    agents = {"http": {RISK: True}, "ports": {RISK: closed_port()}}
    async for api in _client(make_settings(tmp_path, agents=agents)):
        code, report = await _health(api)
        assert (code, report["status"]) == (200, "critical")
        assert report["dependencies"]["agents"]["unavailable"] == [RISK]
        ready = await api.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["status"] == "not_ready"
        assert any(RISK in r for r in ready.json()["reasons"])
        assert (await api.get("/health/live")).status_code == 200


@contextlib.contextmanager
def agent_processes(tmp_path: Path, *names: str) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """``python -m conclave.services.agent_main NAME`` for each name (sim data, no Redis), on
    the port the orchestrator's settings give it (`PORTS`); killed by PID at the end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCLAVE_")}
    env |= {"CONCLAVE_MARKET__SOURCE": "sim", "REDIS_URL": "", "DATABASE_URL": ""}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in names:
            args = ["--host", "127.0.0.1", "--port", str(PORTS[name]), "--env-file", "none"]
            cmd = [sys.executable, "-m", "conclave.services.agent_main", name, *args]
            out = subprocess.DEVNULL
            procs[name] = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=out, stderr=out)
        for name in names:
            wait_health(f"http://127.0.0.1:{PORTS[name]}", name, timeout_s=60)
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


PORTS = {"momentum": free_port(), RISK: free_port()}


async def test_real_agent_processes_killed_degrade_then_make_health_critical(
    tmp_path: Path,
) -> None:
    """momentum and the risk agent as real processes over HTTP: ok and ready. momentum
    killed: degraded naming it, still ready. The risk agent killed too: critical, and
    /health/ready 503 naming it."""
    agents = {"http": {"momentum": True, RISK: True}, "ports": PORTS}
    with agent_processes(tmp_path, "momentum", RISK) as procs:
        async for api in _client(make_settings(tmp_path, agents=agents)):
            code, report = await _health(api)
            assert (code, report["status"]) == (200, "ok"), report
            assert report["dependencies"]["agents"]["items"][RISK]["mode"] == "http"
            assert (await api.get("/health/ready")).status_code == 200
            procs["momentum"].kill()
            procs["momentum"].wait(timeout=10)
            code, report = await _health(api)
            assert (code, report["status"]) == (200, "degraded")
            assert report["dependencies"]["agents"]["unavailable"] == ["momentum"]
            assert (await api.get("/health/ready")).status_code == 200
            procs[RISK].kill()
            procs[RISK].wait(timeout=10)
            code, report = await _health(api)
            assert (code, report["status"]) == (200, "critical")
            assert report["dependencies"]["agents"]["unavailable"] == ["momentum", RISK]
            ready = await api.get("/health/ready")
            assert ready.status_code == 503
            assert any(RISK in r for r in ready.json()["reasons"])


@contextlib.contextmanager
def agent_on_port(name: str, port: int) -> Iterator[None]:
    """The real service of agent ``name`` served by uvicorn in a thread on ``port``."""
    app = create_agent_app(name, make_settings(Path(".")), gateway=sim_gateway())
    with served(app, port, lifespan="auto"):
        yield


async def test_agents_shows_the_breaker_open_then_closed_after_a_probe(tmp_path: Path) -> None:
    """Settings threshold 2: two failed calls to a closed port open momentum's breaker
    (/agents: open with a next-probe time, /health degraded); once the service listens and
    open_s has passed, one run's probe closes it."""
    port = free_port()
    agents = {
        "http": {"momentum": True},
        "ports": {"momentum": port},
        "breaker": {"failures": 2, "open_s": 2.0, "probes": 1},
    }
    async for api in _client(make_settings(tmp_path, agents=agents)):
        for _ in range(2):
            run = (await api.post("/pipeline/run", json=RUN)).json()
            assert run["steps"]["momentum"]["meta"]["reason"].startswith("connection_refused")
        states = {a["name"]: a for a in (await api.get("/agents")).json()}
        breaker = states["momentum"]["breaker"]
        assert breaker["state"] == "open"
        assert breaker["consecutiveFailures"] == 2
        assert breaker["nextProbeAt"] is not None
        assert 0 < breaker["nextProbeInS"] <= 2.0
        local = next(n for n in REGISTRY if n != "momentum")
        assert "breaker" not in states[local]  # in process: no breaker
        run = (await api.post("/pipeline/run", json=RUN)).json()
        assert run["steps"]["momentum"]["meta"]["reason"].startswith("circuit_open")
        code, report = await _health(api)
        assert (code, report["status"]) == (200, "degraded")
        assert report["dependencies"]["agents"]["items"]["momentum"]["breaker"] == "open"
        with agent_on_port("momentum", port):
            # the service answers now, but until its breaker closes it is still unavailable
            code, report = await _health(api)
            assert report["dependencies"]["agents"]["items"]["momentum"]["status"] == "ok"
            assert report["dependencies"]["agents"]["unavailable"] == ["momentum"]
            await asyncio.sleep(2.05)
            probe = (await api.post("/pipeline/run", json=RUN)).json()
            assert probe["steps"]["momentum"]["meta"]["status"] == "ok", probe["steps"]["momentum"]
            states = {a["name"]: a for a in (await api.get("/agents")).json()}
            assert states["momentum"]["breaker"]["state"] == "closed"
            assert states["momentum"]["breaker"]["nextProbeAt"] is None
            assert states["momentum"]["status"] == "ok"


# -- the scheduler --------------------------------------------------------------------------


async def test_a_job_that_ran_then_stopped_is_named_stalled_after_two_intervals(
    tmp_path: Path,
) -> None:
    """A 1m job run at two closes: scheduler ok with its last success. Nobody runs it for two
    intervals plus the 1 s offset: /health degraded naming it (``stalled``, ``overdueSince``);
    its next run makes /health ok again (H2)."""
    clock = FakeClock(DAY0 + 1000)
    app = create_app(make_settings(tmp_path), now_ms=clock, source=SimSource(now_ms=clock))
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as api:
            job = {"accountId": "paper-1", "symbol": "BTCUSDT", "timeframe": "1m"}
            job_id = (await api.post("/scheduler/jobs", json=job)).json()["id"]
            scheduler = build_scheduler(app.state.runtime.settings, app.state.runtime)
            for _ in range(2):
                [outcome] = await scheduler.run_due_once()
                assert outcome.status == "ok"
                clock.advance(60)
            section = (await _health(api))[1]["dependencies"]["scheduler"]
            assert (section["status"], section["stalled"]) == ("ok", [])
            last = section["jobs"][0]["lastSuccessAt"]
            assert last == iso_ms(DAY0 + 60_000)  # the close of the newest slot it ran
            clock.advance(60 + 1.001)  # 2 intervals + 1 s after that close, without a run
            code, report = await _health(api)
            assert (code, report["status"]) == (200, "degraded")
            section = report["dependencies"]["scheduler"]
            assert section["stalled"] == [job_id]
            assert section["jobs"][0]["status"] == "stalled"
            assert section["jobs"][0]["overdueSince"] is not None
            await scheduler.run_due_once()
            assert (await _health(api))[1]["status"] == "ok"
