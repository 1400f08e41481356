"""Builders shared by the agent tests: real candle files, inputs and synthetic price paths."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt

from conclave.agents import AgentInput
from conclave.market.candles import Candles
from conclave.market.sources.file_formats import read_candles
from conclave.market.sources.files import parse_file_name
from conclave.timeframes import HOUR_MS

F64 = npt.NDArray[np.float64]
T0 = 1_600_000_000_000 // HOUR_MS * HOUR_MS


@lru_cache(maxsize=64)
def load(path: Path) -> Candles:
    """A real candle file, labelled with the symbol and timeframe its name states."""
    meta = parse_file_name(path.name)
    assert meta is not None, path.name
    assert meta.timeframe is not None, path.name
    return read_candles(path, symbol=meta.symbol, timeframe=meta.timeframe)


def make_input(c: Candles, **extra: object) -> AgentInput:
    """An agent input for the whole of ``c`` (as of its last close)."""
    as_of = int(c.close_time[-1]) if len(c) else T0
    return AgentInput(c.symbol, c.timeframe.name, as_of, c, **extra)  # type: ignore[arg-type]


def candles_from_close(
    close: npt.ArrayLike,
    *,
    wick: float = 0.001,
    volume: npt.ArrayLike | None = None,
    symbol: str = "BTCUSDT",
    tf: str = "1h",
    t0: int = T0,
) -> Candles:
    """Bars whose open is the previous close, with small wicks around the body."""
    c = np.asarray(close, dtype=np.float64)
    o = np.r_[c[0], c[:-1]]
    h = np.maximum(o, c) * (1 + wick)
    lo = np.minimum(o, c) * (1 - wick)
    v = np.full(c.shape[0], 100.0) if volume is None else np.asarray(volume, dtype=np.float64)
    step = {"1h": HOUR_MS, "4h": 4 * HOUR_MS, "1d": 24 * HOUR_MS}[tf]
    t = t0 + step * np.arange(c.shape[0], dtype=np.int64)
    return Candles.from_arrays(symbol, tf, t, o, h, lo, c, v)


def path(points: list[tuple[int, float]]) -> F64:
    """A piecewise-linear close path through ``(bar, price)`` waypoints."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return np.interp(np.arange(xs[-1] + 1), xs, ys)


def random_candles(seed: int, n: int, *, flat_share: float = 0.0, zero_vol: float = 0.0) -> Candles:
    """A random OHLCV walk; a share of bars flat (O=H=L=C, volume 0) when asked."""
    rng = np.random.default_rng(seed)
    r = rng.normal(0, 0.01, n)
    c = 100.0 * np.exp(np.cumsum(r))
    o = np.r_[100.0, c[:-1]]
    h = np.maximum(o, c) * (1 + np.abs(rng.normal(0, 0.003, n)))
    lo = np.minimum(o, c) * (1 - np.abs(rng.normal(0, 0.003, n)))
    v = rng.lognormal(3, 1, n)
    flat = rng.random(n) < flat_share
    prev = np.r_[100.0, c[:-1]]
    o = np.where(flat, prev, o)
    c = np.where(flat, prev, c)
    c = np.where(flat, o, c)
    h = np.where(flat, o, h)
    lo = np.where(flat, o, lo)
    v = np.where(flat | (rng.random(n) < zero_vol), 0.0, v)
    t = T0 + HOUR_MS * np.arange(n, dtype=np.int64)
    tb = v * rng.uniform(0.3, 0.7, n)
    return Candles.from_arrays("BTCUSDT", "1h", t, o, h, lo, c, v, taker_buy_volume=tb)
