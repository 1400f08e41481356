"""Exchange time through the orchestrator (A8): a run's as-of follows Binance's clock (Stub-BX,
skewed), never an open candle; ``/health`` shows the skew and warns above 1 s."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from conclave.market.sources.binance import BinanceSource
from conclave.services.api import create_app
from conclave.settings import Settings
from conclave.timeframes import Timeframe, iso_ms
from tests.fakes import FakeBinance
from tests.market.test_exchange_time import CLOSE, Wall

H1 = Timeframe.parse("1h")
RUN = {"symbol": "BTCUSDT", "timeframe": "1h"}


@pytest.fixture
def wall() -> Wall:
    return Wall(CLOSE + 1000)


@pytest.fixture
def stub(shared_data: Path, wall: Wall) -> Iterator[FakeBinance]:
    with FakeBinance(shared_data, wall_ms=wall).running() as fake:
        yield fake
    assert fake.server_errors == []


@pytest.fixture
async def api(tmp_path: Path, stub: FakeBinance, wall: Wall) -> AsyncIterator[httpx2.AsyncClient]:
    """The orchestrator over Stub-BX (SQLite in tmp_path, agents in process, no Redis)."""
    market = {"source": "binance", "binance": {"base_url": stub.base_url}}
    base: dict[str, Any] = {
        "data_dir": tmp_path,
        "logs_dir": tmp_path / "logs",
        "market": market,
        "database_url": None,
        "redis_url": None,
        "use_http_agents": False,
    }
    settings = Settings(_env_file=None, **base)  # type: ignore[call-arg]
    source = BinanceSource(settings.market.binance, rng=random.Random(7), wall_ms=wall)
    app = create_app(settings, now_ms=wall, source=source)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            c.app = app  # type: ignore[attr-defined]
            yield c


async def test_a_run_for_a_candle_closing_in_a_second_uses_the_previous_closed_one(
    api: httpx2.AsyncClient, stub: FakeBinance, wall: Wall
) -> None:
    """The local clock says the 10:00 candle closed a second ago, Binance (2 s behind) says
    it closes in a second: the run is as of Binance's now and reads no open candle."""
    stub.skew_ms = -2000
    resp = await api.post("/pipeline/run", json=RUN)
    assert resp.status_code == 201, resp.text
    run = resp.json()
    assert run["decision"]["status"] in ("ok", "blocked")  # a real decision, not a data failure
    server_now = stub.server_ms()
    assert server_now == CLOSE - 1000
    runtime = api.app.state.runtime  # type: ignore[attr-defined]
    margin = runtime.gateway.exchange_clock.margin_ms  # half the measured round trip
    assert 0 < margin <= 1000
    assert run["asOf"] == iso_ms(server_now - margin)
    klines = stub.requests()
    assert klines, "the run fetched candles"
    assert [h.open_rows for h in klines] == [0] * len(klines)
    # every bar asked for opened before 09:00, so closed by 10:00 - 1 s on Binance's clock
    assert all(int(h.params["endTime"]) < H1.floor(server_now) for h in klines)
    assert runtime.now_ms() == server_now  # the scheduler and watchdog read this clock


@pytest.mark.parametrize(
    ("skew_ms", "status"), [(2000, "warn"), (-2000, "warn"), (500, "ok"), (-1000, "ok")]
)
async def test_health_shows_the_skew_and_warns_above_one_second(
    api: httpx2.AsyncClient, stub: FakeBinance, wall: Wall, skew_ms: int, status: str
) -> None:
    """/health's exchange part carries the measured skew, the round trip and when it was
    measured; its status is ``warn`` when the skew is over 1 s either way."""
    stub.skew_ms = skew_ms
    report = (await api.get("/health")).json()
    exchange = report["dependencies"]["exchange"]
    assert exchange["source"] == "binance"
    assert exchange["clockSkewMs"] == skew_ms
    assert exchange["clockMeasuredAt"] == iso_ms(wall.t)
    assert exchange["clockRttMs"] >= 0
    assert exchange["status"] == status
    assert report["status"] == "ok"  # a measured skew is corrected for, not a degradation
