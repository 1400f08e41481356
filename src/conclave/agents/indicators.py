"""Indicators: thin typed TA-Lib wrappers and our own bounded-window helpers.

Every helper here returns a full-length float64 array, NaN where its trailing window is not
yet complete. The bounded-window helpers make the value at bar t a function of the bars of a
fixed trailing window only, computed by the same tree of elementwise operations wherever the
array starts, so a window cut from a longer history gives bit-identical values (TA-Lib's
running sums and recursive seeds depend on where the input starts). Long windows reduce in
O(log w) vector passes by doubling blocks (a sparse-table scheme). No transcendental ufuncs
(exp, log, tanh) are used in per-bar paths: their SIMD and scalar code paths may differ in
the last bit depending on an element's position in the array.

Wilder averages (RSI, ATR) are TA-Lib's, seeded at the start of a trailing window: the value
at t equals TA-Lib's result on just the last ``window`` bars (Wilder 1978, *New Concepts in
Technical Trading Systems*). Tests check each helper against TA-Lib or an independent
reference on the real candles to within 1e-9 (relative).
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import talib

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Combine = Callable[[F64, F64, int], F64]
_fadd = operator.add


def _f64(x: npt.ArrayLike) -> F64:
    return np.ascontiguousarray(x, dtype=np.float64)


# -- TA-Lib wrappers (full-history, recursive seeds; used as references and for candles) ----


def ta_sma(x: F64, period: int) -> F64:
    """TA-Lib simple moving average."""
    return np.asarray(talib.SMA(_f64(x), timeperiod=period), dtype=np.float64)


def ta_ema(x: F64, period: int) -> F64:
    """TA-Lib exponential moving average (seeded with the SMA of the first ``period``)."""
    return np.asarray(talib.EMA(_f64(x), timeperiod=period), dtype=np.float64)


def ta_rsi(close: F64, period: int = 14) -> F64:
    """TA-Lib Wilder RSI over the whole input (0..100)."""
    return np.asarray(talib.RSI(_f64(close), timeperiod=period), dtype=np.float64)


def ta_atr(high: F64, low: F64, close: F64, period: int = 14) -> F64:
    """TA-Lib Wilder average true range over the whole input (price units)."""
    out = talib.ATR(_f64(high), _f64(low), _f64(close), timeperiod=period)
    return np.asarray(out, dtype=np.float64)


def ta_obv(close: F64, volume: F64) -> F64:
    """TA-Lib on-balance volume (Granville 1963), starting at the first bar's volume."""
    return np.asarray(talib.OBV(_f64(close), _f64(volume)), dtype=np.float64)


def ta_stddev(x: F64, period: int) -> F64:
    """TA-Lib population standard deviation over ``period`` bars."""
    return np.asarray(talib.STDDEV(_f64(x), timeperiod=period, nbdev=1.0), dtype=np.float64)


def ta_candle(name: str, o: F64, h: F64, lo: F64, c: F64) -> I64:
    """A TA-Lib candlestick function by name (``CDLENGULFING``): +100, -100 or 0 per bar."""
    fn = getattr(talib, name)
    return np.asarray(fn(_f64(o), _f64(h), _f64(lo), _f64(c)), dtype=np.int64)


# -- bounded-window helpers ------------------------------------------------------------------


def _reduce(x: F64, w: int, combine: Combine, decay: float | None = None) -> F64:
    """``r[..., j]`` = reduction of ``x[..., j : j + w]`` by doubling blocks, j in 0..n-w.

    ``decay`` says ``combine`` is ``left * decay**size + right``; long inputs then do the
    same operations into reused buffers (`_reduce_long`).
    """
    n = x.shape[-1]
    m = n - w + 1
    if w <= 0 or m <= 0:
        return np.zeros(0, dtype=np.float64)
    if x.size >= 8192 and (decay is not None or combine in _UFUNCS):
        return _reduce_long(x, w, combine, decay)
    cur, size, start = x, 1, 0
    res: F64 | None = None
    while True:
        if w & size:
            part = cur[..., start : start + m]
            res = part.copy() if res is None else combine(res, part, size)
            start += size
        if size * 2 > w:
            break
        cur = combine(cur[..., :-size], cur[..., size:], size)
        size *= 2
    assert res is not None
    return res


