"""Resampling: real Binance 1h aggregates to the real 4h and 1d files; closed buckets only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conclave.errors import InvalidCandlesError, InvalidRequestError
from conclave.market.candles import Candles
from conclave.market.resample import closed_index_at, closed_index_for, resample
from conclave.market.sources.files import read_candles
from conclave.timeframes import DAY_MS, HOUR_MS, Timeframe

START = 1_500_000_000_000 // DAY_MS * DAY_MS  # a midnight UTC (2017-07-14)
LONG = {"1h": "20170817-20221011", "4h": "20170817-20221011", "1d": "20170817-20221010"}


def load(candles_dir: Path, symbol: str, tf: str, span: str | None = None) -> Candles:
    return read_candles(candles_dir / f"binance_{symbol}_{tf}_{span or LONG[tf]}.csv")


def differing_bars(real: Candles, agg: Candles) -> dict[str, list[int]]:
    """Open times present in only one series, and common bars whose values differ."""
    common, ia, ib = np.intersect1d(real.open_time, agg.open_time, return_indices=True)
    out = {
        "only_real": np.setdiff1d(real.open_time, agg.open_time).tolist(),
        "only_agg": np.setdiff1d(agg.open_time, real.open_time).tolist(),
    }
    for f in ("open", "high", "low", "close"):
        out[f] = common[getattr(real, f)[ia] != getattr(agg, f)[ib]].tolist()
    rel = np.abs(real.volume[ia] - agg.volume[ib]) / np.maximum(np.abs(real.volume[ia]), 1e-12)
    out["volume"] = common[rel > 1e-9].tolist()
    return out


@pytest.mark.parametrize("symbol", ["BTCUSDT", "ETHUSDT"])
@pytest.mark.parametrize("target", ["4h", "1d"])
def test_real_1h_aggregates_to_the_real_higher_timeframe_on_every_bar(
    candles_dir: Path, symbol: str, target: str
) -> None:
    """Binance 1h -> 4h/1d equals Binance's own 4h/1d file on every bar, none missing or extra.

    The 1h file ends at 2022-10-11 10:00, inside the 4h bucket 08:00-12:00 and the day
    2022-10-11: those partial buckets are not emitted, and the real files (freqtrade drops
    unfinished candles) do not have them either, so every real bar is closed and compared.
    """
    hourly = load(candles_dir, symbol, "1h")
    real = load(candles_dir, symbol, target)
    agg = resample(hourly, target)
    diff = differing_bars(real, agg)
    assert diff == {k: [] for k in diff}, diff
    assert len(agg) == len(real) == {"4h": 11271, "1d": 1881}[target]
    tf = Timeframe.parse(target)
    assert agg.close_time[-1] <= hourly.close_time[-1] < tf.add(int(agg.close_time[-1]))


def test_bucket_open_skips_bars_without_trades(candles_dir: Path) -> None:
    """A zero-volume 1h bar (no trades) sets no price: ETH 4h 2017-09-09 20:00 opens at 298.62."""
    hourly = load(candles_dir, "ETHUSDT", "1h")
    t = 1_504_987_200_000
    first = hourly.take(hourly.open_time == t)
    assert first.volume[0] == 0.0
    assert first.open[0] == 298.76
    bar = resample(hourly, "4h").take(slice(None))
    bar = bar.take(bar.open_time == t)
    assert bar.open[0] == 298.62


@pytest.mark.parametrize("symbol", ["BTCUSDT", "ETHUSDT"])
def test_real_5m_aggregates_to_the_independent_1h_download(candles_dir: Path, symbol: str) -> None:
    """NFI's 5m -> 1h equals djienne's 1h on 5,478 of 5,481 common hours.

    Both are Binance downloads made at different times; around the maintenance windows
    Binance revised 3 hours, and djienne's file lacks the hour 2020-12-21 14:00 entirely.
    """
    five = load(candles_dir, symbol, "5m", "20201201-20210717")
    hourly = load(candles_dir, symbol, "1h")
    agg = resample(five, "1h")
    span = (hourly.open_time >= agg.open_time[0]) & (hourly.open_time <= agg.open_time[-1])
    diff = differing_bars(hourly.take(span), agg)
    changed = set(diff["open"] + diff["high"] + diff["low"] + diff["close"])
    assert len(agg) == 5482
    assert diff["only_agg"] == [1_608_559_200_000]
    assert diff["only_real"] == []
    assert changed == {1_608_555_600_000, 1_610_352_000_000, 1_619_139_600_000}
    # the 5m file ends at 21:05 (or 21:10): the 21:00 hour is partial and is not emitted
    assert agg.open_time[-1] == five.open_time[-1] // HOUR_MS * HOUR_MS - HOUR_MS


def test_as_of_drops_buckets_not_closed_yet(candles_dir: Path) -> None:
    """With as_of_ms inside a bucket, that bucket and later ones are left out."""
    hourly = load(candles_dir, "BTCUSDT", "1h").tail(200)
    full = resample(hourly, "4h")
    as_of = int(full.open_time[-3]) + 3 * HOUR_MS
    cut = resample(hourly, "4h", as_of_ms=as_of)
    assert cut.equals(full.take(slice(0, len(full) - 3)))
    assert cut.close_time[-1] <= as_of


def test_monthly_buckets_follow_the_calendar(candles_dir: Path) -> None:
    """1d -> 1M groups calendar months; the month still running at the file's end is dropped."""
    daily = load(candles_dir, "BTCUSDT", "1d")
    monthly = resample(daily, "1M")
    assert monthly.open_time[0] == daily.open_time[0] // DAY_MS * DAY_MS - 16 * DAY_MS
    assert Timeframe.parse("1M").floor_array(monthly.open_time).tolist() == (
        monthly.open_time.tolist()
    )
    sept = monthly.take(monthly.open_time == 1_661_990_400_000)  # 2022-09
    days = daily.take(
        (daily.open_time >= 1_661_990_400_000) & (daily.open_time < 1_664_582_400_000)
    )
    assert len(days) == 30
    assert sept.high[0] == days.high.max()
    assert sept.close[0] == days.close[-1]
    assert monthly.open_time[-1] == 1_661_990_400_000  # October 2022 is unfinished


