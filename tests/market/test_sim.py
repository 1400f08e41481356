"""The sim source: deterministic, consistent across timeframes, valid, labelled simulated."""

from __future__ import annotations

import numpy as np
import pytest

from conclave.errors import InvalidRequestError, InvalidSymbolError
from conclave.market.candles import Candles
from conclave.market.resample import resample
from conclave.market.sources.base import CandleSource
from conclave.market.sources.sim import HORIZON_MS, ORIGIN_MS, REGIMES, SimSource
from conclave.market.validation import find_gaps, invalid_row_reasons
from conclave.timeframes import DAY_MS, HOUR_MS, Timeframe

NOW = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC, mid-bar on every timeframe


def clock_that_must_not_run() -> int:
    raise AssertionError("the sim source read the clock although end was given")


def sim(seed: int = 7) -> SimSource:
    return SimSource(seed, now_ms=lambda: NOW)


async def test_same_seed_same_market_other_seed_other_market() -> None:
    """Two sources with one seed agree bar for bar; another seed or symbol differs."""
    a = await sim(7).get_candles("BTCUSDT", "1h", 500)
    b = await sim(7).get_candles("BTCUSDT", "1h", 500)
    c = await sim(8).get_candles("BTCUSDT", "1h", 500)
    d = await sim(7).get_candles("ETHUSDT", "1h", 500)
    assert a.equals(b)
    assert not np.array_equal(a.close, c.close)
    assert not np.array_equal(a.close, d.close)
    assert a.source == "sim:7"


async def test_a_bar_does_not_depend_on_the_window_asked() -> None:
    """The same bar is identical whatever limit, end or cache state produced it."""
    source = sim()
    wide = await source.get_candles("SOLUSDT", "15m", 3000, end=NOW)
    narrow = await sim().get_candles("SOLUSDT", "15m", 7, end=int(wide.open_time[1234]))
    assert narrow.equals(wide.take(slice(1227, 1234)))
    again = await source.get_candles("SOLUSDT", "15m", 3000, end=NOW)
    assert again.equals(wide)


PAIRS = [("1h", "4h"), ("4h", "1d"), ("1m", "1h"), ("1d", "1w"), ("1d", "1M"), ("1h", "1d")]


@pytest.mark.parametrize(("lower", "higher"), PAIRS)
async def test_higher_timeframes_are_the_lower_ones_aggregated(lower: str, higher: str) -> None:
    """Its 4h candles are exactly its 1h candles aggregated, 1d exactly its 4h, and so on."""
    source = sim()
    hi = await source.get_candles("ETHUSDT", higher, 40)
    start = int(hi.open_time[0])
    lo_tf = Timeframe.parse(lower)
    n = lo_tf.bars_between(start, int(hi.close_time[-1]))
    lo = await sim().get_candles("ETHUSDT", lower, n, end=int(hi.close_time[-1]))
    assert lo.open_time[0] == start
    assert resample(lo, higher).equals(hi)


async def test_bars_are_valid_and_realistic() -> None:
    """Every bar passes the OHLC checks; volume is positive; taker-buy leans with the move."""
    c = await sim().get_candles("BTCUSDT", "1h", 5000)
    assert all(r is None for r in invalid_row_reasons(c))
    assert np.all(c.volume > 0)
    assert c.trades is not None
    assert np.all(c.trades > 0)
    assert c.taker_buy_volume is not None
    share = c.taker_buy_volume / c.volume
    up = c.close > c.open
    assert share[up].mean() > 0.5 > share[~up].mean()
    assert find_gaps(c).count == 0
    assert np.array_equal(c.open[1:], c.close[:-1])  # a continuous market
    big = np.abs(np.log(c.close / c.open)) > np.quantile(np.abs(np.log(c.close / c.open)), 0.9)
    assert c.volume[big].mean() > c.volume[~big].mean()  # volume rises with the move
    assert 500 < c.close[0] < 500_000  # BTC-like level