def _reduce_long(x: F64, w: int, combine: Combine, decay: float | None) -> F64:
    """`_reduce` with the same operations written into two reused buffers (long inputs; a
    combine that is a known ufunc, or a decay)."""
    m = x.shape[-1] - w + 1
    uf = _UFUNCS.get(combine)
    dec = 1.0 if decay is None else decay
    spare = [np.empty(x.shape, dtype=x.dtype) for _ in range(2)]
    cur, size, start = x, 1, 0
    res: F64 | None = None
    while True:
        if w & size:
            part = cur[..., start : start + m]
            if res is None:
                res = part.copy()
            elif uf is not None:
                uf(res, part, out=res)
            else:
                np.multiply(res, dec**size, out=res)
                np.add(res, part, out=res)
            start += size
        if size * 2 > w:
            break
        nxt = spare[0][..., : cur.shape[-1] - size]
        if uf is not None:
            uf(cur[..., :-size], cur[..., size:], out=nxt)
        else:
            np.multiply(cur[..., :-size], dec**size, out=nxt)
            np.add(nxt, cur[..., size:], out=nxt)
        spare.reverse()  # the other buffer next time: never written while read
        cur = nxt
        size *= 2
    assert res is not None
    return res


def window_sum(v: list[float]) -> float:
    """The sum of ``v`` by the tree `rolling_sum` uses for a window of ``len(v)`` values.

    Equals ``rolling_sum(x, len(v))`` at the window's last bar bit for bit (Python float
    addition rounds as numpy's): blocks of the set bits of ``len(v)``, smallest first, each
    summed pairwise, added left to right. For the last-bar paths (`Agent.compute_last`).
    """
    w = len(v)
    res = 0.0
    start, size = 0, 1
    while size <= w:
        if w & size:
            if size == 1:
                b = v[start]
            elif size == 2:
                b = v[start] + v[start + 1]
            elif size == 4:
                b = (v[start] + v[start + 1]) + (v[start + 2] + v[start + 3])
            elif size == 8:
                v0, v1, v2, v3, v4, v5, v6, v7 = v[start : start + 8]
                b = ((v0 + v1) + (v2 + v3)) + ((v4 + v5) + (v6 + v7))
            else:  # pairs (0, 1), (2, 3), ...: the same additions, level by level
                end = start + size
                seg = list(map(_fadd, v[start:end:2], v[start + 1 : end : 2]))
                while len(seg) > 1:
                    seg = list(map(_fadd, seg[::2], seg[1::2]))
                b = seg[0]
            res = b if start == 0 else res + b
            start += size
        size *= 2
    return res


def sum_at(x: F64, w: int, t: int) -> float:
    """``rolling_sum(x, w)[t]`` (t >= w - 1) bit for bit, computing that window only."""
    seg = x[t - w + 1 : t + 1]
    if w <= 64:  # plain floats are quicker for short windows
        return window_sum(seg.tolist())
    return float(_reduce(seg, w, _add)[0])


def sums_last(x: F64, w: int) -> list[float]:
    """Per row of ``x``, ``rolling_sum(row, w)`` at the last bar, bit for bit."""
    return [float(v) for v in _reduce(x[..., x.shape[-1] - w :], w, _add).ravel()]


def _pad(valid: F64, n: int) -> F64:
    out = np.full((*valid.shape[:-1], n), np.nan, dtype=np.float64)
    if valid.shape[-1]:
        out[..., n - valid.shape[-1] :] = valid
    return out


def _add(a: F64, b: F64, _: int) -> F64:
    return np.add(a, b)


def _max(a: F64, b: F64, _: int) -> F64:
    return np.maximum(a, b)


def _min(a: F64, b: F64, _: int) -> F64:
    return np.minimum(a, b)


_UFUNCS: dict[Combine, np.ufunc] = {_add: np.add, _max: np.maximum, _min: np.minimum}


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


