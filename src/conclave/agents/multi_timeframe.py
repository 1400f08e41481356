"""multi-timeframe: trend direction on the run's timeframe and two higher ones, aligned.

Method (Elder 1993, *Trading for a Living*: the triple-screen system): on each timeframe the
trend is ``(sign(close - SMA(n)) + sign(SMA(n) now - SMA(n) ``slope_bars`` bars ago)) / 2``
(-1, -1/2, 0, +1/2, +1; dead band ``band`` x price), with ``n = base_period`` on the run's
timeframe and ``higher_period`` on the higher ones. The higher timeframes are those of
`Needs.higher_timeframes` (1h: 4h and 1d). For every bar of the run, a higher timeframe is
read at its last bar CLOSED by that bar's close (`resample.closed_index_at`), never a
partial one. When the context carries no higher candles they are resampled from the run's
candles, dropping a partial first bucket. ``min_bars`` makes the run's window span every
higher bar the last bar reads, hence ``Needs.higher_in_lookback``: a caller may pass only the
higher bars within that span.

Score: weighted mean of the trends (run 0.25, first higher 0.35, second higher 0.40).
Confidence: ``100 * |mean of the trend signs|`` (all agree: 100), times the mean strength.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from conclave.agents import indicators as ind
from conclave.agents.base import Agent, bar_ms, close_ms
from conclave.agents.inputs import F64, I64, AgentInput, Needs
from conclave.agents.outputs import SeriesOutput
from conclave.agents.params import AgentParams
from conclave.agents.scoring import finish, finish1, fnum, iso_time, sgn1, sign_band, sign_band1
from conclave.errors import InsufficientDataError
from conclave.market.candles import Candles
from conclave.market.resample import resample
from conclave.timeframes import DAY_MS, Timeframe

_HIGHER = (4, 24)


class MultiTimeframeParams(AgentParams):
    base_period: int = Field(20, ge=2)
    higher_period: int = Field(10, ge=2)
    slope_bars: int = Field(3, ge=1)
    band: float = Field(1e-4, ge=0.0)
    weights: tuple[float, float, float] = (0.25, 0.35, 0.40)


def _closed_index(higher: Candles, times_ms: I64) -> I64:
    """`resample.closed_index_at` for ascending ``times_ms``, by counting the closes.

    The higher bar i has closed at every time from the first one at or after its close on,
    so the count of closed higher bars is a running sum over those first times.
    """
    n = times_ms.shape[0]
    first = np.searchsorted(times_ms, higher.close_time, side="left")
    closed = np.cumsum(np.bincount(first, minlength=n + 1)[:n], dtype=np.int64)
    return closed - 1


def _trend(close: F64, period: int, slope_bars: int, band: float) -> F64:
    sma = ind.rolling_mean(close, period)
    past = np.full(close.shape[0], np.nan)
    past[slope_bars:] = sma[:-slope_bars]
    out = 0.5 * (sign_band(close - sma, close, band) + sign_band(sma - past, close, band))
    out[np.isnan(past)] = np.nan
    return np.asarray(out, dtype=np.float64)


@lru_cache(maxsize=64)
def _most_days(months: int) -> int:
    """The most days ``months`` consecutive calendar months hold (Gregorian, 400 years)."""
    first = np.datetime64("2000-01", "M") + np.arange(400 * 12 + 1)
    days = np.diff(first.astype("datetime64[D]").astype(np.int64))
    total = np.convolve(days, np.ones(months, dtype=np.int64), mode="valid")
    return int(total.max())


def span_bars(base: Timeframe, higher: Timeframe, count: int) -> int:
    """The most bars of ``base`` that ``count`` consecutive bars of ``higher`` hold (base
    tiles higher; calendar months hold 28 to 31 days)."""
    if higher.is_monthly and not base.is_monthly:
        return _most_days(count * higher.count) * (DAY_MS // base.ms)
    if higher.is_monthly:
        return count * (higher.count // base.count)
    return count * (higher.ms // base.ms)


def window_bars(p: MultiTimeframeParams, timeframe: str, higher: tuple[str, ...]) -> int:
    """Bars a value reads on ``timeframe``: the run's trend, and for each of ``higher`` the
    bars of the ``higher_period + slope_bars`` closed higher bars its trend reads, the
    partial one after them (all but its last base bar) and none before (the window starts
    on a higher bar's first base bar: a partial first bucket is dropped)."""
    base = Timeframe.parse(timeframe)
    need = p.base_period + p.slope_bars
    closed = p.higher_period + p.slope_bars
    for name in higher:
        need = max(need, span_bars(base, Timeframe.parse(name), closed + 1) - 1)
    return need


_DEFAULT_BARS = window_bars(
    MultiTimeframeParams(), "1h", Needs(0, 0, _HIGHER).higher_timeframes("1h")
)


class MultiTimeframe(Agent):
    """Trend alignment across timeframes from closed bars only (see module docstring)."""

    name: ClassVar[str] = "multi-timeframe"
    version: ClassVar[str] = "1.0.0"
    description: ClassVar[str] = "Trend alignment on the run's timeframe and two higher ones"
    needs: ClassVar[Needs] = Needs(
        min_bars=_DEFAULT_BARS, lookback=_DEFAULT_BARS, higher=_HIGHER, higher_in_lookback=True
    )
    Params: ClassVar[type[AgentParams]] = MultiTimeframeParams
    params: MultiTimeframeParams

    def __init__(self, params: AgentParams | Mapping[str, Any] | None = None) -> None:
        super().__init__(params)
        self._need: dict[str, int] = {}  # min_bars per timeframe (the params are frozen)

    def min_bars(self, timeframe: str) -> int:
        got = self._need.get(timeframe)
        if got is None:
            got = self._need[timeframe] = self._min_bars(timeframe)
        return got

    def _min_bars(self, timeframe: str) -> int:
        return window_bars(self.params, timeframe, self.needs.higher_timeframes(timeframe))

    def _higher(self, data: AgentInput, name: str) -> Candles:
        given = data.higher.get(name)
        if given is not None:
            return given
        return resample(data.candles, name, trim_leading=True)

    def compute(self, data: AgentInput) -> SeriesOutput:
        p = self.params
        cd = data.candles
        n = len(cd)
        names = self.needs.higher_timeframes(data.timeframe)
        if len(names) < 2:
            raise InsufficientDataError(f"no two higher timeframes above {data.timeframe}")
        trends = [_trend(cd.close, p.base_period, p.slope_bars, p.band)]
        last_closed: dict[str, str] = {}
        for name in names[:2]:
            hc = self._higher(data, name)
            idx = _closed_index(hc, cd.close_time)
            ht = _trend(hc.close, p.higher_period, p.slope_bars, p.band)
            if len(hc) == 0 or idx[-1] < 0 or np.isnan(ht[idx[-1]]):
                raise InsufficientDataError(
                    f"{name}: {len(hc)} closed bars, need {p.higher_period + p.slope_bars}"
                )
            trends.append(np.where(idx >= 0, ht[np.maximum(idx, 0)], np.nan))
            last_closed[name] = iso_time(int(hc.open_time[idx[-1]]))
        stack = np.stack(trends)
        w = np.asarray(p.weights)[:, None]
        score = (w * stack).sum(axis=0) / float(sum(p.weights))
        agree = np.abs(np.sign(stack).mean(axis=0))
        conf = 100.0 * agree * np.abs(stack).mean(axis=0)
        score, conf = finish(score, conf, self.min_bars(data.timeframe) - 1)

        last = n - 1
        return SeriesOutput(
            score,
            conf,
            self._evidence(data, names, stack[:, last].tolist(), float(agree[last]), last_closed),
        )

    def compute_last(self, data: AgentInput) -> SeriesOutput:
        # the same window sums (`indicators.sum_at`) and arithmetic, last bar only
        p = self.params
        cd = data.candles
        names = self.needs.higher_timeframes(data.timeframe)
        if len(names) < 2:
            raise InsufficientDataError(f"no two higher timeframes above {data.timeframe}")
        trends = [_trend1(cd.close, len(cd) - 1, p.base_period, p.slope_bars, p.band)]
        t_close = close_ms(cd.timeframe, int(cd.open_time[-1]))
        last_closed: dict[str, str] = {}
        for name in names[:2]:
            hc = self._higher(data, name)
            # the last higher bar closed by t_close: its close time is its open time plus
            # one bar where bars have a fixed length
            step = bar_ms(hc.timeframe)
            if step:
                i = int(np.searchsorted(hc.open_time, t_close - step, side="right")) - 1
            else:
                i = int(np.searchsorted(hc.close_time, t_close, side="right")) - 1
            ht = _trend1(hc.close, i, p.higher_period, p.slope_bars, p.band) if i >= 0 else 0.0
            if len(hc) == 0 or i < 0 or ht != ht:
                raise InsufficientDataError(
                    f"{name}: {len(hc)} closed bars, need {p.higher_period + p.slope_bars}"
                )
            trends.append(ht)
            last_closed[name] = iso_time(int(hc.open_time[i]))
        w = p.weights
        score = (w[0] * trends[0] + w[1] * trends[1] + w[2] * trends[2]) / float(sum(w))
        agree = abs((sgn1(trends[0]) + sgn1(trends[1]) + sgn1(trends[2])) / 3)
        conf = 100.0 * agree * ((abs(trends[0]) + abs(trends[1]) + abs(trends[2])) / 3)
        s_, c_ = finish1(score, conf)
        return SeriesOutput(s_, c_, self._evidence(data, names, trends, agree, last_closed))

    def _evidence(
        self,
        data: AgentInput,
        names: tuple[str, ...],
        trends: list[float],
        agree: float,
        last_closed: dict[str, str],
    ) -> dict[str, Any]:
        per_tf = {data.timeframe: fnum(trends[0])}
        for j, name in enumerate(names[:2], start=1):
            per_tf[name] = fnum(trends[j])
        return {
            "trends": per_tf,
            "aligned": bool(agree == 1.0 and trends[0] != 0),
            "last_closed_open": last_closed,
        }


def _trend1(close: F64, i: int, period: int, slope_bars: int, band: float) -> float:
    """`_trend` at bar ``i`` alone (NaN before its windows are full)."""
    if i - slope_bars < period - 1:
        return math.nan
    sma = ind.sum_at(close, period, i) / period
    past = ind.sum_at(close, period, i - slope_bars) / period
    ci = float(close[i])
    return 0.5 * (sign_band1(ci - sma, ci, band) + sign_band1(sma - past, ci, band))
