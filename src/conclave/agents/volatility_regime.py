"""volatility-regime: ATR as a percentage of price, ranked against its own recent history.

Method (Wilder 1978 for the average true range; volatility-regime sizing as in Carver 2015,
*Systematic Trading*): ATR(``period``) over the trailing ``atr_window`` bars (TA-Lib's ATR
on that window), as a percentage of the close; its mid-rank percentile among the last
``rank_window`` values classifies the regime: low (< ``low``), normal, high (>= ``high``),
extreme (>= ``extreme``). Each regime carries a position-size multiplier for the decision.

Score: always 0 (volatility is not directional). Confidence: how clearly the percentile sits
inside its band, ``50 + 50 * distance to the nearest band edge / half the band width``,
and 0 where the bars have no range at all (flat data, B5).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field, model_validator

from conclave.agents import indicators as ind
from conclave.agents.base import Agent
from conclave.agents.inputs import AgentInput, Needs
from conclave.agents.outputs import SeriesOutput
from conclave.agents.params import AgentParams
from conclave.agents.scoring import finish, finish1, fnum

REGIMES = ("low", "normal", "high", "extreme")


class VolatilityRegimeParams(AgentParams):
    period: int = Field(14, ge=2)
    atr_window: int = Field(100, ge=20)
    rank_window: int = Field(300, ge=20)
    low: float = Field(0.25, gt=0.0, lt=1.0)
    high: float = Field(0.75, gt=0.0, lt=1.0)
    extreme: float = Field(0.95, gt=0.0, le=1.0)
    multipliers: tuple[float, float, float, float] = (1.0, 1.0, 0.6, 0.25)

    @model_validator(mode="after")
    def _ordered(self) -> VolatilityRegimeParams:
        if not self.low < self.high < self.extreme:
            raise ValueError("thresholds must satisfy low < high < extreme")
        return self


def window_bars(p: VolatilityRegimeParams) -> int:
    """Bars a value reads: ``rank_window`` ATRs, each over ``atr_window`` bars."""
    return p.atr_window + p.rank_window - 1


class VolatilityRegime(Agent):
    """ATR% percentile regime and a sizing multiplier (see module docstring)."""

    name: ClassVar[str] = "volatility-regime"
    version: ClassVar[str] = "1.0.0"
    description: ClassVar[str] = "ATR% percentile regime (low/normal/high/extreme); not directional"
    needs: ClassVar[Needs] = Needs(
        min_bars=window_bars(VolatilityRegimeParams()),
        lookback=window_bars(VolatilityRegimeParams()),
    )
    Params: ClassVar[type[AgentParams]] = VolatilityRegimeParams
    params: VolatilityRegimeParams

    def min_bars(self, timeframe: str) -> int:
        return window_bars(self.params)

    def compute(self, data: AgentInput) -> SeriesOutput:
        return self._calc(data, len(data.candles))

    def compute_last(self, data: AgentInput) -> SeriesOutput:
        # the percentile rank (the costly part) of the last bar only: same comparisons; the
        # band and confidence of that bar on plain floats, as `_calc`'s elementwise steps
        p = self.params
        cd = data.candles
        n = len(cd)
        a = ind.atr(cd.high, cd.low, cd.close, p.period, p.atr_window)
        atr_pct = 100.0 * a / cd.close
        pct = ind.percent_rank_last(atr_pct, p.rank_window)
        al, apl = float(a[n - 1]), float(atr_pct[n - 1])
        edges = (0.0, p.low, p.high, p.extreme, 1.0)
        v = 0.0 if pct != pct else pct  # np.nan_to_num (pct is never infinite)
        # np.searchsorted(edges, v, side="right") - 1 clipped to 0..3: edges at or below v
        band = min(max(sum(1 for e in edges if e <= v) - 1, 0), 3)
        flat = not al > 0
        if pct != pct:
            conf = float("nan")  # as `conf[np.isnan(pct)] = np.nan`: zeroed by `finish`
        elif flat:
            conf = 0.0
        else:
            lo_e, hi_e = edges[band], edges[band + 1]
            half = (hi_e - lo_e) / 2.0
            inner = min(pct - lo_e, hi_e - pct) / (half if half > 0 else 1.0)
            conf = 50.0 + 50.0 * min(max(inner, 0.0), 1.0)
            if band == 0 and pct < p.low:
                conf = 50.0 + 50.0 * (p.low - pct) / p.low
            if band == 3:
                conf = 50.0 + 50.0 * (pct - p.extreme) / (1.0 - p.extreme + 1e-12)
        score, conf_ = finish1(0.0, conf)
        mult = 1.0 if flat else float(p.multipliers[band])
        evidence = {
            "regime": "unknown" if flat else REGIMES[band],
            "atr": fnum(al),
            "atr_pct": fnum(apl),
            "percentile": fnum(100.0 * pct),
            "size_multiplier": mult,
        }
        return SeriesOutput(score, conf_, evidence, columns={"size_multiplier": np.array([mult])})

    def _calc(self, data: AgentInput, tail: int) -> SeriesOutput:
        """Score and confidence of the last ``tail`` bars; evidence of the last."""
        p = self.params
        cd = data.candles
        n = len(cd)
        a = ind.atr(cd.high, cd.low, cd.close, p.period, p.atr_window)
        atr_pct = 100.0 * a / cd.close
        keep = min(n, tail + p.rank_window - 1)
        if tail == 1:
            pct = np.array([ind.percent_rank_last(atr_pct, p.rank_window)])
        else:
            pct = ind.percent_rank(atr_pct[n - keep :], p.rank_window)[keep - tail :]
        a, atr_pct = a[n - tail :], atr_pct[n - tail :]
        edges = np.array([0.0, p.low, p.high, p.extreme, 1.0])
        # the band: edges[band] <= pct < edges[band + 1] (NaN as 0), from 0 to 3
        v = np.nan_to_num(pct)
        if tail < 64:
            band = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, 3)
        else:  # the same count of edges at or below v, by comparisons
            band = (v >= edges[0]).astype(np.intp)
            for e in edges[1:].tolist():
                band += v >= e
            band -= 1
            np.clip(band, 0, 3, out=band)
        lo_e, hi_e = edges[band], edges[band + 1]
        half = (hi_e - lo_e) / 2.0
        inner = np.minimum(pct - lo_e, hi_e - pct) / np.where(half > 0, half, 1.0)
        conf = 50.0 + 50.0 * np.clip(inner, 0.0, 1.0)
        # the outer bands' outer edge (0 or 1) is not a boundary to another regime
        conf = np.where((band == 0) & (pct < p.low), 50.0 + 50.0 * (p.low - pct) / p.low, conf)
        conf = np.where(
            band == 3, 50.0 + 50.0 * (pct - p.extreme) / (1.0 - p.extreme + 1e-12), conf
        )
        conf = np.where(a > 0, conf, 0.0)
        conf[np.isnan(pct)] = np.nan
        first = self.min_bars(data.timeframe) - 1 - (n - tail)
        score, conf = finish(np.zeros(tail), conf, max(first, 0))

        # per bar, as the evidence gives it for the last: flat bars size at 1.0
        mult = np.where(a > 0, np.asarray(p.multipliers)[band], 1.0)
        b = int(band[-1])
        flat = not bool(a[-1] > 0)
        evidence = {
            "regime": "unknown" if flat else REGIMES[b],
            "atr": fnum(a[-1]),
            "atr_pct": fnum(atr_pct[-1]),
            "percentile": fnum(100.0 * pct[-1]),
            "size_multiplier": 1.0 if flat else float(p.multipliers[b]),
        }
        return SeriesOutput(score, conf, evidence, columns={"size_multiplier": mult})
