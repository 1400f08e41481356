"""statistical-edge: z-score of the close against its rolling mean, scaled by mean-reversion.

Method: ``z = (close - SMA(window)) / std(window)`` (population std); the score opposes it,
``score = -clip(z / z_full, -1, 1)`` (a close 2 standard deviations above the mean is a full
short signal by default). The evidence that the price mean-reverts at all comes from an
AR(1) fit ``dclose = c + b * close[t-1]`` over the last ``ar_window`` bars (the discrete
Ornstein-Uhlenbeck model; half-life ``-ln 2 / ln(1 + b)`` bars; Chan 2013, *Algorithmic
Trading*, ch. 2; Uhlenbeck & Ornstein 1930).

Confidence: ``100 * min(1, |z| / z_full) * reversion``, where ``reversion`` is 1 when the
half-life is at most ``fast_half_life`` bars, 0 when b >= 0 or the half-life exceeds
``slow_half_life``, linear in b between (b is compared directly: no logarithms per bar).
Flat prices give z 0 and no fit: score 0, confidence 0 (B5).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, model_validator

from conclave.agents import indicators as ind
from conclave.agents.base import Agent
from conclave.agents.inputs import AgentInput, Needs
from conclave.agents.outputs import SeriesOutput
from conclave.agents.params import AgentParams
from conclave.agents.scoring import finish, finish1, fnum


class StatisticalEdgeParams(AgentParams):
    window: int = Field(20, ge=3)
    ar_window: int = Field(100, ge=10)
    z_full: float = Field(2.0, gt=0.0)
    fast_half_life: float = Field(5.0, gt=0.0)
    slow_half_life: float = Field(100.0, gt=0.0)

    @model_validator(mode="after")
    def _ordered(self) -> StatisticalEdgeParams:
        if not self.fast_half_life < self.slow_half_life:
            raise ValueError("fast_half_life must be below slow_half_life")
        return self


def _beta_for(half_life: float) -> float:
    """The AR(1) slope whose half-life is ``half_life`` bars."""
    return float(2.0 ** (-1.0 / half_life)) - 1.0


class StatisticalEdge(Agent):
    """Mean-reversion z-score with AR(1) evidence (see module docstring)."""

    name: ClassVar[str] = "statistical-edge"
    version: ClassVar[str] = "1.0.0"
    description: ClassVar[str] = "Z-score against the rolling mean; AR(1) half-life scales it"
    needs: ClassVar[Needs] = Needs(min_bars=101, lookback=101)
    Params: ClassVar[type[AgentParams]] = StatisticalEdgeParams
    params: StatisticalEdgeParams

    def min_bars(self, timeframe: str) -> int:
        p = self.params
        return max(p.window, p.ar_window + 1)

    def compute(self, data: AgentInput) -> SeriesOutput:
        p = self.params
        c = data.candles.close
        n = c.shape[0]
        mean = ind.rolling_mean(c, p.window)
        std = ind.rolling_std(c, p.window)
        dev = c - mean
        # a deviation below 1e-9 of the price is rounding, not a signal
        live = std > 1e-9 * np.abs(mean)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.where(live, dev / np.where(live, std, 1.0), 0.0)
        z[np.isnan(std)] = np.nan
        beta = ind.ar1_beta(c, p.ar_window)
        b_fast, b_slow = _beta_for(p.fast_half_life), _beta_for(p.slow_half_life)
        reversion = np.clip((beta - b_slow) / (b_fast - b_slow), 0.0, 1.0)
        reversion = np.where(np.isnan(beta), 0.0, reversion)
        strength = np.clip(np.abs(z) / p.z_full, 0.0, 1.0)
        score = -np.clip(z / p.z_full, -1.0, 1.0)
        conf = 100.0 * strength * reversion
        score, conf = finish(score, conf, self.min_bars(data.timeframe) - 1)
        last = n - 1
        return SeriesOutput(score, conf, self._evidence(z[last], mean[last], std[last], beta[last]))

    def compute_last(self, data: AgentInput) -> SeriesOutput:
        # the same sums (`indicators.sum_at`) and arithmetic on the last bar's windows only
        p = self.params
        c = data.candles.close
        n, w, aw = c.shape[0], p.window, p.ar_window
        mean = ind.sum_at(c, w, n - 1) / w
        dev_w = c[n - w :] - mean
        var = ind.pairwise_floats((dev_w * dev_w).tolist()) / w  # as `rolling_std`'s sums
        std = math.sqrt(var)
        dev = float(c[n - 1]) - mean
        z = dev / std if std > 1e-9 * abs(mean) else 0.0
        prev = c[n - 1 - aw : n - 1]
        dy = c[n - aw :] - prev
        sx, sy, sxx, sxy = ind.sums_last(np.stack([prev, dy, prev * prev, prev * dy]), aw)
        den = aw * sxx - sx * sx
        num = aw * sxy - sx * sy
        beta = num / den if den > 1e-12 * abs(aw * sxx) else math.nan
        b_fast, b_slow = _beta_for(p.fast_half_life), _beta_for(p.slow_half_life)
        rev = 0.0 if beta != beta else min(max((beta - b_slow) / (b_fast - b_slow), 0.0), 1.0)
        strength = min(max(abs(z) / p.z_full, 0.0), 1.0)
        score = -min(max(z / p.z_full, -1.0), 1.0)
        s_, c_ = finish1(score, 100.0 * strength * rev)
        return SeriesOutput(s_, c_, self._evidence(z, mean, std, beta))

    def _evidence(self, z: float, mean: float, std: float, beta: float) -> dict[str, Any]:
        b = float(beta)
        hl = -math.log(2.0) / math.log1p(b) if -1.0 < b < 0.0 else None
        return {
            "zscore": fnum(z),
            "mean": fnum(mean),
            "std": fnum(std),
            "ar1_beta": fnum(b),
            "half_life_bars": hl,
            "mean_reverting": hl is not None and hl <= self.params.slow_half_life,
        }
