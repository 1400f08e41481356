"""The local candle store: incremental, closed bars only, readable as a file source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conclave.market.candles import Candles
from conclave.market.sources.files import FileSource
from conclave.market.store import CandleStore, source_slug
from conclave.timeframes import DAY_MS, HOUR_MS, MINUTE_MS, Timeframe

LISTED = 1_704_067_200_000  # the market opens 2024-01-01 00:00 UTC


class LiveSource:
    """A gap-free market from LISTED up to ``now`` (the newest bar still open); counts calls."""

    name = "live:test"
    simulated = False

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms
        self.calls = 0
        self.rows_served = 0

    async def get_candles(
        self, symbol: str, timeframe: Timeframe | str, limit: int, end: int | None = None
    ) -> Candles:
        tf = Timeframe.parse(timeframe)
        self.calls += 1
        stop = min(end if end is not None else self.now_ms, self.now_ms)
        last = tf.floor(stop - 1)
        t = np.arange(max(LISTED, last - (limit - 1) * tf.ms), last + 1, tf.ms, dtype=np.int64)
        self.rows_served += len(t)
        close = 50 + (t - LISTED) / tf.ms % 7
        return Candles.from_arrays(
            symbol, tf, t, close, close + 1, close - 1, close, np.full(len(t), 2.5),
            taker_buy_volume=np.ones(len(t)), source=self.name,
        )  # fmt: skip

    async def aclose(self) -> None:
        return None


def test_source_names_become_directory_slugs() -> None:
    """``sim:7`` is stored under ``sim-7``, ``binance`` under ``binance``."""
    assert source_slug("sim:7") == "sim-7"
    assert source_slug("binance") == "binance"
    assert source_slug("ccxt:kraken") == "ccxt-kraken"
    assert source_slug("file:/a/b") == "file-a-b"


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
async def test_a_second_update_fetches_only_the_new_bars(tmp_path: Path, suffix: str) -> None:
    """The first run backfills; six hours later only the six bars closed since are asked for."""
    store = CandleStore(tmp_path, suffix=suffix)
    now = LISTED + 30 * DAY_MS + 20 * MINUTE_MS
    source = LiveSource(now)
    first = await store.update(source, "BTCUSDT", "1h", now_ms=now, backfill_bars=300)
    assert first.added == first.rows == 300  # the open 1h bar at `now` is not stored
    assert first.last_open_ms == Timeframe.parse("1h").floor(now) - HOUR_MS
    assert first.path == tmp_path / "live-test" / f"BTCUSDT_1h{suffix}"
    calls, served = source.calls, source.rows_served

    later = now + 6 * HOUR_MS
    source.now_ms = later
    second = await store.update(source, "BTCUSDT", "1h", now_ms=later, backfill_bars=300)
    assert second.added == 6
    assert second.rows == 306
    assert source.calls - calls == 1
    assert source.rows_served - served == 6  # only the six closed bars, not the open one

    third = await store.update(source, "BTCUSDT", "1h", now_ms=later)
    assert third.added == 0
    assert third.rows == 306


async def test_since_pages_forward_in_windows_of_page_limit(tmp_path: Path) -> None:
    """From --since, 2,500 hourly bars arrive in three pages of at most 1,000 each."""
    store = CandleStore(tmp_path)
    since = LISTED + 10 * DAY_MS
    now = since + 2500 * HOUR_MS + 5 * MINUTE_MS
    source = LiveSource(now)
    pages: list[tuple[int, int]] = []
    result = await store.update(
        source, "ETHUSDT", "1h", now_ms=now, since_ms=since, page_limit=1000,
        on_progress=lambda done, total: pages.append((done, total)),
    )  # fmt: skip
    assert result.rows == 2500
    assert result.first_open_ms == since
    assert source.calls == 3
    assert pages[-1] == (3, 3)
    stored = await store.read(source.name, "ETHUSDT", "1h")
    assert stored is not None
    assert np.all(np.diff(stored.open_time) == HOUR_MS)


async def test_the_store_reads_back_through_the_file_source(tmp_path: Path) -> None:
    """What the store wrote is what ``file:<store>/<slug>`` serves, column for column."""
    store = CandleStore(tmp_path)
    now = LISTED + 5 * DAY_MS
    source = LiveSource(now)
    await store.update(source, "BTCUSDT", "4h", now_ms=now, backfill_bars=20)
    expected = (await source.get_candles("BTCUSDT", "4h", 20, now)).relabel(source="x")
    via_file = FileSource(store.directory(source.name))
    got = await via_file.get_candles("BTCUSDT", "4h", 1000)
    assert got.equals(expected)
    assert got.taker_buy_volume is not None


async def test_nothing_to_fetch_writes_nothing(tmp_path: Path) -> None:
    """Before the market lists, an update adds nothing and creates no file."""
    store = CandleStore(tmp_path)
    now = LISTED - DAY_MS
    result = await store.update(LiveSource(now), "BTCUSDT", "1d", now_ms=now, backfill_bars=5)
    assert (result.added, result.rows) == (0, 0)
    assert not result.path.exists()
