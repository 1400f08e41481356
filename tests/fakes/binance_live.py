"""Recorded candles served as if live: Stub-BX's ``serve_live`` series.

The recorded Binance candles of ../shared/data end in 2021-2022 and exist for a few
symbols and intervals. For load tests that need every symbol and interval fresh now, Stub-BX
can serve the recorded rows of BTCUSDT relabelled in time: row ``k`` of ``n`` opens
``n - 1 - k`` bars before the bar open at the server's clock, so the newest row served is
still open (as on the exchange) and the window has no gaps. The values are real recorded
OHLCV rows; only their open and close times are new. An interval with a recorded CSV of its
own (5m, 1h, 4h, 1d) serves it; every other interval serves the 5m rows (the longest file).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from conclave.timeframes import Timeframe

#: The recorded CSV of each interval that has one, by name under ../shared/data/candles.
RECORDED = {
    "5m": "binance_BTCUSDT_5m_20201201-20210717.csv",
    "1h": "binance_BTCUSDT_1h_20170817-20221011.csv",
    "4h": "binance_BTCUSDT_4h_20170817-20221011.csv",
    "1d": "binance_BTCUSDT_1d_20170817-20221010.csv",
}
FALLBACK = "5m"

Rows = Callable[[int, int], list[list[Any]]]


@functools.cache
def _ohlcv(path: Path) -> np.ndarray[Any, Any]:
    data: np.ndarray[Any, Any] = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64)
    return data[:, 1:6]


def live_times(tf: Timeframe, server_ms: int, n: int) -> np.ndarray[Any, Any]:
    """Open times of ``n`` consecutive bars of ``tf``, the last one open at ``server_ms``."""
    anchor = tf.floor(server_ms)
    back = np.arange(n - 1, -1, -1, dtype=np.int64)
    if tf.is_monthly:
        months = np.datetime64(anchor, "ms").astype("datetime64[M]") - back * tf.count
        out: np.ndarray[Any, Any] = months.astype("datetime64[ms]").astype(np.int64)
        return out
    return anchor - back * tf.ms


def live_series(candles_dir: Path, interval: str, server_ms: int) -> tuple[Any, Rows]:
    """Open times and a row maker (``rows(i, j)``, Binance's 12 fields) for ``interval``."""
    tf = Timeframe.parse(interval)
    values = _ohlcv(candles_dir / RECORDED.get(interval, RECORDED[FALLBACK]))
    t = live_times(tf, server_ms, len(values))

    def rows(i: int, j: int) -> list[list[Any]]:
        out = []
        closes = tf.close_time_array(t[i:j])
        for k in range(i, j):
            o, h, lo, c, v = values[k]
            taker = v * 0.5
            out.append([
                int(t[k]), f"{o:.8f}", f"{h:.8f}", f"{lo:.8f}", f"{c:.8f}", f"{v:.8f}",
                int(closes[k - i]) - 1, f"{v * c:.8f}", int(v * 10) + 1,
                f"{taker:.8f}", f"{taker * c:.8f}", "0",
            ])  # fmt: skip
        return out

    return t, rows
