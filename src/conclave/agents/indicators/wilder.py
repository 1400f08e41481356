"""Wilder's RSI and ATR over a trailing window (Wilder 1978, *New Concepts in Technical
Trading Systems*).

The averages are TA-Lib's recursion seeded at the start of the window (`wilder_window`), so
the value at t equals TA-Lib's result on just the last ``window`` bars.
"""

from __future__ import annotations

import numpy as np

from conclave.agents.indicators.rolling import diff
from conclave.agents.indicators.smoothing import wilder_rows, wilder_window
from conclave.agents.indicators.windows import F64, _f64


def rsi(close: F64, period: int = 14, window: int = 250) -> F64:
    """Wilder RSI (0..100) of the last ``window`` closes at every bar; 50 when flat.

    Equals ``talib.RSI(close[t - window + 1 : t + 1], period)[-1]`` (Wilder 1978).
    """
    ag, al = rsi_averages(close, period, window)
    tot = ag + al
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(tot > 0, 100.0 * ag / np.where(tot > 0, tot, 1.0), 50.0)
    out[np.isnan(tot)] = np.nan
    return out


def rsi_averages(close: F64, period: int = 14, window: int = 250) -> F64:
    """`rsi`'s Wilder averages of gains and losses (rows 0 and 1) at every bar.

    ``rsi`` at bar t is ``100 * ag / (ag + al)`` where that total is positive, else 50 (NaN
    where it is NaN); `rsi1` gives it for one bar on plain floats.
    """
    c = _f64(close)
    n = c.shape[0]
    if 2 * n >= 8192:  # long series: rows of bars (`wilder_window`'s long path)
        d = diff(c)
        both = np.stack([np.maximum(d, 0.0), np.maximum(-d, 0.0)])
        both[:, 0] = np.nan
        return wilder_window(both, period, window - 1)  # gains and losses in one pass
    # the same values with the bars as rows (`wilder_rows`): the change, then gains
    # ``max(d, 0)`` and losses ``max(-d, 0)``, NaN at the first bar (max keeps a NaN)
    rows = np.empty((n, 2), dtype=np.float64)
    rows[:1] = np.nan
    np.subtract(c[1:], c[:-1], out=rows[1:, 0])
    np.negative(rows[1:, 0], out=rows[1:, 1])
    np.maximum(rows, 0.0, out=rows)
    return wilder_rows(rows, period, window - 1).T


def rsi1(ag: float, al: float) -> float:
    """`rsi` of one bar from its averages (`rsi_averages`), bit for bit."""
    tot = ag + al
    if tot != tot:
        return float("nan")
    return 100.0 * ag / tot if tot > 0 else 50.0


def true_range(high: F64, low: F64, close: F64) -> F64:
    """Wilder's true range: ``max(high, prev close) - min(low, prev close)``; NaN at bar 0."""
    h, lo, c = _f64(high), _f64(low), _f64(close)
    tr = np.empty_like(h)
    tr[:1] = np.nan
    np.maximum(h[1:], c[:-1], out=tr[1:])
    np.subtract(tr[1:], np.minimum(lo[1:], c[:-1]), out=tr[1:])
    return tr


def atr(high: F64, low: F64, close: F64, period: int = 14, window: int = 100) -> F64:
    """Wilder ATR of the last ``window`` bars; equals TA-Lib's ATR on that window."""
    return wilder_window(true_range(high, low, close), period, window - 1)
