"""RELIABILITY A8: ``/api/v3/time`` 2 s ahead of or behind the local clock; candle closure
follows the exchange's clock, and a skew over 1 s shows in ``/health``.

Pass figure of the row: **0 partial candles used; 0 ``-1021`` in the signed-request stub.**
Stub-BX's clock is skewed +-2 s and the local clock is stepped across a 1h close, from 3 s
before to 3 s after it in 250 ms steps (50 instants): at each, a fresh source measures the
offset and two callers read a snapshot, one as of the exchange's now (what a run does) and
one as of the local clock (the gateway caps it). Stub-BX counts, per request, the rows it
served that were still open on its own clock; the sum over all 100 snapshots must be 0, and
no bar used may close after the exchange's now. The second half of the figure has nothing to
count: Conclave sends no signed request to Binance (no orders, A9), so no ``-1021`` can come.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from conclave.market.gateway import MarketGateway
from conclave.market.sources.binance import BinanceSource
from conclave.services.api import create_app
from conclave.settings import BinanceSettings, Settings
from conclave.timeframes import Timeframe
from tests.fakes import FakeBinance
from tests.market.test_exchange_time import CLOSE, Wall

H1 = Timeframe.parse("1h")
SKEWS_MS = (2000, -2000)
#: Local instants around the close, ms: -3 s to +3 s in 250 ms steps.
AROUND_CLOSE_MS = range(-3000, 3001, 250)


@pytest.fixture
def wall() -> Wall:
    return Wall(CLOSE)


@pytest.fixture
def stub(shared_data: Path, wall: Wall) -> Iterator[FakeBinance]:
    """Stub-BX on the test's wall clock (its server time is that plus its skew)."""
    with FakeBinance(shared_data, wall_ms=wall).running() as fake:
        yield fake
    assert fake.server_errors == []


async def test_a8_no_partial_candle_across_a_close_under_2_s_skew(
    stub: FakeBinance, wall: Wall
) -> None:
    """A8 (pass figure: 0 partial candles used): skew +2 s and -2 s x 25 local instants from
    3 s before to 3 s after a 1h close x 2 callers (as of the exchange's now; as of the
    local clock) = 100 snapshots: 0 rows served that were open on Stub-BX's clock, every
    newest bar closed by the exchange's now, and the run's as-of at most one bar behind it."""
    snapshots, open_rows_served, late_bars = 0, 0, []
    for skew in SKEWS_MS:
        for dt in AROUND_CLOSE_MS:
            wall.t, stub.skew_ms = CLOSE + dt, skew
            source = BinanceSource(BinanceSettings(base_url=stub.base_url),
                                   rng=random.Random(7), wall_ms=wall)  # fmt: skip
            gateway = MarketGateway(source)
            server_now = stub.server_ms()
            before = len(stub.requests())
            try:
                run_as_of = await gateway.now_ms(wall())
                assert server_now - 1000 <= run_as_of <= server_now  # less half a round trip
                for as_of in (run_as_of, wall.t):
                    snap = await gateway.snapshot("BTCUSDT", "1h", higher=["4h"], limit=24,
                                                  as_of_ms=as_of)  # fmt: skip
                    snapshots += 1
                    for name, window in snap.candles.items():
                        if int(window.close_time[-1]) > server_now:
                            late_bars.append((skew, dt, name))
                    newest_close = int(snap.base.close_time[-1])
                    assert newest_close >= H1.floor(server_now) - H1.ms, (skew, dt)
            finally:
                await gateway.aclose()
            open_rows_served += sum(h.open_rows for h in stub.requests()[before:])
    assert (snapshots, open_rows_served, late_bars) == (100, 0, [])


@pytest.mark.parametrize(
    ("skew_ms", "status"),
    [
        (2000, "warn"),
        (-2000, "warn"),
        (1001, "warn"),
        (-1001, "warn"),
        (1000, "ok"),
        (-1000, "ok"),
        (0, "ok"),
    ],
)
async def test_a8_health_shows_a_skew_over_one_second(
    tmp_path: Path, stub: FakeBinance, wall: Wall, skew_ms: int, status: str
) -> None:
    """A8 (skew > 1 s shows in health): ``/health``'s exchange part reports the measured skew
    exactly and is ``warn`` when it is over 1,000 ms either way, ``ok`` at 1,000 ms or less;
    the service stays ``ok`` (a measured skew is corrected for)."""
    stub.skew_ms = skew_ms
    base: dict[str, Any] = {"data_dir": tmp_path, "logs_dir": tmp_path / "logs",
                            "market": {"source": "binance",
                                       "binance": {"base_url": stub.base_url}},
                            "database_url": None, "redis_url": None,
                            "use_http_agents": False}  # fmt: skip
    settings = Settings(_env_file=None, **base)
    source = BinanceSource(settings.market.binance, rng=random.Random(7), wall_ms=wall)
    app = create_app(settings, now_ms=wall, source=source)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx2.AsyncClient(transport=transport, base_url="http://t") as api:
            report = (await api.get("/health")).json()
    exchange = report["dependencies"]["exchange"]
    assert (exchange["clockSkewMs"], exchange["status"]) == (skew_ms, status)
    assert report["status"] == "ok"
