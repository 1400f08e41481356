"""order-flow: relative volume, OBV trend, price-volume confirmation and taker-buy share.

Method (Granville 1963, *Granville's New Key to Stock Market Profits*, for on-balance
volume; Wyckoff's effort-versus-result for price-volume confirmation):

- OBV trend: the change of OBV over ``window`` bars divided by the volume traded in them,
  i.e. ``sum(sign(dclose) * volume) / sum(volume)`` in [-1, 1] (equal to TA-Lib OBV's change
  over the window, normalised);
- relative volume: a bar's volume over the mean volume of the ``window`` bars before it;
- price-volume confirmation: over the last ``confirm_bars`` bars, the mean of
  ``sign(dclose) * clip(relative volume - 1, 0, 1)``: moves on above-average volume count;
- taker-buy share (where the source has it): taker-buy volume over volume in the window;
  the component is ``(2 * share - 1) * taker_gain``, clipped (shares cluster near 0.5).

Score: weighted mean of the components (0.5 OBV, 0.25 confirmation, 0.25 taker share;
renormalised without taker data). Confidence: `blend`, times the share of bars in the window
that traded at all (no volume: confidence 0, B5).
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import ClassVar

import numpy as np
from pydantic import Field

from conclave.agents import indicators as ind
from conclave.agents.base import Agent
from conclave.agents.inputs import F64, AgentInput, Needs
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
)


class OrderFlowParams(AgentParams):
    window: int = Field(20, ge=2)
    confirm_bars: int = Field(5, ge=1)
    taker_gain: float = Field(5.0, gt=0.0)


def _ratio(num: F64, den: F64) -> F64:
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    out[np.isnan(num) | np.isnan(den)] = np.nan
    return np.asarray(out, dtype=np.float64)


def window_bars(p: OrderFlowParams) -> int:
    """Bars a value reads: ``confirm_bars`` pushes, each needing ``window`` earlier volumes."""
    return p.window + p.confirm_bars


class OrderFlow(Agent):
    """Volume-based confirmation of price moves (see module docstring)."""

    name: ClassVar[str] = "order-flow"
    version: ClassVar[str] = "1.0.0"
    description: ClassVar[str] = (
        "Relative volume, OBV trend, price-volume confirmation, taker share"
    )
    needs: ClassVar[Needs] = Needs(
        min_bars=window_bars(OrderFlowParams()), lookback=window_bars(OrderFlowParams())
    )
    Params: ClassVar[type[AgentParams]] = OrderFlowParams
    params: OrderFlowParams

    def min_bars(self, timeframe: str) -> int:
        return window_bars(self.params)

    def compute(self, data: AgentInput) -> SeriesOutput:
        p = self.params
        cd = data.candles
        n = len(cd)
        v = cd.volume
        d = ind.diff(cd.close)
        signed = np.sign(d) * v
        vol_sum = ind.rolling_sum(v, p.window)
        obv_change = ind.rolling_sum(signed, p.window)
        obv = _ratio(obv_change, vol_sum)
        prev_mean = np.full(n, np.nan)
        prev_mean[1:] = vol_sum[:-1] / p.window
        rel = _ratio(v, prev_mean)
        rel[(prev_mean == 0) & ~np.isnan(prev_mean)] = np.nan
        push = np.sign(d) * np.clip(rel - 1.0, 0.0, 1.0)
        confirm = ind.rolling_mean(np.nan_to_num(push, nan=0.0), p.confirm_bars)
        confirm[np.isnan(rel)] = 0.0
        traded = ind.rolling_mean((v > 0).astype(np.float64), p.window)

        comps, weights = [obv, confirm], [0.5, 0.25]
        share = None
        if cd.taker_buy_volume is not None:
            share = _ratio(ind.rolling_sum(cd.taker_buy_volume, p.window), vol_sum)
            taker = np.where(vol_sum > 0, clip1((2.0 * share - 1.0) * p.taker_gain), 0.0)
            comps.append(taker)
            weights.append(0.25)
        score, conf = blend(comps, weights)
        conf = conf * np.nan_to_num(traded, nan=0.0)
        score, conf = finish(score, conf, self.min_bars(data.timeframe) - 1)

        last = n - 1
        evidence = {
            "relative_volume": fnum(rel[last]),
            "obv_trend": fnum(obv[last]),
            "obv_change": fnum(obv_change[last]),
            "price_volume_confirmation": fnum(confirm[last]),
            "taker_buy_share": None if share is None else fnum(share[last]),
            "traded_share": fnum(traded[last]),
        }
        return SeriesOutput(score, conf, evidence)

    def compute_last(self, data: AgentInput) -> SeriesOutput:
        # the same window sums (`indicators.window_sum`) and arithmetic, last bar only
        p = self.params
        cd = data.candles
        n, w, k = len(cd), p.window, p.confirm_bars
        v = cd.volume[n - w - k :].tolist()  # w + k volumes, the last at index w + k - 1
        c = cd.close[n - w - k :].tolist()
        # sign(dclose) per volume (`sgn1` written out); the first is never read (obv from
        # k, pushes from w)
        sg = [math.nan]
        for a, b in pairwise(c):
            x = b - a
            sg.append(1.0 if x > 0 else -1.0 if x < 0 else x if x != x else 0.0)
        ws = ind.window_sum
        vol_sum = ws(v[k:])
        obv_change = ws([sg[i] * v[i] for i in range(k, w + k)])
        obv = _ratio1(obv_change, vol_sum)
        push: list[float] = []
        rel = math.nan
        for t in range(w, w + k):  # the last k bars
            prev_mean = ws(v[t - w : t]) / w
            rel = _ratio1(v[t], prev_mean) if prev_mean != 0 else math.nan
            pu = sg[t] * min(max(rel - 1.0, 0.0), 1.0)
            push.append(0.0 if pu != pu else pu)
        confirm = 0.0 if rel != rel else ws(push) / k
        traded = ws([1.0 if x > 0 else 0.0 for x in v[k:]]) / w
        comps, weights = [obv, confirm], [0.5, 0.25]
        share = None
        if cd.taker_buy_volume is not None:
            share = _ratio1(ws(cd.taker_buy_volume[n - w :].tolist()), vol_sum)
            comps.append(clip1f((2.0 * share - 1.0) * p.taker_gain) if vol_sum > 0 else 0.0)
            weights.append(0.25)
        score, conf = blend1(comps, weights)
        s_, c_ = finish1(score, conf * (0.0 if traded != traded else traded))
        evidence = {
            "relative_volume": fnum(rel),
            "obv_trend": fnum(obv),
            "obv_change": fnum(obv_change),
            "price_volume_confirmation": fnum(confirm),
            "taker_buy_share": None if share is None else fnum(share),
            "traded_share": fnum(traded),
        }
        return SeriesOutput(s_, c_, evidence)


def _ratio1(num: float, den: float) -> float:
    """`_ratio` of one pair."""
    return num / den if den > 0 else math.nan if num != num or den != den else 0.0
