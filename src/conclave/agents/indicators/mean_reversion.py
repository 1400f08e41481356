"""Mean reversion: a rolling augmented Dickey-Fuller test on log prices, and the half-life.

`adf` runs, at every bar t, the ADF regression with a constant over the last ``w`` rows
(Dickey & Fuller 1979; Said & Dickey 1984, ``k`` lagged differences)::

    dy[s] = a + gamma * y[s-1] + d_1 dy[s-1] + ... + d_k dy[s-k] + e[s],   s = t-w+1 .. t

and returns the t-statistic of ``gamma`` (OLS, ``w - k - 2`` degrees of freedom) and
``gamma``. A t-statistic below `adf_critical` rejects a unit root (a random walk) at that
size: evidence the series reverts to its mean. It uses ``w + k + 1`` values of ``y``.

Point in time and O(1) per bar: the window sums of the regressors and of their products
are `windows._reduce`'s doubling-block sums (start-independent, bit for bit); the OLS is
then elementwise arithmetic on those sums (centring removes the constant; Gaussian
elimination partials out the lags, Frisch-Waugh). `adf_last` is the same arithmetic on the
last window only, so it equals the last bar of `adf` bit for bit. The raw sums lose about
``log10(mean(y)^2 / var(y))`` digits to cancellation (~5 on a calm window of log prices):
t agrees with statsmodels' ``adfuller`` to ~1e-9 (tests/agents/test_mean_reversion_gate.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from conclave.agents.indicators.talib_numpy import talib
from conclave.agents.indicators.windows import F64, _add, _f64, _pad, _reduce, _reduce_rows

#: MacKinnon (2010), "Critical Values for Cointegration Tests", Queen's Economics Department
#: Working Paper 1227, Table 2, the tau_c row (one variable, constant, no trend): the
#: critical value for ``nobs`` regression rows at a size is
#: ``b0 + b1 / nobs + b2 / nobs**2 + b3 / nobs**3`` (statsmodels' ``tau_c_2010`` holds the
#: same numbers).
MACKINNON_2010_TAU_C: dict[float, tuple[float, float, float, float]] = {
    0.01: (-3.43035, -6.5393, -16.786, -79.433),
    0.05: (-2.86154, -2.8903, -4.234, -40.040),
    0.10: (-2.56677, -1.5384, -2.809, 0.0),
}
# a sum of squares below this share of its raw (uncentred) sum is rounding, not variation
_TOL = 1e-12


def adf_critical(nobs: int, size: float) -> float:
    """MacKinnon's (2010) ADF critical value, constant-only case, for ``nobs`` rows.

    ``size`` is 0.01, 0.05 or 0.10 (the probability of calling a random walk stationary).
    """
    b0, b1, b2, b3 = MACKINNON_2010_TAU_C[size]
    return b0 + b1 / nobs + b2 / nobs**2 + b3 / nobs**3


def log_prices(x: F64) -> F64:
    """Natural log of each value (NaN where not positive), as ``math.log`` gives it.

    ``math.log`` (the C library's ``log``) rounds one value the same wherever it sits in
    the array (numpy's SIMD log may differ in the last bit by position), so the log of a
    window cut from a longer history is bit-identical. TA-Lib's ``LN`` calls that same
    ``log`` in a C loop, some 30x quicker than a Python call per value: it is used where
    it gives ``math.log``'s bits on a probe (`_c_log`), else ``math.log`` per value.
    """
    x = _f64(x)
    n = x.shape[0]
    if n and float(x.min()) > 0.0:  # every value positive (a NaN fails this)
        ln = _c_log()
        if ln is not None:
            return np.asarray(ln(x), dtype=np.float64)
        return np.fromiter(map(math.log, x.tolist()), np.float64, n)
    log = math.log
    return np.fromiter((log(v) if v > 0 else math.nan for v in x.tolist()), np.float64, n)


_LN: list[Callable[[F64], F64] | None] = []  # `_c_log`'s answer, once known


def _c_log() -> Callable[[F64], F64] | None:
    """TA-Lib's ``LN`` when it returns ``math.log``'s bits on a probe of positive values
    (from the smallest subnormal to the largest float, prices written with up to 8
    decimals, values next to 1); None (use ``math.log``) when it does not."""
    if not _LN:
        fn: Callable[[F64], F64] = getattr(talib.LN, "__wrapped__", talib.LN)
        probe = np.concatenate(
            (
                np.exp(np.linspace(-744.0, 709.7, 4001)),
                np.round(np.geomspace(1e-8, 1e7, 4001), 8),
                1.0 + np.linspace(-1e-3, 1e-3, 2001),
                [5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, math.inf],
            )
        )
        probe = probe[probe > 0]
        want = np.fromiter(map(math.log, probe.tolist()), np.float64, probe.shape[0])
        got = np.asarray(fn(probe), dtype=np.float64)
        _LN.append(fn if got.tobytes() == want.tobytes() else None)
    return _LN[0]


def _columns(y: F64, lags: int) -> F64:
    """Rows of the regression at bars s = lags + 1 .. n - 1, as columns of shape (q, m):
    ``dy[s-1] .. dy[s-lags], y[s-1], dy[s]``, then the products of every pair i <= j."""
    return np.stack(_column_list(y, lags))


def _column_list(y: F64, lags: int) -> list[F64]:
    """`_columns` as a list of rows."""
    dy = y[1:] - y[:-1]  # the difference at bar s is dy[s - 1]
    start = lags  # the first row's index into dy
    cols = [dy[start - j : dy.shape[0] - j] for j in range(1, lags + 1)]
    cols += [y[start : y.shape[0] - 1], dy[start:]]
    q = len(cols)
    return cols + [cols[i] * cols[j] for i in range(q) for j in range(i, q)]


def _ols_t(sums: F64, w: int, lags: int) -> tuple[F64, F64]:
    """ADF t-statistic and gamma from the window sums of `_columns` (one column per bar)."""
    q = lags + 2
    s = sums[:q]
    raw: dict[tuple[int, int], F64] = {}
    k = q
    for i in range(q):
        for j in range(i, q):
            raw[i, j] = sums[k]
            k += 1
    # cross products about the window means (the constant partialled out)
    cm = {ij: raw[ij] - s[ij[0]] * s[ij[1]] / w for ij in raw}
    with np.errstate(invalid="ignore", divide="ignore"):
        for p in range(lags):  # partial out each lag (a lag with no variance is dropped)
            ok = cm[p, p] > _TOL * raw[p, p]
            piv = np.where(ok, cm[p, p], 1.0)
            for i in range(p + 1, q):
                f = np.where(ok, cm[p, i] / piv, 0.0)
                for j in range(i, q):
                    cm[i, j] = cm[i, j] - f * cm[p, j]
        x, yx = lags, lags + 1  # y[s-1] and dy[s]
        a, b, c = cm[x, x], cm[x, yx], cm[yx, yx]
        live = a > _TOL * raw[x, x]
        gamma = np.where(live, b / np.where(live, a, 1.0), np.nan)
        ssr = c - b * gamma
        live &= ssr > _TOL * raw[yx, yx]
        se2 = np.where(live, ssr / (w - q) / np.where(live, a, 1.0), 1.0)
        t = np.where(live, gamma / np.sqrt(se2), np.nan)
    return t, gamma


def adf(y: F64, w: int, lags: int = 0) -> tuple[F64, F64]:
    """ADF t-statistic and gamma at every bar over the last ``w`` rows (module docstring).

    Full-length arrays, NaN before bar ``w + lags`` and where ``y[s-1]`` or the residual has
    no variance in the window.
    """
    y = _f64(y)
    n = y.shape[0]
    if n < w + lags + 1:
        return np.full(n, np.nan), np.full(n, np.nan)
    t, gamma = _ols_t(_reduce(_columns(y, lags), w, _add), w, lags)
    return _pad(t, n), _pad(gamma, n)


def adf_last(y: F64, w: int, lags: int = 0) -> tuple[float, float]:
    """`adf` at the last bar only, bit for bit (``y`` holds at least ``w + lags + 1`` values)."""
    tail = _f64(y[y.shape[0] - (w + lags + 1) :])
    rows = np.stack(_column_list(tail, lags), axis=1)  # `_columns` with the bars as rows
    return _ols_t1(_reduce_rows(rows, w, _add, 1)[0].tolist(), w, lags)


def _ols_t1(sums: list[float], w: int, lags: int) -> tuple[float, float]:
    """`_ols_t` of one bar on plain floats: the same operations in the same order (Python
    floats round as numpy's elementwise float64; ``math.sqrt`` is correctly rounded as
    ``np.sqrt``), each ``np.where`` taken as the branch it selects."""
    q = lags + 2
    raw: dict[tuple[int, int], float] = {}
    k = q
    for i in range(q):
        for j in range(i, q):
            raw[i, j] = sums[k]
            k += 1
    cm = {ij: raw[ij] - sums[ij[0]] * sums[ij[1]] / w for ij in raw}
    for p in range(lags):
        ok = cm[p, p] > _TOL * raw[p, p]
        piv = cm[p, p] if ok else 1.0
        for i in range(p + 1, q):
            f = cm[p, i] / piv if ok else 0.0
            for j in range(i, q):
                cm[i, j] = cm[i, j] - f * cm[p, j]
    x, yx = lags, lags + 1
    a, b, c = cm[x, x], cm[x, yx], cm[yx, yx]
    live = a > _TOL * raw[x, x]
    gamma = b / a if live else math.nan
    ssr = c - b * gamma
    live = live and ssr > _TOL * raw[yx, yx]
    if not live:
        return math.nan, gamma
    return gamma / math.sqrt(ssr / (w - q) / a), gamma


def half_life(beta: F64) -> F64:
    """AR(1) half-life in bars for each slope (inf when the series does not revert)."""
    b = np.asarray(beta, dtype=np.float64)
    out = np.full(b.shape, np.inf)
    ok = (b < 0) & (b > -1)
    out[ok] = -np.log(2.0) / np.log1p(b[ok])
    return out
