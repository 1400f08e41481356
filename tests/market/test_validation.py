"""Candle validation properties (RELIABILITY.md B1 to B5), with hypothesis; B3's fill."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conclave.errors import InvalidCandlesError, StaleDataError
from conclave.market.candles import Candles
from conclave.market.validation import (
    check_fresh,
    drop_unclosed,
    fill_gaps,
    fill_window,
    find_gaps,
    invalid_row_reasons,
    reject_invalid_rows,
    sort_and_merge_duplicates,
    validate,
)
from conclave.timeframes import HOUR_MS, MINUTE_MS, Timeframe

H1 = Timeframe.parse("1h")
T0 = 1_600_000_000_000 // HOUR_MS * HOUR_MS
PROPS = settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

bar = st.tuples(
    st.floats(1.0, 1e5),  # open
    st.floats(-0.2, 0.2),  # close as a relative move
    st.floats(0.0, 0.1),  # upper wick
    st.floats(0.0, 0.1),  # lower wick
    st.floats(0.0, 1e4),  # volume (0 allowed)
)


def make(bars: list[tuple[float, float, float, float, float]], times: list[int]) -> Candles:
    o = np.array([b[0] for b in bars])
    c = o * (1 + np.array([b[1] for b in bars]))
    h = np.maximum(o, c) * (1 + np.array([b[2] for b in bars]))
    lo = np.minimum(o, c) * (1 - np.array([b[3] for b in bars]))
    v = np.array([b[4] for b in bars])
    return Candles.from_arrays("BTCUSDT", H1, times, o, h, lo, c, v)


series = st.lists(bar, min_size=1, max_size=80).map(
    lambda bars: make(bars, [T0 + i * HOUR_MS for i in range(len(bars))])
)


@PROPS
@given(series, st.integers(0, 3 * HOUR_MS))
def test_b1_no_output_contains_an_open_candle(candles: Candles, after_last_open: int) -> None:
    """A bar whose close time is after as_of is dropped; every closed bar is kept."""
    last_open = int(candles.open_time[-1])
    as_of = last_open + after_last_open
    out, dropped = drop_unclosed(candles, as_of)
    assert np.all(out.close_time <= as_of)
    assert len(out) + dropped == len(candles)
    assert dropped == (1 if after_last_open < HOUR_MS else 0)


@PROPS
@given(series, st.data())
def test_b2_duplicates_merged_and_sorted(candles: Candles, data: st.DataObject) -> None:
    """Shuffled input with up to 10 % duplicated rows comes out as sorted(dedup(input))."""
    n = len(candles)
    dup_count = data.draw(st.integers(0, max(n // 10, 0)))
    dup_idx = data.draw(st.lists(st.integers(0, n - 1), min_size=dup_count, max_size=dup_count))
    idx = np.array(list(range(n)) + dup_idx, dtype=np.int64)
    perm = np.array(data.draw(st.permutations(list(range(len(idx))))), dtype=np.int64)
    messy = candles.take(idx[perm])

    out, merged = sort_and_merge_duplicates(messy)

    assert merged == len(dup_idx)
    assert np.all(np.diff(out.open_time) > 0)
    # duplicates here are exact copies, so merging first/max/min/last gives the original rows
    assert out.equals(candles)


def test_b2_merge_rule_is_first_max_min_last() -> None:
    """Rows sharing an open time merge to first open, max high, min low, last close/volume."""
    c = Candles.from_arrays(
        "BTCUSDT", H1, [T0, T0, T0 + HOUR_MS], [10, 11, 12], [12, 15, 13], [9, 8, 11],
        [11, 14, 12], [1, 2, 3],
    )  # fmt: skip
    out, merged = sort_and_merge_duplicates(c)
    assert merged == 1
    assert out.open.tolist() == [10, 12]
    assert out.high.tolist() == [15, 13]
    assert out.low.tolist() == [8, 11]
    assert out.close.tolist() == [14, 12]
    assert out.volume.tolist() == [2, 3]


@PROPS
@given(st.lists(bar, min_size=3, max_size=80), st.data())
def test_b3_gaps_reported_and_filled_on_an_exact_grid(
    bars: list[tuple[float, float, float, float, float]], data: st.DataObject
) -> None:
    """k missing bars are reported as k; filling gives exact tf steps and flags each fill."""
    full = make(bars, [T0 + i * HOUR_MS for i in range(len(bars))])
    inner = list(range(1, len(bars) - 1))
    missing = data.draw(st.sets(st.sampled_from(inner), max_size=len(inner)))
    keep = np.array([i not in missing for i in range(len(bars))])
    holed = full.take(keep)

    report = find_gaps(holed)
    filled, flags = fill_gaps(holed)

    assert report.missing_bars == len(missing)
    assert (report.count > 0) == (len(missing) > 0)
    assert np.all(np.diff(filled.open_time) == HOUR_MS)
    assert int(flags.sum()) == len(missing)
    assert bool(flags.any()) == (len(missing) > 0)
    assert np.all(filled.volume[flags] == 0)
    assert all(r is None for r in invalid_row_reasons(filled))
    # a filled bar is flat at the previous close
    for i in np.flatnonzero(flags):
        assert filled.open[i] == filled.high[i] == filled.low[i] == filled.close[i]
        assert filled.close[i] == filled.close[i - 1]


def test_b3_fill_window_fills_through_the_newest_closed_bar_while_fresh() -> None:
    """The bar closed at as_of but missing is filled (the data is fresh); once the newest
    bar is stale nothing is made up after it."""
    c = Candles.from_arrays(
        "BTCUSDT", H1, [T0, T0 + HOUR_MS, T0 + 2 * HOUR_MS], [5, 6, 7], [6, 7, 8],
        [4, 5, 6], [6, 7, 7.5], [1, 2, 3],
    )  # fmt: skip
    out, report = fill_window(c, T0 + 4 * HOUR_MS + 10)  # the bar of T0 + 3h has closed
    assert out.open_time.tolist() == [T0 + i * HOUR_MS for i in range(4)]
    assert (out.open[3], out.high[3], out.low[3], out.close[3], out.volume[3]) == (
        7.5, 7.5, 7.5, 7.5, 0.0,
    )  # fmt: skip
    assert (report.bars, report.filled, report.degraded) == (4, 1, True)
    out, report = fill_window(c, T0 + 6 * HOUR_MS)
    assert out.equals(c)
    assert (report.bars, report.filled, report.degraded) == (3, 0, False)


def test_b3_monthly_gaps_fill_on_calendar_months() -> None:
    """A missing month is filled at its calendar open (months are 28 to 31 days long)."""
    months = [1577836800000, 1580515200000, 1585699200000]  # 2020-01, 2020-02, 2020-04
    c = Candles.from_arrays("BTCUSD", "1M", months, [5, 6, 7], [6, 7, 8], [4, 5, 6],
                            [6, 7, 7], [1, 2, 3])  # fmt: skip
    out, made = fill_gaps(c)
    assert out.open_time.tolist() == [1577836800000, 1580515200000, 1583020800000, 1585699200000]
    assert made.tolist() == [False, False, True, False]
    assert out.close[2] == 7.0


def test_fill_gaps_leaves_bars_off_the_grid_alone() -> None:
    """A bar that does not open on the timeframe's grid has no slot: nothing is filled."""
    times = [T0, T0 + HOUR_MS, T0 + 3 * HOUR_MS + 30 * MINUTE_MS]
    c = Candles.from_arrays("BTCUSDT", H1, times, [5, 5, 5], [6, 6, 6], [4, 4, 4],
                            [5, 5, 5], [1, 1, 1])  # fmt: skip
    out, made = fill_gaps(c)
    assert out.equals(c)
    assert not made.any()


