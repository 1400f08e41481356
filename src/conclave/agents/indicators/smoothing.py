"""Exponential smoothing cut to a trailing window: an exponential filter and Wilder's average.

A recursive filter's value depends on where it was seeded; these restart it at the start of
each bar's trailing window, so a window cut from a longer history gives the same bits. No
transcendental ufuncs (exp, log) are used: powers of the decay are Python floats.
"""

from __future__ import annotations

import numpy as np

from conclave.agents.indicators.windows import F64, _add, _f64, _pad, _reduce


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
    combined pairwise (``left * a**size + right``), then folded left to right.
    """
    w = len(v)
    res = 0.0
    start, size = 0, 1
    while size <= w:
        if w & size:
            seg = v[start : start + size]
            sz = 1
            while len(seg) > 1:
                f = a**sz
                seg = [seg[i] * f + seg[i + 1] for i in range(0, len(seg), 2)]
                sz *= 2
            res = seg[0] if start == 0 else res * (a**size) + seg[0]
            start += size
        size *= 2
    return res


def wilder_window(x: F64, period: int, n: int) -> F64:
    """Wilder's average of the last ``n`` values, seeded by the SMA of their first ``period``.

    Equals TA-Lib's recursion ``avg = (avg * (period - 1) + x) / period`` started on the
    window, i.e. ``a**r * mean(first period) + sum(a**k * x[t-k] for k < r) / period`` with
    ``a = (period - 1) / period`` and ``r = n - period``.
    """
    x = _f64(x)
    if n < period:
        raise ValueError(f"window {n} shorter than period {period}")
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
