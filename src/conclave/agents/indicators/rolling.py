"""Rolling statistics over the last ``w`` bars: sum, mean, extremes, deviation, rank.

Each returns a full-length float64 array, NaN where its trailing window is not yet complete,
and is built on the window reductions of `conclave.agents.indicators.windows`, so the value
at bar t depends on that window alone, bit for bit. `range_max`/`range_min` answer max/min
over arbitrary inclusive spans.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from conclave.agents.indicators.windows import (
    F64,
    I64,
    _add,
    _f64,
    _max,
    _min,
    _pad,
    _reduce,
    pairwise_rows,
)


def diff(x: F64) -> F64:
    """``x[t] - x[t - 1]``, NaN at the first bar."""
    x = _f64(x)
    out = np.empty_like(x)
    out[:1] = np.nan
    np.subtract(x[1:], x[:-1], out=out[1:])
    return out


def rolling_sum(x: F64, w: int) -> F64:
    """Sum of the last ``w`` values at every bar (NaN before the window is full)."""
    x = _f64(x)
    return _pad(_reduce(x, w, _add), x.shape[0])


def rolling_mean(x: F64, w: int) -> F64:
    """Simple moving average of the last ``w`` values."""
    return rolling_sum(x, w) / w


def rolling_max(x: F64, w: int) -> F64:
    """Highest of the last ``w`` values."""
    x = _f64(x)
    return _pad(_reduce(x, w, _max), x.shape[0])


def rolling_min(x: F64, w: int) -> F64:
    """Lowest of the last ``w`` values."""
    x = _f64(x)
    return _pad(_reduce(x, w, _min), x.shape[0])


def rolling_std(x: F64, w: int) -> F64:
    """Population standard deviation of the last ``w`` values (two-pass, centred).

    The squared deviations of a window are summed by `pairwise_rows` (numpy's order for
    one contiguous row, as ``np.add.reduce`` over the window's row gives), one lag at a time
    across all windows: the same operations for every window, wherever the array starts.
    """
    x = _f64(x)
    n = x.shape[0]
    if n < w:
        return np.full(n, np.nan)
    m = n - w + 1
    mean = _reduce(x, w, _add) / w

    def sq(i: int) -> F64:  # the i-th squared deviation of every window
        dev = x[i : i + m] - mean
        return np.multiply(dev, dev, out=dev)

    var = pairwise_rows(sq, w)
    var /= w
    return _pad(np.sqrt(var, out=var), n)


def percent_rank(x: F64, w: int) -> F64:
    """Mid-rank of ``x[t]`` among the last ``w`` values, in [0, 1] (ties count half).

    ``(#{x[j] < x[t]} + 0.5 * #{x[j] == x[t]}) / w`` over the window, NaN where the window
    holds a NaN (where its `rolling_sum` is NaN). The counts are exact integers (the same
    comparisons as `percent_rank_ref`, one lag at a time over the whole array).
    """
    x = _f64(x)
    n = x.shape[0]
    if n < w:
        return np.full(n, np.nan)
    less = _count_lagged(x, w, np.less)
    srt = np.sort(x)
    if np.any(srt[1:] == srt[:-1]):  # some value occurs twice: count the equal ones
        equal = _count_lagged(x, w, np.equal)
        equal += 1  # x[t] itself (a NaN x[t] is masked below: its window sum is NaN)
    else:  # no two equal values anywhere: x[t] alone equals x[t]
        equal = np.ones(less.shape[0], dtype=np.int64)
    out = (less + 0.5 * equal) / w
    bad = np.isnan(rolling_sum(x, w))[w - 1 :]
    out[bad] = np.nan
    return _pad(out, n)


def _count_lagged(x: F64, w: int, op: np.ufunc) -> npt.NDArray[np.int64]:
    """``#{0 < d < w : op(x[t - d], x[t])}`` for every t in w-1..n-1 (exact counts)."""
    n = x.shape[0]
    m = n - w + 1
    cur = x[w - 1 :]
    total = np.zeros(m, dtype=np.int64)
    acc = np.zeros(m, dtype=np.uint8)  # flushed before it can wrap (at most 255 lags)
    hit = np.empty(m, dtype=np.bool_)
    bits = hit.view(np.uint8)
    for d in range(1, w):
        op(x[w - 1 - d : n - d], cur, out=hit)
        np.add(acc, bits, out=acc)
        if d % 255 == 0:
            total += acc
            acc.fill(0)
    total += acc
    return total


def percent_rank_ref(x: F64, w: int) -> F64:
    """`percent_rank` by brute force over a sliding-window view (the reference for tests)."""
    x = _f64(x)
    n = x.shape[0]
    if n < w:
        return np.full(n, np.nan)
    win = np.lib.stride_tricks.sliding_window_view(x, w)
    cur = x[w - 1 :, None]
    less = np.count_nonzero(win < cur, axis=1)
    equal = np.count_nonzero(win == cur, axis=1)
    out = (less + 0.5 * equal) / w
    bad = np.isnan(rolling_sum(x, w))[w - 1 :]
    return _pad(np.where(bad, np.nan, out), n)


def percent_rank_last(x: F64, w: int) -> float:
    """``percent_rank(x, w)[-1]`` bit for bit, from the last window alone."""
    win = _f64(x)[x.shape[0] - w :]
    cur = win[-1]
    # as `percent_rank`: NaN where the window's sum is NaN. Values that are all finite and
    # too small to overflow (max |x| is NaN when one is NaN) sum to a finite number in any
    # order; only otherwise is the sum's own tree needed
    if not float(np.max(np.abs(win))) * w < 1e300 and np.isnan(float(_reduce(win, w, _add)[0])):
        return float("nan")
    return (np.count_nonzero(win < cur) + 0.5 * np.count_nonzero(win == cur)) / w


def range_max(x: F64, lo: I64, hi: I64) -> F64:
    """``max(x[lo[i] : hi[i] + 1])`` for every i (inclusive bounds, lo <= hi)."""
    return _range_query(x, lo, hi, np.maximum)


def range_min(x: F64, lo: I64, hi: I64) -> F64:
    """``min(x[lo[i] : hi[i] + 1])`` for every i (inclusive bounds, lo <= hi)."""
    return _range_query(x, lo, hi, np.minimum)


def _range_query(x: F64, lo: I64, hi: I64, op: np.ufunc) -> F64:
    x = _f64(x)
    lo = np.asarray(lo, dtype=np.int64)
    hi = np.asarray(hi, dtype=np.int64)
    if lo.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    length = hi - lo + 1
    level = np.floor(np.log2(np.maximum(length, 1))).astype(np.int64)
    tables = [x]
    size = 1
    while size * 2 <= int(length.max()):
        prev = tables[-1]
        tables.append(op(prev[:-size], prev[size:]))
        size *= 2
    out = np.empty(lo.shape[0], dtype=np.float64)
    for lv in np.unique(level):
        sel = level == lv
        t = tables[int(lv)]
        span = 1 << int(lv)
        out[sel] = op(t[lo[sel]], t[hi[sel] - span + 1])
    return out
