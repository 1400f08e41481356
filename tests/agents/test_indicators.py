"""Our indicators against TA-Lib or an independent reference on real candles, to 1e-9."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import talib

from conclave.agents import indicators as ind
from conclave.market.candles import Candles
from tests.agents.helpers import load

pytestmark = pytest.mark.shared_data
FILES = ("binance_BTCUSDT_1h_20170817-20221011.csv", "bittrex_NXTBTC_5m_20180110-20180130.csv")
REL = 1e-9


def close_enough(a: np.ndarray, b: np.ndarray) -> None:
    ok = ~(np.isnan(a) | np.isnan(b))
    assert ok.sum() > 0
    scale = np.maximum(1.0, np.abs(b[ok]))
    assert np.max(np.abs(a[ok] - b[ok]) / scale) <= REL
    assert (np.isnan(a) == np.isnan(b))[ok.argmax() :].all()


@pytest.fixture(params=FILES)
def candles(request: pytest.FixtureRequest, candles_dir: Path) -> Candles:
    return load(candles_dir / request.param)


def samples(n: int, lo: int, k: int = 25) -> list[int]:
    return [int(t) for t in np.linspace(lo, n - 1, k)]


def test_rolling_mean_max_min_equal_talib(candles: Candles) -> None:
    """Bounded-window SMA, MAX and MIN equal TA-Lib's SMA, MAX and MIN."""
    c = candles.close
    for w in (20, 50, 200):
        close_enough(ind.rolling_mean(c, w), talib.SMA(c, w))
        np.testing.assert_array_equal(ind.rolling_max(c, w)[w - 1 :], talib.MAX(c, w)[w - 1 :])
        np.testing.assert_array_equal(ind.rolling_min(c, w)[w - 1 :], talib.MIN(c, w)[w - 1 :])


def test_rolling_std_equals_talib_stddev(candles: Candles) -> None:
    """Two-pass rolling population std equals TA-Lib STDDEV (relative to the price level)."""
    c = candles.close
    ours, ref = ind.rolling_std(c, 20), talib.STDDEV(c, 20, 1.0)
    ok = ~np.isnan(ours)
    assert np.max(np.abs(ours[ok] - ref[ok]) / c[ok]) <= REL


def test_rsi_equals_talib_on_its_window(candles: Candles) -> None:
    """Windowed Wilder RSI at t equals talib.RSI on the last ``window`` closes."""
    c = candles.close
    ours = ind.rsi(c, 14, 250)
    assert np.isnan(ours[248])
    assert not np.isnan(ours[249])
    for t in samples(len(c), 249):
        ref = talib.RSI(c[t - 249 : t + 1], 14)[-1]
        if ref == 0.0 and ours[t] == 50.0:  # flat window: TA-Lib says 0, we say neutral
            continue
        assert abs(ours[t] - ref) <= 1e-9 * 100


def test_atr_equals_talib_on_its_window(candles: Candles) -> None:
    """Windowed Wilder ATR at t equals talib.ATR on the last ``window`` bars."""
    h, lo, c = candles.high, candles.low, candles.close
    ours = ind.atr(h, lo, c, 14, 100)
    for t in samples(len(c), 99):
        w = slice(t - 99, t + 1)
        ref = talib.ATR(h[w], lo[w], c[w], 14)[-1]
        assert abs(ours[t] - ref) <= REL * max(1.0, ref)


def test_obv_change_equals_talib_obv_difference(candles: Candles) -> None:
    """The rolling sum of signed volume is TA-Lib OBV's change over the window."""
    c, v = candles.close, candles.volume
    signed = np.sign(ind.diff(c)) * v
    ours = ind.rolling_sum(signed, 20)
    obv = talib.OBV(c, v)
    ref = np.full_like(obv, np.nan)
    ref[20:] = obv[20:] - obv[:-20]
    ok = ~np.isnan(ours) & ~np.isnan(ref)
    scale = np.maximum(1.0, ind.rolling_sum(v, 20)[ok])
    assert np.max(np.abs(ours[ok] - ref[ok]) / scale) <= REL


def test_exp_window_sum_and_percent_rank_match_naive(candles: Candles) -> None:
    """Exponential window sums and percentile ranks match direct per-bar computations."""
    x = candles.close[-3000:] / candles.close[-1]
    es = ind.exp_window_sum(x, 0.9, 37)
    pr = ind.percent_rank(x, 300)
    for t in samples(len(x), 300, 15):
        ref = math.fsum(0.9**k * x[t - k] for k in range(37))
        assert abs(es[t] - ref) <= REL * abs(ref)
        win = x[t - 299 : t + 1]
        assert pr[t] == ((win < x[t]).sum() + 0.5 * (win == x[t]).sum()) / 300


def test_swing_points_match_a_direct_scan(candles: Candles) -> None:
    """Swing highs and lows equal a per-bar scan of the k bars on each side."""
    h, lo = candles.high[:4000], candles.low[:4000]
    k = 3
    hi_idx, lo_idx = ind.swing_points(h, lo, k)
    ref_h = [
        i
        for i in range(k, len(h) - k)
        if h[i] > h[i - k : i].max() and h[i] >= h[i + 1 : i + k + 1].max()
    ]
    ref_l = [
        i
        for i in range(k, len(lo) - k)
        if lo[i] < lo[i - k : i].min() and lo[i] <= lo[i + 1 : i + k + 1].min()
    ]
    assert hi_idx.tolist() == ref_h
    assert lo_idx.tolist() == ref_l


def test_range_queries_match_slices(candles: Candles) -> None:
    """Sparse-table range max/min equal slicing."""
    x = candles.high[:2000]
    rng = np.random.default_rng(0)
    lo = rng.integers(0, 1900, 200)
    hi = lo + rng.integers(0, 100, 200)
    pairs = list(zip(lo.tolist(), hi.tolist(), strict=True))
    assert np.array_equal(ind.range_max(x, lo, hi), [x[a : b + 1].max() for a, b in pairs])
    assert np.array_equal(ind.range_min(x, lo, hi), [x[a : b + 1].min() for a, b in pairs])


def test_window_values_do_not_depend_on_where_the_array_starts(candles: Candles) -> None:
    """A window cut from a long history gives bit-identical indicator values at its end."""
    h, lo, c = candles.high, candles.low, candles.close
    full = (ind.rsi(c), ind.atr(h, lo, c), ind.rolling_mean(c, 200), ind.rolling_std(c, 20))
    for t in samples(len(c), 600, 10):
        w = slice(t - 400, t + 1)
        part = (
            ind.rsi(c[w]),
            ind.atr(h[w], lo[w], c[w]),
            ind.rolling_mean(c[w], 200),
            ind.rolling_std(c[w], 20),
        )
        for a, b in zip(part, full, strict=False):
            assert a[-1] == b[t]
