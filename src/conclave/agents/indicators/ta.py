"""Thin typed TA-Lib wrappers over the whole input (recursive seeds: a value depends on
where the input starts); references for tests and candlestick functions by name."""

from __future__ import annotations

import numpy as np

from conclave.agents.indicators.talib_numpy import talib
from conclave.agents.indicators.windows import F64, I64, _f64


def ta_sma(x: F64, period: int) -> F64:
    """TA-Lib simple moving average."""
    return np.asarray(talib.SMA(_f64(x), timeperiod=period), dtype=np.float64)


def ta_ema(x: F64, period: int) -> F64:
    """TA-Lib exponential moving average (seeded with the SMA of the first ``period``)."""
    return np.asarray(talib.EMA(_f64(x), timeperiod=period), dtype=np.float64)


def ta_rsi(close: F64, period: int = 14) -> F64:
    """TA-Lib Wilder RSI over the whole input (0..100)."""
    return np.asarray(talib.RSI(_f64(close), timeperiod=period), dtype=np.float64)


def ta_atr(high: F64, low: F64, close: F64, period: int = 14) -> F64:
    """TA-Lib Wilder average true range over the whole input (price units)."""
    out = talib.ATR(_f64(high), _f64(low), _f64(close), timeperiod=period)
    return np.asarray(out, dtype=np.float64)


def ta_obv(close: F64, volume: F64) -> F64:
    """TA-Lib on-balance volume (Granville 1963), starting at the first bar's volume."""
    return np.asarray(talib.OBV(_f64(close), _f64(volume)), dtype=np.float64)


def ta_stddev(x: F64, period: int) -> F64:
    """TA-Lib population standard deviation over ``period`` bars."""
    return np.asarray(talib.STDDEV(_f64(x), timeperiod=period, nbdev=1.0), dtype=np.float64)


def ta_candle(name: str, o: F64, h: F64, lo: F64, c: F64) -> I64:
    """A TA-Lib candlestick function by name (``CDLENGULFING``): +100, -100 or 0 per bar."""
    fn = getattr(talib, name)
    return np.asarray(fn(_f64(o), _f64(h), _f64(lo), _f64(c)), dtype=np.int64)
