"""The market gateway: one fetch per (symbol, timeframe), point in time, validated."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from conclave.errors import InvalidRequestError, StaleDataError
from conclave.market.cache import MemoryCache
from conclave.market.candles import Candles
from conclave.market.gateway import MarketGateway
from conclave.timeframes import DAY_MS, HOUR_MS, MINUTE_MS, Timeframe

# a Monday 00:00 UTC, far from any edge
T0 = 1_704_067_200_000 + 7 * DAY_MS
AS_OF = T0 + 30 * DAY_MS + 30 * MINUTE_MS  # half way through a 1h bar


class GridSource:
    """An endless, gap-free market on every timeframe; records every request."""

    name = "grid"
    simulated = False

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, int | None]] = []

    async def get_candles(
        self, symbol: str, timeframe: Timeframe | str, limit: int, end: int | None = None
    ) -> Candles:
        tf = Timeframe.parse(timeframe)
        self.calls.append((symbol, tf.name, limit, end))
        await asyncio.sleep(0)
        assert end is not None, "the gateway must always pass end"
        last_open = tf.floor(end - 1)
        t = last_open - tf.ms * np.arange(limit)[::-1]
        close = 100 + np.sin(t / 3.6e6)
        open_ = close - 0.1
        return Candles.from_arrays(
            symbol, tf, t, open_, close + 0.5, open_ - 0.5, close, np.ones(limit), source=self.name
        )

    async def aclose(self) -> None:
        return None


def calls_for(source: GridSource, tf: str) -> int:
    return sum(1 for c in source.calls if c[1] == tf)


async def test_each_timeframe_is_fetched_once_even_when_listed_twice() -> None:
    """Listing 4h twice and the base again among the higher ones still fetches each once."""
    source = GridSource()
    gateway = MarketGateway(source, resample="fetch")
    snap = await gateway.snapshot(
        "BTCUSDT", "1h", higher=["4h", "4h", "1h", "1d"], limit=50, as_of_ms=AS_OF
    )
    assert sorted(c[1] for c in source.calls) == ["1d", "1h", "4h"]
    assert set(snap.candles) == {"1h", "4h", "1d"}
    # point in time: end is the open of the bar in progress at as_of (closed bars only)
    assert all(c[3] == Timeframe.parse(c[1]).floor(AS_OF) for c in source.calls)
    assert snap.resampled == frozenset()


class LeakySource(GridSource):
    """A source that ignores ``end`` and also returns the bar still in progress."""

    async def get_candles(
        self, symbol: str, timeframe: Timeframe | str, limit: int, end: int | None = None
    ) -> Candles:
        tf = Timeframe.parse(timeframe)
        return await super().get_candles(symbol, tf, limit, None if end is None else end + tf.ms)


async def test_the_open_candle_is_never_requested_and_limit_closed_bars_returned() -> None:
    """As of half way through a bar, only closed bars are asked for; exactly ``limit``."""
    source = GridSource()
    snap = await MarketGateway(source).snapshot("BTCUSDT", "1h", limit=24, as_of_ms=AS_OF)
    base = snap.base
    assert len(base) == 24
    assert int(base.close_time[-1]) <= AS_OF
    assert base.last_open_ms == Timeframe.parse("1h").floor(AS_OF) - HOUR_MS
    assert snap.reports["1h"].rows == 24


async def test_an_open_candle_a_source_returns_anyway_is_dropped() -> None:
    """Validation still drops a bar that is open at as_of if a source sends it (B1)."""
    snap = await MarketGateway(LeakySource()).snapshot("BTCUSDT", "1h", limit=24, as_of_ms=AS_OF)
    assert snap.reports["1h"].dropped_unclosed == 1
    assert int(snap.base.close_time[-1]) <= AS_OF
    assert len(snap.base) == 24


class BrokenRowsSource(GridSource):
    """The grid with high below low on the bars opened at ``broken`` (ms), wherever asked."""

    def __init__(self, broken: set[int]) -> None:
        super().__init__()
        self.broken = broken

    async def get_candles(
        self, symbol: str, timeframe: Timeframe | str, limit: int, end: int | None = None
    ) -> Candles:
        c = await super().get_candles(symbol, timeframe, limit, end)
        bad = np.isin(c.open_time, list(self.broken))
        high = np.where(bad, c.low - 1.0, c.high)
        return Candles.from_arrays(symbol, c.timeframe, c.open_time, c.open, high, c.low,
                                   c.close, c.volume, source=self.name)  # fmt: skip


async def test_rows_validation_rejects_are_made_up_from_older_history() -> None:
    """Three bad rows inside the window still leave ``limit`` valid bars (read again,
    longer), so the live window holds what the backtest's does (parity on bad data)."""
    last_open = Timeframe.parse("1h").floor(AS_OF) - HOUR_MS
    broken = {last_open - k * HOUR_MS for k in (2, 5, 9)}
    source = BrokenRowsSource(broken)
    snap = await MarketGateway(source).snapshot("BTCUSDT", "1h", limit=24, as_of_ms=AS_OF)
    assert len(snap.base) == 24
    assert not np.isin(snap.base.open_time, list(broken)).any()
    assert int(snap.base.open_time[-1]) == last_open
    assert [c[2] for c in source.calls] == [25, 28]  # one read again, longer by the 3 lost


