"""market-structure: trend from moving-average alignment, slope and swing structure.

Method (Murphy 1999, *Technical Analysis of the Financial Markets*, ch. 4 and 9; Dow theory
swings): three components, each in [-1, 1].

- alignment: the mean of sign(close - SMA fast), sign(SMA fast - SMA mid) and
  sign(SMA mid - SMA slow), each 0 within a dead band of ``band`` x price;
- slope: the change of SMA mid over ``slope_bars``, per bar, divided by the mean absolute
  close-to-close change over ``mid`` bars (drift over noise), times 3, clipped;
- swings: the latest two confirmed swing highs and lows (``swing_k`` bars each side) inside
  the last ``swing_window`` bars: +1/2 for a higher high, +1/2 for a higher low, -1/2 for a
  lower high, -1/2 for a lower low.

Score: 0.4 alignment + 0.3 slope + 0.3 swings. Confidence: `blend` (strength of the
components times their agreement). Payload: trend label (up, down, range, by score beyond
+/-0.25), the moving averages, the slope ratio and the last swings.
"""

from __future__ import annotations

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
    finish,
    finish1,
    fnum,
    point,
    sgn1,
    sign_band,
    sign_band1,
    swings_asof,
    within,
)
from conclave.market.candles import Candles


class MarketStructureParams(AgentParams):
    fast: int = Field(20, ge=2)
    mid: int = Field(50, ge=3)
    slow: int = Field(200, ge=4)
    slope_bars: int = Field(10, ge=1)
    swing_k: int = Field(3, ge=1)
    swing_window: int = Field(120, ge=10)
    band: float = Field(1e-4, ge=0.0)
    trend_threshold: float = Field(0.25, gt=0.0, lt=1.0)


def window_bars(p: MarketStructureParams) -> int:
    """Bars a value reads: the longest average, the mid average ``slope_bars`` back, the
    mean absolute change over ``mid`` changes, and the earliest swing in ``swing_window``
    (known from the ``swing_k`` bars before it)."""
    return max(p.fast, p.slow, p.mid + p.slope_bars, p.mid + 1, p.swing_window + p.swing_k)