def pairwise_rows(term: Callable[[int], F64], n: int, lo: int = 0) -> F64:
    """``term(lo) + ... + term(lo + n - 1)`` in numpy's pairwise order for one row.

    numpy's float sum of a contiguous row (``np.add.reduce`` over the last axis) adds fewer
    than 8 values left to right, up to 128 in 8 interleaved accumulators combined as
    ``((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))`` then the rest left to right, and
    splits longer rows at half (rounded down to a multiple of 8). Each ``term`` is a fresh
    array (it is updated in place). `pairwise_floats` is the same on plain floats.
    """
    if n < 8:
        res = term(lo)
        for i in range(lo + 1, lo + n):
            res += term(i)
        return res
    if n <= 128:
        r = [term(lo + j) for j in range(8)]
        i = 8
        while i < n - n % 8:
            for j in range(8):
                r[j] += term(lo + i + j)
            i += 8
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        for k in range(i, n):
            res += term(lo + k)
        return res
    half = n // 2
    half -= half % 8
    return pairwise_rows(term, half, lo) + pairwise_rows(term, n - half, lo + half)


def pairwise_floats(v: list[float]) -> float:
    """`pairwise_rows` of plain floats (the sum of one row, for the last-bar paths)."""
    n = len(v)
    if n < 8:
        res = v[0] if n else 0.0
        for k in range(1, n):
            res += v[k]
        return res
    if n <= 128:
        r = v[:8]
        i = 8
        while i < n - n % 8:
            for j in range(8):
                r[j] += v[i + j]
            i += 8
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        for k in range(i, n):
            res += v[k]
        return res
    half = n // 2
    half -= half % 8
    return pairwise_floats(v[:half]) + pairwise_floats(v[half:])


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


def diff(x: F64) -> F64:
    """``x[t] - x[t - 1]``, NaN at the first bar."""
    x = _f64(x)
    out = np.empty_like(x)
    out[:1] = np.nan
    np.subtract(x[1:], x[:-1], out=out[1:])
    return out


def rsi(close: F64, period: int = 14, window: int = 250) -> F64:
    """Wilder RSI (0..100) of the last ``window`` closes at every bar; 50 when flat.

    Equals ``talib.RSI(close[t - window + 1 : t + 1], period)[-1]`` (Wilder 1978).
    """
    ag, al = rsi_averages(close, period, window)
    tot = ag + al
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(tot > 0, 100.0 * ag / np.where(tot > 0, tot, 1.0), 50.0)
    out[np.isnan(tot)] = np.nan
    return out


def rsi_averages(close: F64, period: int = 14, window: int = 250) -> F64:
    """`rsi`'s Wilder averages of gains and losses (rows 0 and 1) at every bar.

    ``rsi`` at bar t is ``100 * ag / (ag + al)`` where that total is positive, else 50 (NaN
    where it is NaN); `rsi1` gives it for one bar on plain floats.
    """
    d = diff(close)
    both = np.stack([np.maximum(d, 0.0), np.maximum(-d, 0.0)])
    both[:, 0] = np.nan
    return wilder_window(both, period, window - 1)  # gains and losses in one pass


def rsi1(ag: float, al: float) -> float:
    """`rsi` of one bar from its averages (`rsi_averages`), bit for bit."""
    tot = ag + al
    if tot != tot:
        return float("nan")
    return 100.0 * ag / tot if tot > 0 else 50.0


def true_range(high: F64, low: F64, close: F64) -> F64:
    """Wilder's true range: ``max(high, prev close) - min(low, prev close)``; NaN at bar 0."""
    h, lo, c = _f64(high), _f64(low), _f64(close)
    tr = np.empty_like(h)
    tr[:1] = np.nan
    tr[1:] = np.maximum(h[1:], c[:-1]) - np.minimum(lo[1:], c[:-1])
    return tr


def atr(high: F64, low: F64, close: F64, period: int = 14, window: int = 100) -> F64:
    """Wilder ATR of the last ``window`` bars; equals TA-Lib's ATR on that window."""
    return wilder_window(true_range(high, low, close), period, window - 1)


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
    if np.isnan(float(_reduce(win, w, _add)[0])):  # as `percent_rank`: NaN where its sum is
        return float("nan")
    return (np.count_nonzero(win < cur) + 0.5 * np.count_nonzero(win == cur)) / w


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