def test_refuses_timeframes_that_do_not_tile() -> None:
    """4h bars do not tile 6h bars, nor weeks tile months: InvalidRequestError on timeframe."""
    bars = make(np.arange(12), "4h")
    with pytest.raises(InvalidRequestError) as err:
        resample(bars, "6h")
    assert err.value.field == "timeframe"
    with pytest.raises(InvalidRequestError):
        resample(make(np.arange(10), "1w"), "1M")


def test_refuses_unsorted_open_times() -> None:
    """Unsorted or duplicated open times raise InvalidCandlesError instead of mixing bars."""
    with pytest.raises(InvalidCandlesError):
        resample(make(np.array([0, 2, 1]), "1h"), "4h")


def test_empty_in_empty_out() -> None:
    """No bars give no bars, at the target timeframe."""
    out = resample(Candles.empty("BTCUSDT", "1h"), "1d")
    assert len(out) == 0
    assert out.timeframe.name == "1d"


def test_trim_leading_drops_a_bucket_cut_by_the_window() -> None:
    """A window starting mid-bucket gives a short first bucket, unless trim_leading drops it."""
    bars = make(np.arange(2, 16), "1h")
    assert resample(bars, "4h").open_time[0] == START
    assert resample(bars, "4h", trim_leading=True).open_time[0] == START + 4 * HOUR_MS


def test_labels_are_kept() -> None:
    """Source and simulated labels survive aggregation."""
    bars = make(np.arange(8), "1h").relabel(source="sim:1")
    bars = Candles.from_arrays(**{**bars.to_columns(), "simulated": True})
    out = resample(bars, "4h")
    assert out.simulated
    assert out.source == "sim:1"


def test_closed_index_has_no_lookahead(candles_dir: Path) -> None:
    """For each 1h bar, the 4h bar picked had closed by then, and the next one had not."""
    hourly = load(candles_dir, "BTCUSDT", "1h").tail(500)
    higher = resample(hourly, "4h")
    idx = closed_index_for(hourly, higher)
    ok = idx >= 0
    assert np.all(higher.close_time[idx[ok]] <= hourly.close_time[ok])
    nxt = idx + 1
    inside = nxt < len(higher)
    assert np.all(higher.close_time[nxt[inside]] > hourly.close_time[inside])
    assert np.all(np.diff(idx) >= 0)
    assert closed_index_at(higher, [0]).tolist() == [-1]


# -- properties ---------------------------------------------------------------------------