async def test_auto_policy_resamples_a_short_higher_window_from_the_base() -> None:
    """With a base fetch big enough, 4h comes from the 1h bars: one request in all."""
    source = GridSource()
    snap = await MarketGateway(source).snapshot(
        "BTCUSDT", "1h", higher=["4h"], limit=200, higher_limit=30, as_of_ms=AS_OF
    )
    assert [c[1] for c in source.calls] == ["1h"]
    assert snap.resampled == frozenset({"4h"})
    four = snap.candles["4h"]
    assert len(four) == 30
    assert int(four.close_time[-1]) <= AS_OF
    assert len(snap.base) == 200


async def test_auto_policy_fetches_a_higher_window_too_long_to_resample() -> None:
    """500 daily bars would need 12,000+ hourly ones: the daily bars are fetched instead."""
    source = GridSource()
    snap = await MarketGateway(source).snapshot(
        "BTCUSDT", "1h", higher=["1d"], limit=500, as_of_ms=AS_OF
    )
    assert calls_for(source, "1d") == 1
    assert snap.resampled == frozenset()
    assert len(snap.candles["1d"]) == 500


async def test_stale_base_data_raises() -> None:
    """Asked far after the source's data ends, the base timeframe is refused as stale."""

    class Frozen(GridSource):
        async def get_candles(
            self, symbol: str, timeframe: Timeframe | str, limit: int, end: int | None = None
        ) -> Candles:
            return await super().get_candles(symbol, timeframe, limit, T0)

    with pytest.raises(StaleDataError):
        await MarketGateway(Frozen()).snapshot("BTCUSDT", "1h", limit=10, as_of_ms=AS_OF)
    snap = await MarketGateway(Frozen()).snapshot(
        "BTCUSDT", "1h", limit=10, as_of_ms=AS_OF, require_fresh=False
    )
    assert len(snap.base) == 10


async def test_bad_requests_fail_before_any_io() -> None:
    """A lower-case symbol, an unknown timeframe or a lower "higher" timeframe: no fetch."""
    source = GridSource()
    gateway = MarketGateway(source)
    for kwargs in (
        {"symbol": "btcusdt", "timeframe": "1h"},
        {"symbol": "BTCUSDT", "timeframe": "1H"},
        {"symbol": "BTCUSDT", "timeframe": "1h", "higher": ["15m"]},
    ):
        with pytest.raises(InvalidRequestError):
            await gateway.snapshot(**kwargs, limit=10, as_of_ms=AS_OF)  # type: ignore[arg-type]
    assert source.calls == []


async def test_a_cached_gateway_serves_repeated_snapshots_from_the_cache() -> None:
    """Two runs at the same as_of (say two accounts) fetch each timeframe once in all."""
    source = GridSource()
    gateway = MarketGateway(source, cache=MemoryCache(), resample="fetch")
    first, second = await asyncio.gather(
        gateway.snapshot("ETHUSDT", "1h", higher=["4h"], limit=20, as_of_ms=AS_OF),
        gateway.snapshot("ETHUSDT", "1h", higher=["4h"], limit=20, as_of_ms=AS_OF),
    )
    assert len(source.calls) == 2
    assert first.base.equals(second.base)


