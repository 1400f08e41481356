"""The orchestrator's probes and health report flip with the real state of each component.

Faults are real: a closed port for an agent service, a redis-server of our own killed by
PID, a TCP proxy in front of PostgreSQL closed and reopened (the shared servers are never
touched), and an agent service started on the port a breaker has opened for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from conclave.agents import REGISTRY
from conclave.market.sources import open_source
from conclave.services.agent_app import create_agent_app
from conclave.services.api import create_app
from conclave.settings import Settings
from tests.services.helpers import free_port, served, sim_gateway
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


# -- Redis -----------------------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A redis-server of this test's own on a free port, stopped by its PID at the end."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--dir", str(tmp_path)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            break
        time.sleep(0.05)
    try:
        yield proc, f"redis://127.0.0.1:{port}/0"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


async def test_redis_killed_degrades_the_cache(
    tmp_path: Path, own_redis: tuple[subprocess.Popen[bytes], str]
) -> None:
    """Our redis-server up: cache ok; killed: cache degraded, status degraded, still 200."""
    proc, url = own_redis
    async for api in _client(make_settings(tmp_path, redis_url=url)):
        code, report = await _health(api)
        assert report["dependencies"]["cache"] == {"backend": "redis", "status": "ok"}
        assert (code, report["status"]) == (200, "ok")
        proc.kill()
        proc.wait(timeout=10)
        code, report = await _health(api)
        cache = report["dependencies"]["cache"]
        assert (cache["backend"], cache["status"]) == ("redis", "degraded")
        assert cache["error"].startswith("unreachable")
        assert (code, report["status"]) == (200, "degraded")
        assert (await api.get("/health/ready")).status_code == 200  # runs still work


# -- PostgreSQL --------------------------------------------------------------------------------


class Proxy:
    """A TCP proxy to PostgreSQL that can be closed (connections cut) and reopened."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in self._writers:
            w.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(*self.target)
        self._writers += [writer, up_w]

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.transport.abort()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))


@pytest.mark.postgres
async def test_database_down_is_503_and_not_ready_then_recovers(tmp_path: Path) -> None:
    """PostgreSQL behind a proxy: cut, /health 503 database down and /health/ready 503
    (live still 200); reopened, both 200 again."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgresql+asyncpg://postgres@127.0.0.1:"):
        pytest.skip("needs DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:PORT/DB")
    rest = url.removeprefix("postgresql+asyncpg://postgres@127.0.0.1:")
    pg_port, _, db = rest.partition("/")
    proxy = Proxy(("127.0.0.1", int(pg_port)))
    await proxy.start()
    proxied = f"postgresql+asyncpg://postgres@127.0.0.1:{proxy.port}/{db}"
    try:
        async for api in _client(make_settings(tmp_path, database_url=proxied)):
            assert (await api.get("/health/ready")).status_code == 200
            await proxy.stop()
            code, report = await _health(api)
            assert code == 503
            assert report["dependencies"]["database"]["status"] != "ok"
            ready = await api.get("/health/ready")
            assert ready.status_code == 503
            assert ready.json()["reasons"][0].startswith("database")
            assert "postgres" not in ready.text
            assert (await api.get("/health/live")).status_code == 200
            await proxy.start()
            for _ in range(20):  # the pool drops the cut connections, then reconnects
                if (await api.get("/health/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            assert (await api.get("/health/ready")).status_code == 200
            assert (await _health(api))[0] == 200
    finally:
        await proxy.stop()


# -- agent services ----------------------------------------------------------------------------


async def test_agent_service_probes(tmp_path: Path) -> None:
    """An agent service: live always ok; ready only once its data source is configured
    (the lifespan opens it), 503 naming the reason before."""
    app = create_agent_app("momentum", make_settings(tmp_path))
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        live = await c.get("/health/live")
        assert (live.status_code, live.json()["status"]) == (200, "ok")
        ready = await c.get("/health/ready")
        assert (ready.status_code, ready.json()["status"]) == (503, "not_ready")
        assert ready.json()["reasons"] == ["no data source configured"]
        async with app.router.lifespan_context(app):
            ready = await c.get("/health/ready")
            assert (ready.status_code, ready.json()["status"]) == (200, "ready")
            assert (await c.get("/health/live")).json()["status"] == "ok"
