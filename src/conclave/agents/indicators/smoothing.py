"""Exponential smoothing cut to a trailing window: an exponential filter and Wilder's average.

A recursive filter's value depends on where it was seeded; these restart it at the start of
each bar's trailing window, so a window cut from a longer history gives the same bits. No
transcendental ufuncs (exp, log) are used: powers of the decay are Python floats.
"""

from __future__ import annotations

import numpy as np

from conclave.agents.indicators.windows import F64, _add, _f64, _pad, _reduce, _reduce_rows


def exp_window_sum(x: F64, a: float, w: int) -> F64:
    """``sum(a**k * x[t - k] for k < w)`` at every bar: an exponential filter cut at w taps.

    ``x`` may stack several series as rows (bars on the last axis).
    """
    x = _f64(x)

    def comb(left: F64, right: F64, size: int) -> F64:
        return left * (a**size) + right

    return _pad(_reduce(x, w, comb, a), x.shape[-1])


def exp_window_last(v: list[float], a: float) -> float:
    """``exp_window_sum(v, a, len(v))[-1]`` bit for bit, on plain floats (the last bar).

    The same tree as `_reduce`: blocks of the set bits of ``len(v)``, smallest first, each
    combined pairwise (``left * a**size + right``), then folded left to right; blocks up
    to 16 values written out.
    """
    w = len(v)
    res = 0.0
    start, size = 0, 1
    while size <= w:
        if w & size:
            b = _exp_block(v, start, size, a)
            res = b if start == 0 else res * (a**size) + b
            start += size
        size *= 2
    return res


def _exp_block(v: list[float], start: int, size: int, a: float) -> float:
    """``v[start : start + size]`` (``size`` a power of two) by `exp_window_last`'s tree:
    a block of ``2 s`` values is its first ``s`` times ``a**s`` plus its last ``s``."""
    if size == 1:
        return v[start]
    if size == 2:
        return v[start] * a + v[start + 1]
    f2 = a**2
    if size == 4:
        v0, v1, v2, v3 = v[start : start + 4]
        return (v0 * a + v1) * f2 + (v2 * a + v3)
    f4 = a**4
    if size == 8:
        v0, v1, v2, v3, v4, v5, v6, v7 = v[start : start + 8]
        return ((v0 * a + v1) * f2 + (v2 * a + v3)) * f4 + ((v4 * a + v5) * f2 + (v6 * a + v7))
    if size == 16:
        v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, va, vb, vc, vd, ve, vf = v[start : start + 16]
        lo = ((v0 * a + v1) * f2 + (v2 * a + v3)) * f4 + ((v4 * a + v5) * f2 + (v6 * a + v7))
        hi = ((v8 * a + v9) * f2 + (va * a + vb)) * f4 + ((vc * a + vd) * f2 + (ve * a + vf))
        return lo * (a**8) + hi
    half = size // 2
    return _exp_block(v, start, half, a) * (a**half) + _exp_block(v, start + half, half, a)


def wilder_window(x: F64, period: int, n: int) -> F64:
    """Wilder's average of the last ``n`` values, seeded by the SMA of their first ``period``.

    Equals TA-Lib's recursion ``avg = (avg * (period - 1) + x) / period`` started on the
    window, i.e. ``a**r * mean(first period) + sum(a**k * x[t-k] for k < r) / period`` with
    ``a = (period - 1) / period`` and ``r = n - period``.
    """
    x = _f64(x)
    if n < period:
        raise ValueError(f"window {n} shorter than period {period}")
    if x.size < 8192:  # short: only the windows that give a value (a few rows: bars as rows)
        if x.ndim == 1:
            return wilder_rows(x, period, n)
        if x.ndim == 2 and x.shape[0] > 1:
            return np.ascontiguousarray(wilder_rows(np.ascontiguousarray(x.T), period, n).T)
    size = x.shape[-1]
    r = n - period
    a = (period - 1) / period
    seed = _reduce(x, period, _add) / period  # seed[j] covers x[j : j + period]
    m = size - n + 1
    if m <= 0:
        return np.full(x.shape, np.nan)
    if r == 0:
        return _pad(seed[..., :m], size)

    def comb(left: F64, right: F64, sz: int) -> F64:
        return left * (a**sz) + right

    tail = _reduce(x, r, comb, a)  # tail[j] covers x[j : j + r]
    avg = seed[..., :m] * (a**r) + tail[..., period : period + m] / period
    return _pad(avg, size)


def wilder_rows(x: F64, period: int, n: int) -> F64:
    """`wilder_window` of ``x`` with the bars on the first axis (one series, or a few as
    columns): the same operations on the same values, each slice one contiguous block,
    and only the windows of the bars that get a value reduced."""
    size = x.shape[0]
    r = n - period
    a = (period - 1) / period
    m = size - n + 1
    out = np.full(x.shape, np.nan)
    if m <= 0:
        return out
    seed = _reduce_rows(x[: m + period - 1], period, _add, m) / period
    if r == 0:
        out[n - 1 :] = seed
        return out

    def comb(left: F64, right: F64, sz: int) -> F64:
        return left * (a**sz) + right

    tail = _reduce_rows(x[period : period + m + r - 1], r, comb, m)
    out[n - 1 :] = seed * (a**r) + tail / period
    return out