async def test_runs_inside_one_bar_share_the_cache() -> None:
    """Two runs a few minutes apart inside the same bar fetch each timeframe once in all,
    and see the same closed bars; the next bar's run fetches again."""
    source = GridSource()
    gateway = MarketGateway(source, cache=MemoryCache(), resample="fetch")
    bar = Timeframe.parse("1h").floor(AS_OF)
    a = await gateway.snapshot("ETHUSDT", "1h", higher=["4h"], limit=20, as_of_ms=bar + 60_000)
    b = await gateway.snapshot("ETHUSDT", "1h", higher=["4h"], limit=20, as_of_ms=bar + 3_000_000)
    assert len(source.calls) == 2
    assert a.base.equals(b.base)
    await gateway.snapshot("ETHUSDT", "1h", higher=["4h"], limit=20, as_of_ms=bar + 3_600_000)
    assert calls_for(source, "1h") == 2


async def test_resampled_and_fetched_higher_timeframes_agree_for_the_sim_source() -> None:
    """For the simulator, 4h and 1d built from 1h equal the 4h and 1d it serves directly."""
    sim = pytest.importorskip("conclave.market.sources.sim")
    now = AS_OF

    def source() -> object:
        return sim.SimSource(11, now_ms=lambda: now)

    fetched = await MarketGateway(source(), resample="fetch").snapshot(  # type: ignore[arg-type]
        "BTCUSDT", "1h", higher=["4h", "1d"], limit=24 * 40, higher_limit=30, as_of_ms=AS_OF
    )
    built = await MarketGateway(source(), resample="resample").snapshot(  # type: ignore[arg-type]
        "BTCUSDT", "1h", higher=["4h", "1d"], limit=24 * 40, higher_limit=30, as_of_ms=AS_OF
    )
    assert built.resampled == frozenset({"4h", "1d"})
    assert fetched.simulated
    assert built.simulated
    for tf in ("4h", "1d"):
        a, b = fetched.candles[tf], built.candles[tf]
        assert len(a) == len(b) == 30
        assert np.array_equal(a.open_time, b.open_time)
        for col in ("open", "high", "low", "close", "volume"):
            np.testing.assert_allclose(getattr(a, col), getattr(b, col), rtol=1e-9)


async def test_months_are_built_from_daily_bars_when_one_file_holds_only_days(
    candles_dir: Path,
) -> None:
    """A single 1d file (no 1M file to fetch): the 1w and 1M bars are resampled from it,
    calendar months closed by the as-of only; before, the monthly request failed."""
    from conclave.market.sources.files import FileSource

    path = candles_dir / "binance_BTCUSDT_1d_20170817-20221010.csv"
    as_of = 1_661_990_400_000 + 12 * HOUR_MS  # 2022-09-01T12:00Z
    snap = await MarketGateway(FileSource(path), resample="resample").snapshot(
        "BTCUSDT", "1d", higher=["1w", "1M"], limit=400, higher_limit=12, as_of_ms=as_of
    )
    assert snap.resampled == frozenset({"1w", "1M"})
    months = snap.candles["1M"]
    assert len(months) == 12
    assert int(months.open_time[-1]) == 1_659_312_000_000  # 2022-08-01, closed at 09-01
    days = snap.base
    august = (days.open_time >= 1_659_312_000_000) & (days.open_time < 1_661_990_400_000)
    assert months.high[-1] == days.high[august].max()
    assert months.close[-1] == days.close[august][-1]


async def test_higher_limits_may_differ_per_timeframe() -> None:
    """A mapping asks 30 bars of 4h and 5 of 1d: each is planned (resampled or fetched)
    and trimmed by its own count; 5 days fit one base request, 60 days would not."""
    source = GridSource()
    snap = await MarketGateway(source).snapshot(
        "BTCUSDT", "1h", higher=["4h", "1d"], limit=100, higher_limit={"4h": 30, "1d": 5},
        as_of_ms=AS_OF,
    )  # fmt: skip
    assert snap.resampled == frozenset({"4h", "1d"})
    assert [c[1] for c in source.calls] == ["1h"]
    assert (len(snap.candles["4h"]), len(snap.candles["1d"])) == (30, 5)
    more = await MarketGateway(GridSource()).snapshot(
        "BTCUSDT", "1h", higher=["4h", "1d"], limit=100, higher_limit={"4h": 30, "1d": 60},
        as_of_ms=AS_OF,
    )  # fmt: skip
    assert more.resampled == frozenset({"4h"})
    assert len(more.candles["1d"]) == 60  # fetched from the source
