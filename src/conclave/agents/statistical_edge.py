"""statistical-edge: z-score of the close against its rolling mean, gated by a unit-root test.

Score: ``z = (close - SMA(window)) / std(window)`` (population std); the score opposes it,
``score = -clip(z / z_full, -1, 1)`` (a close 2 standard deviations above the mean is a full
short signal by default).

Gate: betting on a return to the mean needs evidence that the price reverts at all. An
augmented Dickey-Fuller test (Dickey & Fuller 1979; Said & Dickey 1984) on LOG closes over
the last ``adf_window`` rows (default 580), with a constant and ``adf_lags`` lagged
differences (default 1), must reject a unit root at ``adf_size`` (default 5 %): the
t-statistic of ``gamma`` below MacKinnon's (2010) constant-only critical value for
``adf_window`` rows (-2.8665 for 580 rows at 5 %). On random walks the gate opens at about
that size; 580 rows is about the shortest window that opens it at least 80 % of the time on
Ornstein-Uhlenbeck series with half-lives of 5 to 20 bars (tests/agents/
test_mean_reversion_gate.py measures both). The lagged difference absorbs first-order
autocorrelation of returns (bid-ask bounce), which makes the plain Dickey-Fuller test reject
far more often than its size. ``indicators.adf`` computes it point in time; the first
usable bar is ``adf_window + adf_lags`` (``min_bars`` 582).

Confidence: ``100 * min(1, |z| / z_full)`` when the gate is open, else 0. Evidence: the
z-score, the ADF t-statistic and critical value, the log-price slope ``gamma`` of the ADF
regression and its half-life ``-ln 2 / ln(1 + gamma)`` bars (the discrete
Ornstein-Uhlenbeck model, Chan 2013, *Algorithmic Trading*, ch. 2). Flat prices give z 0
and no test: score 0, confidence 0 (B5).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, field_validator

from conclave.agents import indicators as ind
from conclave.agents.base import Agent
from conclave.agents.inputs import AgentInput, Needs
from conclave.agents.outputs import SeriesOutput
from conclave.agents.params import AgentParams
from conclave.agents.scoring import finish, finish1, fnum

ADF_WINDOW = 580  # regression rows: >= 80 % power at a 20-bar half-life (module docstring)
ADF_LAGS = 1  # absorbs first-order return autocorrelation (bid-ask bounce)


class StatisticalEdgeParams(AgentParams):
    """z-score window and scale; the ADF gate's window (rows), lagged differences and size."""

    window: int = Field(20, ge=3, description="bars of the mean and std the z-score uses")
    z_full: float = Field(2.0, gt=0.0, description="|z| that is a full signal")
    adf_window: int = Field(
        ADF_WINDOW,
        ge=20,
        description="gate: rows of the ADF regression on log closes (uses window + lags + 1 bars)",
    )
    adf_lags: int = Field(
        ADF_LAGS, ge=0, le=10, description="gate: lagged differences in the ADF regression"
    )
    adf_size: float = Field(
        0.05,
        description="gate: test size, 0.01, 0.05 or 0.1; open when the ADF t-statistic is "
        "below MacKinnon's (2010) constant-only critical value at this size (a random walk "
        "passes this often)",
    )

    @field_validator("adf_size")
    @classmethod
    def _tabulated(cls, v: float) -> float:
        if v not in ind.MACKINNON_2010_TAU_C:
            raise ValueError(f"adf_size must be one of {sorted(ind.MACKINNON_2010_TAU_C)}")
        return v


class StatisticalEdge(Agent):
    """Mean-reversion z-score, trusted only where an ADF test rejects a random walk."""

    name: ClassVar[str] = "statistical-edge"
    version: ClassVar[str] = "2.0.0"
    description: ClassVar[str] = (
        "Z-score against the rolling mean; an ADF unit-root test on log prices gates it"
    )
    needs: ClassVar[Needs] = Needs(
        min_bars=ADF_WINDOW + ADF_LAGS + 1, lookback=ADF_WINDOW + ADF_LAGS + 1
    )
    Params: ClassVar[type[AgentParams]] = StatisticalEdgeParams
    params: StatisticalEdgeParams

    def min_bars(self, timeframe: str) -> int:
        p = self.params
        return max(p.window, p.adf_window + p.adf_lags + 1)

    def critical(self) -> float:
        """The ADF critical value the gate uses (MacKinnon 2010, constant only)."""
        return ind.adf_critical(self.params.adf_window, self.params.adf_size)

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
        tstat, gamma = ind.adf(ind.log_prices(c), p.adf_window, p.adf_lags)
        gate = tstat < self.critical()  # NaN (no test) is closed
        strength = np.clip(np.abs(z) / p.z_full, 0.0, 1.0)
        score = -np.clip(z / p.z_full, -1.0, 1.0)
        conf = 100.0 * strength * gate
        score, conf = finish(score, conf, self.min_bars(data.timeframe) - 1)
        last = n - 1
        return SeriesOutput(
            score, conf, self._evidence(z[last], mean[last], std[last], tstat[last], gamma[last])
        )

    def compute_last(self, data: AgentInput) -> SeriesOutput:
        # the same sums (`indicators.sum_at`, `adf_last`) and arithmetic on the last windows
        p = self.params
        c = data.candles.close
        n, w = c.shape[0], p.window
        mean = ind.sum_at(c, w, n - 1) / w
        dev_w = c[n - w :] - mean
        var = ind.pairwise_floats((dev_w * dev_w).tolist()) / w  # as `rolling_std`'s sums
        std = math.sqrt(var)
        dev = float(c[n - 1]) - mean
        z = dev / std if std > 1e-9 * abs(mean) else 0.0
        need = p.adf_window + p.adf_lags + 1
        tstat, gamma = ind.adf_last(ind.log_prices(c[n - need :]), p.adf_window, p.adf_lags)
        strength = min(max(abs(z) / p.z_full, 0.0), 1.0)
        score = -min(max(z / p.z_full, -1.0), 1.0)
        gate = 1.0 if tstat < self.critical() else 0.0
        s_, c_ = finish1(score, 100.0 * strength * gate)
        return SeriesOutput(s_, c_, self._evidence(z, mean, std, tstat, gamma))

    def _evidence(
        self, z: float, mean: float, std: float, tstat: float, gamma: float
    ) -> dict[str, Any]:
        g = float(gamma)
        hl = -math.log(2.0) / math.log1p(g) if -1.0 < g < 0.0 else None
        crit = self.critical()
        return {
            "zscore": fnum(z),
            "mean": fnum(mean),
            "std": fnum(std),
            "adf_t": fnum(tstat),
            "adf_critical": crit,
            "log_slope": fnum(g),
            "half_life_bars": hl,
            "mean_reverting": bool(tstat < crit),
        }
