"""RELIABILITY H4: slot timing at the candle close (time machine): wait for the close plus the
offset (freqtrade uses 1 s), then fetch.

Pass figure of the row: **100 % of runs use the candle that just closed, never the open
one.** The scheduler as the service builds it (`build_scheduler`, offset 1 s) runs its loop
over a 1h job for the 24 hours before the newest bar of Stub-BX's recorded BTCUSDT history,
with the real Binance client (its exchange clock measured from Stub-BX's ``/api/v3/time``)
and the nine agents in process. Stub-BX and the loop share the test's clock (the time
machine: it moves only when the loop sleeps), so Stub-BX knows which of the rows it serves
are still open on its clock. For each of the 24 runs: it is as of the close of its slot, the
bar that closed last before it ran; every agent's last candle closed there; and over all
klines requests, Stub-BX served 0 rows still open and received none sooner than 1 s after
the newest close.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from conclave.market.sources.binance import BinanceSource
from conclave.scheduler import Job
from conclave.services.execute import build_scheduler
from conclave.services.runtime import Runtime
from conclave.timeframes import Timeframe, iso_ms
from tests.fakes import FakeBinance
from tests.market.test_exchange_time import CLOSE
from tests.scheduler.conftest import FakeClock, FakeSleep
from tests.services.test_api import make_settings

H1 = Timeframe.parse("1h")
JOB = Job(None, "BTCUSDT", "1h")
OFFSET_MS = 1_000
SLOTS = 24
FIRST_CLOSE = CLOSE - (SLOTS - 1) * H1.ms  # CLOSE: the open of Stub-BX's newest 1h bar


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(FIRST_CLOSE + OFFSET_MS)


@pytest.fixture
def stub(shared_data: Path, clock: FakeClock) -> Iterator[FakeBinance]:
    """Stub-BX on the test's clock (no skew)."""
    with FakeBinance(shared_data, wall_ms=clock).running() as fake:
        yield fake
    assert fake.server_errors == []


async def test_h4_every_run_uses_the_bar_that_just_closed(
    tmp_path: Path, stub: FakeBinance, clock: FakeClock
) -> None:
    """H4 (pass figure: 100 % of runs use the candle that just closed, never the open one):
    24 hourly slots run by the loop: 24/24 runs as of their slot's close, which is the
    newest close before the run; every step's last candle closed at it; 0 open rows served
    by Stub-BX; 0 klines requests within 1 s of a close."""
    market = {"source": "binance", "binance": {"base_url": stub.base_url}}
    settings = make_settings(tmp_path, market=market, scheduler={"offset_s": OFFSET_MS / 1000})
    source = BinanceSource(settings.market.binance, rng=random.Random(7), wall_ms=clock)
    runtime = await Runtime.open(settings, now_ms=clock, source=source)
    stop = asyncio.Event()
    sleep = FakeSleep(clock, CLOSE + OFFSET_MS + 1, stop)
    ran: list[tuple[int, int, str]] = []
    try:
        scheduler = build_scheduler(settings, runtime, sleep=sleep, only=JOB)
        sleep.scheduler = scheduler
        await asyncio.wait_for(scheduler.serve_forever(stop), timeout=300)
        for record in await scheduler.claims.records(JOB.id):
            assert record.status == "ok", record
            assert record.run_id is not None
            run = await runtime.store.get_run(record.run_id)
            assert run is not None
            ran.append((record.slot_ms, H1.add(record.slot_ms, 1), run["asOf"]))
            for name, step in run["steps"].items():
                if step["meta"]["status"] == "ok":
                    assert step["meta"]["as_of"] == iso_ms(H1.add(record.slot_ms, 1)), name
    finally:
        await runtime.aclose()

    assert [close for _, close, _ in ran] == [FIRST_CLOSE + i * H1.ms for i in range(SLOTS)]
    used_just_closed = sum(as_of == iso_ms(close) for _, close, as_of in ran)
    assert used_just_closed == len(ran) == SLOTS  # 100 %
    klines = stub.requests()
    assert klines
    assert sum(h.open_rows for h in klines) == 0  # never the open candle
    assert min(h.server_ms % H1.ms for h in klines) >= OFFSET_MS  # after close + offset
