"""Swing highs and lows (pivots), each known only ``k`` bars after its extreme."""

from __future__ import annotations

import numpy as np

from conclave.agents.indicators.windows import F64, I64, _f64, _max, _min, _reduce


def swing_points(high: F64, low: F64, k: int) -> tuple[I64, I64]:
    """Indices of swing highs and lows, each CONFIRMED ``k`` bars later (never repaints).

    Bar i is a swing high when its high is above the ``k`` highs before it and not below
    the ``k`` after it (lows mirrored); it is known only at bar ``i + k``. Flat runs give
    none. Reference: Bill Williams' fractals (k = 2), generalised to k bars.
    """
    h, lo = _f64(high), _f64(low)
    n = h.shape[0]
    if n < 2 * k + 1:
        e = np.zeros(0, dtype=np.int64)
        return e, e.copy()
    hmax = _reduce(h, k, _max)  # hmax[j] = max h[j : j + k]
    lmin = _reduce(lo, k, _min)
    m = n - 2 * k  # candidates i = k .. n-k-1: slices of the arrays at i, i - k and i + 1
    hc, lc = h[k : n - k], lo[k : n - k]
    is_hi = (hc > hmax[:m]) & (hc >= hmax[k + 1 : k + 1 + m])
    is_lo = (lc < lmin[:m]) & (lc <= lmin[k + 1 : k + 1 + m])
    return np.flatnonzero(is_hi) + k, np.flatnonzero(is_lo) + k