class MarketStructure(Agent):
    """Trend from SMA alignment and slope plus higher highs/lows (see module docstring)."""

    name: ClassVar[str] = "market-structure"
    version: ClassVar[str] = "1.0.0"
    description: ClassVar[str] = "Trend from moving-average alignment, slope and swing structure"
    needs: ClassVar[Needs] = Needs(
        min_bars=window_bars(MarketStructureParams()),
        lookback=window_bars(MarketStructureParams()),
    )
    Params: ClassVar[type[AgentParams]] = MarketStructureParams
    params: MarketStructureParams

    def min_bars(self, timeframe: str) -> int:
        return window_bars(self.params)

    def compute(self, data: AgentInput) -> SeriesOutput:
        p = self.params
        cd = data.candles
        c = cd.close
        n = len(c)
        f, m, s = (ind.rolling_mean(c, w) for w in (p.fast, p.mid, p.slow))
        align = (
            sign_band(c - f, c, p.band) + sign_band(f - m, c, p.band) + sign_band(m - s, c, p.band)
        ) / 3.0
        mad = ind.rolling_mean(np.abs(ind.diff(c)), p.mid)
        dm = np.full(n, np.nan)
        dm[p.slope_bars :] = m[p.slope_bars :] - m[: -p.slope_bars]
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(mad > 0, dm / (p.slope_bars * np.where(mad > 0, mad, 1.0)), 0.0)
        ratio[np.isnan(dm) | np.isnan(mad)] = np.nan
        slope = 3.0 * ratio

        hi_idx, lo_idx = ind.swing_points(cd.high, cd.low, p.swing_k)
        hs = swings_asof(hi_idx, p.swing_k, n, 2)
        ls = swings_asof(lo_idx, p.swing_k, n, 2)
        ok_h = within(hs[1], n, p.swing_window)
        ok_l = within(ls[1], n, p.swing_window)
        hh = np.where(ok_h, np.sign(cd.high[hs[0]] - cd.high[hs[1]]), 0.0)
        hl = np.where(ok_l, np.sign(cd.low[ls[0]] - cd.low[ls[1]]), 0.0)
        swings = 0.5 * (hh + hl)

        score, conf = blend([align, slope, swings], [0.4, 0.3, 0.3])
        score, conf = finish(score, conf, self.min_bars(data.timeframe) - 1)

        last = n - 1
        highs = [int(i) for i in hs[::-1, last] if ok_h[last]]
        lows = [int(i) for i in ls[::-1, last] if ok_l[last]]
        evidence = self._evidence(
            cd, float(score[last]), (f[last], m[last], s[last]), align[last], ratio[last]
        )
        evidence.update(self._swings(cd, swings[last], highs, lows))
        return SeriesOutput(score, conf, evidence)

    def compute_last(self, data: AgentInput) -> SeriesOutput:
        # the same window sums (`indicators.window_sum`, `sum_at`) and arithmetic, last bar
        # only; the short windows from one list of the last closes
        p = self.params
        cd = data.candles
        c = cd.close
        n = len(c)
        t = n - 1
        span = min(n, max(p.fast, p.mid + p.slope_bars, p.mid + 1))
        cl = c[n - span :].tolist()
        ws = ind.window_sum
        f = ws(cl[span - p.fast :]) / p.fast
        m = ws(cl[span - p.mid :]) / p.mid
        s = ind.sum_at(c, p.slow, t) / p.slow
        ct = cl[-1]
        align = (
            sign_band1(ct - f, ct, p.band)
            + sign_band1(f - m, ct, p.band)
            + sign_band1(m - s, ct, p.band)
        ) / 3.0
        mad = ws(np.abs(c[n - p.mid :] - c[n - p.mid - 1 : t]).tolist()) / p.mid
        dm = m - ws(cl[span - p.mid - p.slope_bars : span - p.slope_bars]) / p.mid
        ratio = dm / (p.slope_bars * mad) if mad > 0 else 0.0
        # swings confirmed by t inside the window: those of the trailing bars suffice
        keep = min(n, p.swing_window + 2 * p.swing_k + 1)
        hi_idx, lo_idx = ind.swing_points(cd.high[n - keep :], cd.low[n - keep :], p.swing_k)
        off, lim = n - keep, t - p.swing_window
        hi = [i + off for i in hi_idx[-2:].tolist()]
        lo = [i + off for i in lo_idx[-2:].tolist()]
        highs = hi if len(hi) == 2 and hi[0] > lim else []
        lows = lo if len(lo) == 2 and lo[0] > lim else []
        hh = sgn1(float(cd.high[highs[1]]) - float(cd.high[highs[0]])) if highs else 0.0
        hl = sgn1(float(cd.low[lows[1]]) - float(cd.low[lows[0]])) if lows else 0.0
        swings = 0.5 * (hh + hl)
        score, conf = blend1([align, 3.0 * ratio, swings], [0.4, 0.3, 0.3])
        s_, c_ = finish1(score, conf)
        evidence = self._evidence(cd, float(s_[0]), (f, m, s), align, ratio)
        evidence.update(self._swings(cd, swings, highs, lows))
        return SeriesOutput(s_, c_, evidence)

    def _evidence(
        self, cd: Candles, sc: float, mas: tuple[float, float, float], align: float, ratio: float
    ) -> dict[str, Any]:
        p = self.params
        trend = "up" if sc >= p.trend_threshold else "down" if sc <= -p.trend_threshold else "range"
        return {
            "trend": trend,
            "ma": {
                f"sma{p.fast}": fnum(mas[0]),
                f"sma{p.mid}": fnum(mas[1]),
                f"sma{p.slow}": fnum(mas[2]),
            },
            "alignment": fnum(align),
            "slope_ratio": fnum(ratio),
        }

    def _swings(
        self, cd: Candles, structure: float, highs: list[int], lows: list[int]
    ) -> dict[str, Any]:
        return {
            "swing_structure": fnum(structure),
            "swing_highs": [point(cd, i, cd.high[i]) for i in highs],
            "swing_lows": [point(cd, i, cd.low[i]) for i in lows],
        }
