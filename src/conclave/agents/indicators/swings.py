"""Swing highs and lows (pivots), each known only ``k`` bars after its extreme."""

from __future__ import annotations

import numpy as np

from conclave.agents.indicators.windows import F64, I64, _f64, _max, _reduce_rows


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
    # the lows as negated highs (a low below its neighbours is a negated low above them:
    # negation is exact, so the comparisons are the same), both sides in one pass, with
    # the bars as rows so that every slice is one contiguous block
    x = np.empty((n, 2), dtype=np.float64)
    x[:, 0] = h
    np.negative(lo, out=x[:, 1])
    xmax = _reduce_rows(x, k, _max, n - k + 1)  # xmax[j] = max x[j : j + k]
    m = n - 2 * k  # candidates i = k .. n-k-1: slices of the arrays at i, i - k and i + 1
    xc = x[k : n - k]
    at, side = np.nonzero((xc > xmax[:m]) & (xc >= xmax[k + 1 : k + 1 + m]))
    at += k
    return at[side == 0], at[side == 1]  # each ascending (row-major order)