async def test_regimes_switch() -> None:
    """All four regimes appear within two years, and daily volatility differs between them."""
    source = sim()
    days = await source.get_candles("BTCUSDT", "1d", 730)
    codes = source.regime_codes("BTCUSDT", days.open_time)
    assert set(codes.tolist()) == set(range(len(REGIMES)))
    assert np.count_nonzero(np.diff(codes)) >= 8
    moves = np.abs(np.log(days.close / days.open))
    calm, wild = REGIMES.index("ranging"), REGIMES.index("volatile")
    assert moves[codes == wild].mean() > 1.5 * moves[codes == calm].mean()
    assert source.regime_codes("BTCUSDT", [ORIGIN_MS - 1]).tolist() == [-1]


async def test_window_semantics_and_no_clock_when_end_is_given() -> None:
    """Bars open before ``end`` and are closed by it; end=None asks the injected now once."""
    source = SimSource(3, now_ms=clock_that_must_not_run)
    end = NOW
    c = await source.get_candles("BTCUSDT", "4h", 10, end=end)
    assert len(c) == 10
    assert c.close_time[-1] <= end < c.close_time[-1] + 4 * HOUR_MS
    on_boundary = await source.get_candles("BTCUSDT", "4h", 10, end=int(c.close_time[-1]))
    assert on_boundary.equals(c)
    asked: list[int] = []

    def now() -> int:
        asked.append(NOW)
        return NOW

    latest = await SimSource(3, now_ms=now).get_candles("BTCUSDT", "4h", 10)
    assert latest.equals(c)
    assert len(asked) == 1


async def test_nothing_before_the_origin() -> None:
    """Before 2017-01-01 there are no bars; a window across it starts at the origin."""
    source = sim()
    before = await source.get_candles("BTCUSDT", "1d", 100, end=ORIGIN_MS)
    assert len(before) == 0
    assert before.simulated
    across = await source.get_candles("BTCUSDT", "1d", 100, end=ORIGIN_MS + 10 * DAY_MS)
    assert len(across) == 10
    assert across.open_time[0] == ORIGIN_MS


async def test_everything_is_labelled_simulated() -> None:
    """Every result, on every timeframe, carries simulated=True; the source says so too."""
    source = sim()
    assert isinstance(source, CandleSource)
    assert source.simulated
    for tf in ("1m", "5m", "1h", "1d", "1w", "1M"):
        c = await source.get_candles("XRPUSDT", tf, 5)
        assert isinstance(c, Candles)
        assert c.simulated, tf
        assert c.timeframe.name == tf


async def test_refuses_bad_requests() -> None:
    """Bad symbols, limits and the sub-minute timeframe are refused before any work."""
    source = sim()
    with pytest.raises(InvalidSymbolError):
        await source.get_candles("btcusdt", "1h", 5)
    with pytest.raises(InvalidRequestError):
        await source.get_candles("BTCUSDT", "1h", 0)
    with pytest.raises(InvalidRequestError, match="finest timeframe is 1m"):
        await source.get_candles("BTCUSDT", "1s", 5)


async def test_a_tiny_cache_changes_nothing() -> None:
    """With room for only three cached days, bars are still the same (days are regenerated)."""
    small = SimSource(7, now_ms=lambda: NOW, max_days=3)
    for _ in range(2):
        got = await small.get_candles("BTCUSDT", "4h", 300)
        assert got.equals(await sim().get_candles("BTCUSDT", "4h", 300))


async def test_nothing_past_the_horizon() -> None:
    """Bars past the horizon are refused (naming end) instead of building decades of
    minute paths; the last day before it is still served."""
    src = SimSource(now_ms=lambda: 0)
    with pytest.raises(InvalidRequestError) as err:
        await src.get_candles("BTCUSDT", "1h", 24, end=253_402_300_000_000)  # year 9999
    assert err.value.field == "end"
    last = await src.get_candles("BTCUSDT", "1d", 3, end=HORIZON_MS)
    assert last.last_open_ms == HORIZON_MS - DAY_MS
