"""Mean reversion: the AR(1) slope of a series over a trailing window and its half-life."""

from __future__ import annotations

import numpy as np

from conclave.agents.indicators.rolling import diff, rolling_sum
from conclave.agents.indicators.windows import F64, _f64


def ar1_beta(y: F64, w: int) -> F64:
    """Least-squares slope b of ``dy[t] = c + b * y[t-1]`` over the last ``w`` pairs.

    b < 0 means the series reverts to its mean; the half-life is ``-ln 2 / ln(1 + b)``
    bars (an Ornstein-Uhlenbeck fit, Uhlenbeck & Ornstein 1930; Chan 2013). NaN where the
    regressor has no variance.
    """
    y = _f64(y)
    prev = np.empty_like(y)
    prev[:1] = np.nan
    prev[1:] = y[:-1]
    dy = diff(y)
    sx, sy = rolling_sum(prev, w), rolling_sum(dy, w)
    sxx, sxy = rolling_sum(prev * prev, w), rolling_sum(prev * dy, w)
    den = w * sxx - sx * sx
    num = w * sxy - sx * sy
    ok = den > 1e-12 * np.abs(w * sxx)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, num / np.where(ok, den, 1.0), np.nan)


def half_life(beta: F64) -> F64:
    """AR(1) half-life in bars for each slope (inf when the series does not revert)."""
    b = np.asarray(beta, dtype=np.float64)
    out = np.full(b.shape, np.inf)
    ok = (b < 0) & (b > -1)
    out[ok] = -np.log(2.0) / np.log1p(b[ok])
    return out
