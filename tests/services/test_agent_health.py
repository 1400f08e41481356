"""An agent service's own ``/health``: computed from its data path and its answers, flipped
by real faults (a source that fails, a redis-server of our own killed by PID, a real agent
process) and cleared by the next success."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
from fastapi import FastAPI

from conclave.errors import ExchangeUnavailableError
from conclave.market.candles import Candles
from conclave.market.gateway import MarketGateway
from conclave.market.sources.sim import SimSource
from conclave.services.agent_app import create_agent_app
from conclave.timeframes import Timeframe
from tests.services.helpers import SIM_NOW, served, sim_gateway
from tests.services.test_api import make_settings
from tests.services.test_health import PORTS, agent_processes
from tests.services.test_health_outages import redis_server

IDS = {"symbol": "BTCUSDT", "timeframe": "1h"}


class FailingSim(SimSource):
    """The sim market, raising ``fail`` while it is set."""

    def __init__(self) -> None:
        super().__init__(now_ms=lambda: SIM_NOW)
        self.fail: Exception | None = None

    async def get_candles(
        self, symbol: str, timeframe: Timeframe | str, limit: int, end: int | None = None
    ) -> Candles:
        if self.fail is not None:
            raise self.fail
        return await super().get_candles(symbol, timeframe, limit, end)


@contextlib.asynccontextmanager
async def client(app: FastAPI) -> AsyncIterator[httpx2.AsyncClient]:
    transport = httpx2.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=transport, base_url="http://a") as c,
    ):
        yield c


async def health(c: httpx2.AsyncClient) -> dict[str, Any]:
    resp = await c.get("/health")
    assert resp.status_code == 200, resp.text  # degraded too: inline runs still work
    body: dict[str, Any] = resp.json()
    return body


async def test_probes_are_honest_before_and_after_the_lifespan(tmp_path: Path) -> None:
    """live always ok; ready 503 before the lifespan (no data source; or, with a gateway
    given, no pipeline yet for ids-only contexts), ready with the source after it."""
    app = create_agent_app("momentum", make_settings(tmp_path))
    given = create_agent_app("momentum", make_settings(tmp_path), gateway=sim_gateway())
    for made, reason in ((app, "no data source configured"), (given, "not started")):
        transport = httpx2.ASGITransport(app=made)
        async with httpx2.AsyncClient(transport=transport, base_url="http://a") as c:
            live = await c.get("/health/live")
            assert (live.status_code, live.json()["status"]) == (200, "ok")
            ready = await c.get("/health/ready")
            assert (ready.status_code, ready.json()["status"]) == (503, "not_ready")
            assert ready.json()["reasons"][0].startswith(reason)
            async with made.router.lifespan_context(made):
                ready = await c.get("/health/ready")
                assert (ready.status_code, ready.json()["status"]) == (200, "ready")
                assert ready.json()["source"].startswith("sim")


async def test_a_failing_source_degrades_health_until_a_run_succeeds(tmp_path: Path) -> None:
    """ids-only runs over a source raising ``exchange_unavailable``: /health degraded (200)
    naming the exchange and the failed run, counts and last error shown; a bad request is
    counted as rejected without clearing it; the source back, one good run makes it ok."""
    source = FailingSim()
    app = create_agent_app(
        "momentum", make_settings(tmp_path), now_ms=lambda: SIM_NOW,
        gateway=MarketGateway(source),
    )  # fmt: skip
    async with client(app) as c:
        body = await health(c)
        assert (body["status"], body["agent"], body["reasons"]) == ("ok", "momentum", [])
        assert body["dependencies"]["exchange"]["status"] == "unknown"  # nothing fetched yet
        source.fail = ExchangeUnavailableError("Binance answered HTTP 503 (attempt 1)")
        run = (await c.post("/run", json=IDS)).json()
        assert run["meta"]["status"] == "error"
        body = await health(c)
        assert body["status"] == "degraded"
        assert body["reasons"] == ["exchange down: exchange_unavailable", "last run failed: error"]
        exchange = body["dependencies"]["exchange"]
        assert exchange["lastError"]["reason"] == "exchange_unavailable"
        assert exchange["lastSuccess"] is None
        assert (body["runs"]["served"], body["runs"]["failed"]) == (1, 1)
        assert body["runs"]["lastError"]["reason"].startswith("exchange_unavailable")

        assert (await c.post("/run", json=IDS | {"symbol": "btc"})).status_code == 422
        body = await health(c)
        assert (body["status"], body["runs"]["rejected"], body["runs"]["served"]) == (
            "degraded", 1, 2,
        )  # fmt: skip

        source.fail = None
        run = (await c.post("/run", json=IDS)).json()
        assert run["meta"]["status"] == "ok", run["meta"]
        body = await health(c)
        assert (body["status"], body["reasons"]) == ("ok", [])
        assert body["dependencies"]["exchange"]["status"] == "ok"
        assert body["dependencies"]["exchange"]["lastSuccess"] is not None
        assert {k: body["runs"][k] for k in ("served", "ok", "failed", "rejected")} == {
            "served": 3, "ok": 1, "failed": 1, "rejected": 1,
        }  # fmt: skip
        assert body["runs"]["lastError"] is not None  # history stays, the status clears


async def test_its_redis_killed_degrades_its_health(tmp_path: Path) -> None:
    """An agent whose gateway caches in our own redis-server: cache ok, status ok; the
    server killed: cache degraded naming the cause, status degraded, still 200."""
    with redis_server(tmp_path) as (proc, url):
        settings = make_settings(tmp_path, redis_url=url, market={"source": "sim"})
        async with client(create_agent_app("momentum", settings)) as c:
            body = await health(c)
            assert body["dependencies"]["cache"] == {"backend": "redis", "status": "ok"}
            assert body["status"] == "ok"
            proc.kill()
            proc.wait(timeout=10)
            body = await health(c)
            assert body["dependencies"]["cache"]["status"] == "degraded"
            assert body["dependencies"]["cache"]["error"].startswith("unreachable")
            assert body["status"] == "degraded"
            assert body["reasons"][0].startswith("cache degraded")


async def test_a_real_agent_process_reports_its_runs(tmp_path: Path) -> None:
    """``python -m conclave.services.agent_main momentum``: /health keeps the seed's fields,
    adds its sim source and counts a real ids-only run."""
    with agent_processes(tmp_path, "momentum"):
        url = f"http://127.0.0.1:{PORTS['momentum']}"
        async with httpx2.AsyncClient(base_url=url, timeout=10, trust_env=False) as c:
            before = (await c.get("/health")).json()
            assert {"status", "agent", "timestamp"} <= set(before)
            assert (before["status"], before["agent"]) == ("ok", "momentum")
            assert before["dependencies"]["exchange"]["simulated"] is True
            assert (await c.post("/run", json=IDS)).json()["meta"]["status"] == "ok"
            after = (await c.get("/health")).json()
            assert after["runs"]["ok"] == before["runs"]["ok"] + 1
            assert after["dependencies"]["exchange"]["status"] == "ok"


async def test_the_orchestrator_lists_a_degraded_agent_as_reachable(tmp_path: Path) -> None:
    """An agent service that reports itself degraded (its own source fails) is still
    reachable: the orchestrator lists it as degraded, not unavailable, and stays ok."""
    from tests.services.test_health import _client, _health

    source = FailingSim()
    source.fail = ExchangeUnavailableError("down")
    app = create_agent_app("momentum", make_settings(tmp_path), gateway=MarketGateway(source))
    with served(app, PORTS["momentum"], lifespan="auto") as url:
        async with httpx2.AsyncClient(base_url=url, trust_env=False) as c:
            await c.post("/run", json=IDS)  # fails: the service is degraded now
            assert (await c.get("/health")).json()["status"] == "degraded"
        agents = {"http": {"momentum": True}, "ports": PORTS}
        async for api in _client(make_settings(tmp_path, agents=agents)):
            code, report = await _health(api)
            section = report["dependencies"]["agents"]
            assert section["items"]["momentum"]["status"] == "degraded"
            assert section["unavailable"] == []
            assert (code, report["status"]) == (200, "ok")
