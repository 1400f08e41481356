"""momentum: Wilder RSI zones and slope, and regular RSI divergences at price swings.

Method (Wilder 1978, *New Concepts in Technical Trading Systems*; divergences as in
Murphy 1999 ch. 10): RSI(``period``) is TA-Lib's Wilder RSI over the trailing ``rsi_window``
closes (`indicators.rsi`). Three components, each in [-1, 1]:

- zone: ``(RSI - 50) / 20`` clipped; inside the overbought (> ``overbought``) or oversold
  (< ``oversold``) zone the reading fades linearly to 0 at 100 or 0 (exhaustion);
- slope: the RSI change over ``slope_bars`` divided by 10, clipped;
- divergence: at the latest two confirmed swing highs (``swing_k`` bars each side, both in
  the last ``divergence_window`` bars), a higher price high with a lower RSI is bearish (-1);
  at the latest two swing lows, a lower price low with a higher RSI is bullish (+1).

Score: 0.4 zone + 0.2 slope + 0.4 divergence. Confidence: `blend`. Flat prices give RSI 50,
zone and slope 0 (B5).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from conclave.agents import indicators as ind
from conclave.agents.base import Agent
from conclave.agents.inputs import AgentInput, Needs
from conclave.agents.outputs import SeriesOutput
from conclave.agents.params import AgentParams
from conclave.agents.scoring import (
    blend,
    blend1,
    clip1,
    clip1f,
    finish,
    finish1,
    fnum,
    point,
    swings_asof,
    within,
)
from conclave.market.candles import Candles


class MomentumParams(AgentParams):
    period: int = Field(14, ge=2)
    rsi_window: int = Field(250, ge=20)
    slope_bars: int = Field(5, ge=1)
    overbought: float = Field(70.0, gt=50.0, lt=100.0)
    oversold: float = Field(30.0, gt=0.0, lt=50.0)
    swing_k: int = Field(3, ge=1)
    divergence_window: int = Field(60, ge=10)


def window_bars(p: MomentumParams) -> int:
    """Bars a value reads: the RSI window behind the slope's older end and behind the
    earliest swing a divergence may use (``divergence_window - 1`` bars back, itself known
    from the ``swing_k`` bars before it)."""
    r = p.rsi_window
    return max(r + p.slope_bars, r + p.divergence_window - 1, p.divergence_window + p.swing_k)


class Momentum(Agent):
    """RSI zones, slope and divergences (see module docstring)."""

    name: ClassVar[str] = "momentum"
    version: ClassVar[str] = "1.0.0"
    description: ClassVar[str] = "Wilder RSI(14) zones, slope and regular divergences"
    needs: ClassVar[Needs] = Needs(
        min_bars=window_bars(MomentumParams()), lookback=window_bars(MomentumParams())
    )
    Params: ClassVar[type[AgentParams]] = MomentumParams
    params: MomentumParams

    def min_bars(self, timeframe: str) -> int:
        return window_bars(self.params)

    def compute(self, data: AgentInput) -> SeriesOutput:
        p = self.params
        cd = data.candles
        n = len(cd)
        r = ind.rsi(cd.close, p.period, p.rsi_window)
        zone = clip1((r - 50.0) / 20.0)
        hot = r > p.overbought
        cold = r < p.oversold
        zone = np.where(hot, (100.0 - r) / (100.0 - p.overbought), zone)
        zone = np.where(cold, -r / p.oversold, zone)
        slope = np.full(n, np.nan)
        slope[p.slope_bars :] = (r[p.slope_bars :] - r[: -p.slope_bars]) / 10.0

        hi_idx, lo_idx = ind.swing_points(cd.high, cd.low, p.swing_k)
        hs = swings_asof(hi_idx, p.swing_k, n, 2)
        ls = swings_asof(lo_idx, p.swing_k, n, 2)
        ok_h = within(hs[1], n, p.divergence_window)
        ok_l = within(ls[1], n, p.divergence_window)
        bear = ok_h & (cd.high[hs[0]] > cd.high[hs[1]]) & (r[hs[0]] < r[hs[1]])
        bull = ok_l & (cd.low[ls[0]] < cd.low[ls[1]]) & (r[ls[0]] > r[ls[1]])
        div = bull.astype(np.float64) - bear.astype(np.float64)

        score, conf = blend([zone, slope, div], [0.4, 0.2, 0.4])
        score, conf = finish(score, conf, self.min_bars(data.timeframe) - 1)

        last = n - 1
        h_pair = (int(hs[1, last]), int(hs[0, last])) if bear[last] else None
        l_pair = (int(ls[1, last]), int(ls[0, last])) if bull[last] else None
        evidence = self._evidence(cd, lambda i: float(r[i]), float(slope[last]), h_pair, l_pair)
        return SeriesOutput(score, conf, evidence)

    def compute_last(self, data: AgentInput) -> SeriesOutput:
        # the same RSI series; zone, slope, divergences and blend of the last bar only
        p = self.params
        cd = data.candles
        n = len(cd)
        t = n - 1
        avg = ind.rsi_averages(cd.close, p.period, p.rsi_window)
        ag, al = avg[0], avg[1]

        def r(i: int) -> float:  # the RSI of a bar read, on plain floats
            return ind.rsi1(float(ag[i]), float(al[i]))

        rl = r(t)
        zone = clip1f((rl - 50.0) / 20.0)
        if rl > p.overbought:
            zone = (100.0 - rl) / (100.0 - p.overbought)
        if rl < p.oversold:
            zone = -rl / p.oversold
        slope = (rl - r(t - p.slope_bars)) / 10.0
        # swings confirmed by t inside the window: those of the trailing bars suffice
        k = p.swing_k
        keep = min(n, p.divergence_window + 2 * k + 1)
        hi_idx, lo_idx = ind.swing_points(cd.high[n - keep :], cd.low[n - keep :], k)
        off, lim = n - keep, t - p.divergence_window
        hi = [i + off for i in hi_idx[-2:].tolist()]
        lo = [i + off for i in lo_idx[-2:].tolist()]
        h_pair = l_pair = None
        if len(hi) == 2 and hi[0] > lim and cd.high[hi[1]] > cd.high[hi[0]] and r(hi[1]) < r(hi[0]):
            h_pair = (hi[0], hi[1])
        if len(lo) == 2 and lo[0] > lim and cd.low[lo[1]] < cd.low[lo[0]] and r(lo[1]) > r(lo[0]):
            l_pair = (lo[0], lo[1])
        div = (1.0 if l_pair else 0.0) - (1.0 if h_pair else 0.0)
        score, conf = blend1([zone, slope, div], [0.4, 0.2, 0.4])
        s_, c_ = finish1(score, conf)
        return SeriesOutput(s_, c_, self._evidence(cd, r, slope, h_pair, l_pair))

    def _evidence(
        self,
        cd: Candles,
        r: Callable[[int], float],
        slope: float,
        h_pair: tuple[int, int] | None,
        l_pair: tuple[int, int] | None,
    ) -> dict[str, Any]:
        p = self.params
        divergences = []
        if h_pair is not None:
            i1, i0 = h_pair
            divergences.append(
                {
                    "kind": "bearish",
                    "price": [point(cd, i1, cd.high[i1]), point(cd, i0, cd.high[i0])],
                    "rsi": [fnum(r(i1)), fnum(r(i0))],
                }
            )
        if l_pair is not None:
            i1, i0 = l_pair
            divergences.append(
                {
                    "kind": "bullish",
                    "price": [point(cd, i1, cd.low[i1]), point(cd, i0, cd.low[i0])],
                    "rsi": [fnum(r(i1)), fnum(r(i0))],
                }
            )
        rl = r(len(cd) - 1)
        return {
            "rsi": fnum(rl),
            "zone": "overbought"
            if rl > p.overbought
            else "oversold"
            if rl < p.oversold
            else "neutral",
            "rsi_slope": fnum(slope * 10.0),
            "divergences": divergences,
        }