@PROPS
@given(series, st.integers(0, 10 * HOUR_MS))
def test_b4_stale_data_is_refused(candles: Candles, lag: int) -> None:
    """Newest bar older than 2 x tf + 5 min before as_of raises StaleDataError, else passes."""
    newest = int(candles.open_time[-1])
    as_of = newest + lag
    if lag > 2 * HOUR_MS + 5 * MINUTE_MS:
        with pytest.raises(StaleDataError) as err:
            check_fresh(candles, as_of)
        assert err.value.reason == "stale_data"
    else:
        check_fresh(candles, as_of)


def test_b4_no_candles_is_stale() -> None:
    """An empty window cannot be fresh."""
    with pytest.raises(StaleDataError):
        check_fresh(Candles.empty("BTCUSDT", H1), T0)


corruption = st.sampled_from(
    ["nan_open", "inf_high", "neg_close", "high_below_low", "neg_volume", "high_below_close"]
)


@PROPS
@given(series, st.data())
def test_b5_bad_rows_rejected_zero_volume_kept(candles: Candles, data: st.DataObject) -> None:
    """Rows with NaN/inf/negative prices, high < low or negative volume are removed."""
    n = len(candles)
    bad = data.draw(st.sets(st.integers(0, n - 1), max_size=n))
    kinds = {i: data.draw(corruption) for i in bad}
    cols = {k: np.array(v, copy=True) for k, v in candles.columns().items()}
    for i, kind in kinds.items():
        if kind == "nan_open":
            cols["open"][i] = np.nan
        elif kind == "inf_high":
            cols["high"][i] = np.inf
        elif kind == "neg_close":
            cols["close"][i] = -1.0
        elif kind == "high_below_low":
            cols["high"][i] = cols["low"][i] * 0.5
        elif kind == "neg_volume":
            cols["volume"][i] = -1.0
        else:
            cols["high"][i] = min(cols["open"][i], cols["close"][i]) * 0.99
    dirty = candles.with_columns(cols)

    out, rejected = reject_invalid_rows(dirty)

    assert {r.open_time_ms for r in rejected} == {int(candles.open_time[i]) for i in bad}
    assert len(out) == n - len(bad)
    assert all(r is None for r in invalid_row_reasons(out))
    stacked = np.stack([out.open, out.high, out.low, out.close, out.volume])
    assert np.isfinite(stacked).all()


