"""Aggregate candles from a lower timeframe into a higher one, closed buckets only.

A higher-timeframe bar is the bars of the lower timeframe that open inside its bucket:
open of the first, highest high, lowest low, close of the last, and the sum of volume,
taker-buy volume and trades (bars without volume had no trades and set no price).
Buckets follow `Timeframe.floor` (epoch-aligned, weeks on Monday, calendar months), as
Binance aligns them. A bucket is emitted only once it is closed, so aggregation never
shows a partial bar; a bucket with missing lower bars inside (an exchange outage) is built
from the bars that exist, which is what Binance does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from conclave.errors import InvalidCandlesError, InvalidRequestError
from conclave.market.candles import Candles
from conclave.timeframes import Timeframe

I64 = npt.NDArray[np.int64]


def check_divides(source: Timeframe, target: Timeframe) -> None:
    """Raise `InvalidRequestError` unless bars of ``source`` tile every bar of ``target``."""
    if not source.divides(target):
        raise InvalidRequestError(
            f"cannot resample {source} candles to {target}: {source} bars do not tile {target}"
            " bars exactly",
            field="timeframe",
        )


def aggregate_columns(
    open_time: I64, columns: dict[str, npt.NDArray[Any]], target: Timeframe
) -> dict[str, npt.NDArray[Any]]:
    """Group sorted rows by ``target`` bucket and aggregate every column, closed or not.

    ``columns`` holds ``open``, ``high``, ``low``, ``close``, ``volume`` and optionally
    ``taker_buy_volume`` and ``trades``; the result adds ``open_time`` (bucket open, ms).
    Bars with zero volume had no trades, so their prices (the previous close, repeated)
    are left out of the bucket's open, high, low and close unless no bar in the bucket
    traded; Binance builds its higher-timeframe bars from trades the same way.
    """
    keys = target.floor_array(open_time)
    n = int(keys.shape[0])
    out: dict[str, npt.NDArray[Any]] = {}
    if n == 0:
        out["open_time"] = keys
        out.update({name: col[:0] for name, col in columns.items()})
        return out
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    out["open_time"] = keys[starts]
    traded = columns["volume"] > 0
    bucket = np.cumsum(np.r_[False, keys[1:] != keys[:-1]])
    use = traded | ~np.logical_or.reduceat(traded, starts)[bucket]
    rows = np.arange(n)
    first = np.minimum.reduceat(np.where(use, rows, n), starts)
    last = np.maximum.reduceat(np.where(use, rows, -1), starts)
    for name, col in columns.items():
        if name == "open":
            out[name] = col[first]
        elif name == "close":
            out[name] = col[last]
        elif name == "high":
            out[name] = np.maximum.reduceat(np.where(use, col, -np.inf), starts)
        elif name == "low":
            out[name] = np.minimum.reduceat(np.where(use, col, np.inf), starts)
        else:
            out[name] = np.add.reduceat(col, starts)
    return out


def resample(
    candles: Candles,
    target: Timeframe | str,
    *,
    as_of_ms: int | None = None,
    trim_leading: bool = False,
) -> Candles:
    """Aggregate ``candles`` into ``target`` bars, emitting only buckets closed by then.

    A bucket is closed when its close time (ms) is at or before both the close time of the
    last source bar and ``as_of_ms`` (when given), so a trailing partial bucket is never
    emitted. Source bars are assumed closed: pass ``as_of_ms`` when the last one may not be.
    The first bucket is emitted from the bars it has (a listing starts mid-bucket, as on
    Binance); ``trim_leading`` drops it instead when the source starts after it opened,
    which is right when the source is a window cut from a longer history. Raises
    `InvalidRequestError` when the source timeframe does not divide ``target`` and
    `InvalidCandlesError` when open times are not strictly increasing.
    """
    tf = Timeframe.parse(target)
    check_divides(candles.timeframe, tf)
    t = candles.open_time
    if len(t) > 1 and not bool(np.all(t[1:] > t[:-1])):
        raise InvalidCandlesError(
            f"{candles.symbol} {candles.timeframe}: open times must be strictly increasing"
            " to resample (sort and merge duplicates first)"
        )
    cols = {k: v for k, v in candles.columns().items() if k != "open_time"}
    agg = aggregate_columns(t, cols, tf)
    keep = np.ones(len(agg["open_time"]), dtype=bool)
    if len(t):
        closes = tf.close_time_array(agg["open_time"])
        keep &= closes <= candles.timeframe.close_time(int(t[-1]))
        if as_of_ms is not None:
            keep &= closes <= as_of_ms
        if trim_leading and agg["open_time"][0] < t[0]:
            keep[0] = False
    out = {k: v[keep] for k, v in agg.items()}
    return Candles.from_column_map(
        candles.symbol, tf, out, source=candles.source, simulated=candles.simulated
    )


def closed_index_at(higher: Candles, times_ms: Any) -> I64:
    """Index of the last ``higher`` bar closed at or before each instant, -1 where none.

    Pass a lower-timeframe series' ``close_time`` to align the two without lookahead: the
    higher bar at the returned index had closed when the lower bar closed.
    """
    t = np.asarray(times_ms, dtype=np.int64)
    idx: I64 = np.searchsorted(higher.close_time, t, side="right").astype(np.int64) - 1
    return idx


def closed_index_for(lower: Candles, higher: Candles) -> I64:
    """For every ``lower`` bar, the index of the last ``higher`` bar closed when it closed."""
    return closed_index_at(higher, lower.close_time)