def make(offsets: np.ndarray, tf: str, volume: np.ndarray | None = None) -> Candles:
    """Bars at START + offset x tf with a simple valid price path."""
    step = Timeframe.parse(tf).ms
    n = len(offsets)
    t = START + np.asarray(offsets, dtype=np.int64) * step
    o = 100 + np.cumsum(np.sin(np.arange(n)))
    c = np.r_[o[1:], o[-1] + 1] if n else o
    v = np.full(n, 2.5) if volume is None else volume
    return Candles.from_arrays(
        "TEST", tf, t, o, np.maximum(o, c) + 1, np.minimum(o, c) - 1, c, v,
        taker_buy_volume=v / 2, trades=np.arange(n),
    )  # fmt: skip


hour_series = st.lists(st.integers(0, 24 * 12), min_size=1, max_size=200, unique=True).flatmap(
    lambda offs: st.tuples(
        st.just(sorted(offs)),
        st.lists(st.integers(0, 40), min_size=len(offs), max_size=len(offs)),
    )
)


@settings(max_examples=150, deadline=None)
@given(series=hour_series, as_of_hours=st.one_of(st.none(), st.integers(0, 24 * 14)))
def test_never_emits_a_bucket_that_is_not_closed(
    series: tuple[list[int], list[int]], as_of_hours: int | None
) -> None:
    """Every emitted bucket closed by the last source bar's close and by as_of_ms."""
    offsets, vols = series
    bars = make(np.array(offsets), "1h", np.array(vols, dtype=float) / 4)
    as_of = None if as_of_hours is None else START + as_of_hours * HOUR_MS
    for target in ("4h", "1d", "1w"):
        out = resample(bars, target, as_of_ms=as_of)
        assert np.all(out.close_time <= bars.close_time[-1])
        if as_of is not None:
            assert np.all(out.close_time <= as_of)
        # and nothing closed is held back
        keys = Timeframe.parse(target).floor_array(bars.open_time)
        closes = Timeframe.parse(target).close_time_array(np.unique(keys))
        closed = (closes <= bars.close_time[-1]) & (as_of is None or closes <= (as_of or 0))
        assert len(out) == int(np.count_nonzero(closed))


@settings(max_examples=150, deadline=None)
@given(series=hour_series)
def test_aggregating_in_steps_equals_aggregating_at_once(
    series: tuple[list[int], list[int]],
) -> None:
    """1h -> 4h -> 1d equals 1h -> 1d exactly, zero-volume bars and gaps included.

    When the hourly data stops inside a 4h bucket, that bucket is not emitted, so the
    two-step result can lack the last day the direct one has; otherwise they are equal.
    """
    offsets, vols = series
    bars = make(np.array(offsets), "1h", np.array(vols, dtype=float) / 4)
    direct = resample(bars, "1d")
    steps = resample(resample(bars, "4h"), "1d")
    assert steps.equals(direct.take(slice(0, len(steps))))
    assert len(direct) - len(steps) in (0, 1)
    if bars.close_time[-1] % (4 * HOUR_MS) == 0:
        assert steps.equals(direct)


@settings(max_examples=150, deadline=None)
@given(series=hour_series)
def test_per_bucket_invariants(series: tuple[list[int], list[int]]) -> None:
    """Each bucket: bounds hold, sums add up, open/close are the first/last traded bar's."""
    offsets, vols = series
    bars = make(np.array(offsets), "1h", np.array(vols, dtype=float) / 4)
    out = resample(bars, "4h")
    keys = Timeframe.parse("4h").floor_array(bars.open_time)
    for i, t in enumerate(out.open_time):
        rows = bars.take(keys == t)
        traded = rows.take(rows.volume > 0) if np.any(rows.volume > 0) else rows
        assert out.open[i] == traded.open[0]
        assert out.close[i] == traded.close[-1]
        assert out.high[i] == traded.high.max() >= max(out.open[i], out.close[i])
        assert out.low[i] == traded.low.min() <= min(out.open[i], out.close[i])
        assert out.volume[i] == rows.volume.sum()
        assert out.taker_buy_volume is not None
        assert rows.taker_buy_volume is not None
        assert out.taker_buy_volume[i] == rows.taker_buy_volume.sum()
        assert out.trades is not None
        assert rows.trades is not None
        assert out.trades[i] == rows.trades.sum()