def test_b5_zero_volume_bar_is_valid() -> None:
    """A bar with no trades (O=H=L=C, volume 0) is real data, not an error."""
    c = Candles.from_arrays("BTCUSDT", H1, [T0], [5.0], [5.0], [5.0], [5.0], [0.0])
    assert invalid_row_reasons(c) == [None]


def test_validate_strict_names_the_bad_rows() -> None:
    """Strict validation raises with the open time and reason of each bad row."""
    c = Candles.from_arrays(
        "BTCUSDT", H1, [T0, T0 + HOUR_MS], [5, 5], [4, 6], [4.5, 4], [5, 5], [1, 1]
    )
    with pytest.raises(InvalidCandlesError, match=str(T0)):
        validate(c, T0 + 2 * HOUR_MS, strict=True)


def test_validate_chains_every_step() -> None:
    """validate merges, rejects, drops the open bar, reports gaps and keeps closed data."""
    times = [T0, T0 + HOUR_MS, T0 + HOUR_MS, T0 + 4 * HOUR_MS, T0 + 5 * HOUR_MS]
    c = Candles.from_arrays(
        "BTCUSDT", H1, times, [5, 5, 5, 5, np.nan], [6, 6, 6, 6, 6], [4, 4, 4, 4, 4],
        [5, 5, 5, 5, 5], [1, 1, 1, 1, 1],
    )  # fmt: skip
    out, report = validate(c, T0 + 5 * HOUR_MS + 10)
    assert report.duplicates_merged == 1
    assert len(report.rejected) == 1
    assert report.dropped_unclosed == 0
    assert report.gaps.count == 1
    assert report.gaps.missing_bars == 2
    assert out.open_time.tolist() == [T0, T0 + HOUR_MS, T0 + 4 * HOUR_MS]
    assert report.rows == 3


def test_candles_are_immutable() -> None:
    """Columns are read-only: no caller can change a shared window in place."""
    c = Candles.from_arrays("BTCUSDT", H1, [T0], [5.0], [6.0], [4.0], [5.0], [1.0])
    with pytest.raises(ValueError, match="read-only"):
        c.close[0] = 1.0


def test_candles_columnar_round_trip() -> None:
    """to_columns/from_columns preserve every column, optional ones included."""
    c = Candles.from_arrays(
        "BTCUSDT", H1, [T0, T0 + HOUR_MS], [5, 6], [6, 7], [4, 5], [6, 6], [1, 2],
        taker_buy_volume=[0.5, 1.0], trades=[10, 20], source="test",
    )  # fmt: skip
    back = Candles.from_columns(c.to_columns())
    assert back.equals(c)
    assert back.source == "test"


def test_candles_reject_ragged_columns() -> None:
    """Columns of different lengths are refused with a clear error."""
    with pytest.raises(InvalidCandlesError, match="differ in length"):
        Candles.from_arrays("BTCUSDT", H1, [T0, T0 + 1], [5.0], [6.0], [4.0], [5.0], [1.0])


def test_tail_is_a_read_only_view_with_every_column() -> None:
    """tail() shares memory with the source (no copy) and stays read-only."""
    c = Candles.from_arrays(
        "BTCUSDT", H1, [T0, T0 + HOUR_MS, T0 + 2 * HOUR_MS], [5, 6, 7], [6, 7, 8], [4, 5, 6],
        [6, 7, 7], [1, 2, 3], taker_buy_volume=[0.5, 1.0, 1.5], trades=[1, 2, 3], source="s",
    )  # fmt: skip
    t = c.tail(2)
    assert t.open_time.tolist() == [T0 + HOUR_MS, T0 + 2 * HOUR_MS]
    assert t.trades is not None
    assert t.trades.tolist() == [2, 3]
    assert np.shares_memory(t.close, c.close)
    assert (t.source, t.simulated, t.symbol) == ("s", False, "BTCUSDT")
    with pytest.raises(ValueError, match="read-only"):
        t.close[0] = 1.0
    assert c.tail(5) is c
