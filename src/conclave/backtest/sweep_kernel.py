"""The per-configuration work of a sweep, compiled by numba: the decision and the figures.

A sweep (`conclave.backtest.sweep`) computes the agents' series once; each configuration
then needs only its decision (`decide`: `signals.pre_decide`'s formula, bar by bar, on the
same floats in the same order, so every action and strength is the same bit for bit), the
account loop (`fast_kernel.kernel`, unchanged) and the figures of `metrics.performance`
from the loop's output (`figures`). tests/backtest/test_sweep_kernel.py holds `decide`
equal to `pre_decide` and a sweep's figures equal to the engine's. Both functions release
the GIL (``nogil``), so a sweep runs configurations on several threads.

numba is imported with this module: import it where the work runs, never at package import.
"""

from __future__ import annotations

import math

import numba
import numpy as np

QTY_EPS = 1e-12  # conclave.accounts.paper.QTY_EPS
ZERO_DEVIATION = 1e-12  # conclave.backtest.metrics.ZERO_DEVIATION
NONE, HOLD, BUY, SELL = 0, 1, 2, 3  # conclave.backtest.result codes
#: The columns `figures` fills, in order (NaN where `metrics` says None).
FIGURES: tuple[str, ...] = (
    "total_return", "sharpe", "sortino", "max_drawdown", "win_rate", "trades", "buys",
    "sells", "round_trips", "time_in_market", "mean_exposure", "fees_paid", "final_equity",
)  # fmt: skip

_jit = numba.njit(cache=True, nogil=True)


@_jit
def decide(
    score: np.ndarray, conf: np.ndarray, usable: np.ndarray, healthy: np.ndarray,
    vol_col: np.ndarray, vol_ok: np.ndarray, weights: np.ndarray, thresholds: np.ndarray,
    quorum: int, act: np.ndarray, strength: np.ndarray, vol_mult: np.ndarray,
    scratch: np.ndarray,
) -> None:  # fmt: skip
    """`pre_decide`'s action, strength and volatility multiplier, into ``act``,
    ``strength`` and ``vol_mult``.

    ``score``/``conf``/``usable``: one row per directional agent present (registry order),
    ``weights`` theirs; ``healthy`` counts the usable analysis agents at each bar;
    ``vol_col``/``vol_ok``: the sizing agent's multiplier and where it is usable;
    ``thresholds``: buy, sell, strong, volatility fallback; ``scratch``: (4, bars) floats.
    """
    buy, sell, strong, fallback = thresholds[0], thresholds[1], thresholds[2], thresholds[3]
    k, n = score.shape
    total_w, sum_wc, net, spread = scratch[0], scratch[1], scratch[2], scratch[3]
    total_w[:] = 0.0
    sum_wc[:] = 0.0
    net[:] = 0.0
    spread[:] = 0.0
    # agent after agent over every bar (the loops numba vectorizes): each bar's sums still
    # add the agents in registry order, as `pre_decide`'s do
    for a in range(k):
        w = weights[a]
        s_a, c_a, u_a = score[a], conf[a], usable[a]
        for i in range(n):
            ok = u_a[i]
            total_w[i] += w if ok else 0.0
            wc = w * c_a[i] if ok else 0.0
            pull = wc * s_a[i]
            sum_wc[i] += wc
            net[i] += pull
            spread[i] += abs(pull)
    for i in range(n):
        vol_mult[i] = vol_col[i] if vol_ok[i] else fallback
        if not (healthy[i] >= quorum and total_w[i] > 0):
            act[i], strength[i] = NONE, 0.0
            continue
        conviction = net[i] / sum_wc[i] if sum_wc[i] > 0 else 0.0
        a_ = HOLD
        if conviction >= buy:
            a_ = BUY
        if conviction <= -sell:
            a_ = SELL
        act[i] = a_
        if a_ == HOLD:
            strength[i] = 0.0
        else:
            x = abs(conviction) / strong
            strength[i] = 1.0 if x > 1.0 else x  # np.minimum(1.0, x), NaN included


@_jit
def _sharpe_sortino(r: np.ndarray, m: int, per_year: float) -> tuple[float, float]:
    """`metrics._sharpe_sortino` over ``r[:m]`` (the finite returns); NaN for None."""
    if m < 2:
        return math.nan, math.nan
    total = 0.0
    for j in range(m):
        total += r[j]
    mean = total / m
    sq = down = 0.0
    for j in range(m):
        d = r[j] - mean
        sq += d * d
        low = r[j] if r[j] < 0.0 else 0.0
        down += low * low
    std = math.sqrt(sq / m)
    down = math.sqrt(down / m)
    scale = math.sqrt(per_year)
    sharpe = mean / std * scale if std > ZERO_DEVIATION else math.nan
    sortino = mean / down * scale if down > ZERO_DEVIATION else math.nan
    return sharpe, sortino


@_jit
def figures(
    equity: np.ndarray, qty: np.ndarray, exposure_abs: np.ndarray, fills_f: np.ndarray,
    fills_i: np.ndarray, nf: int, open_time: np.ndarray, balance: float, per_year: float,
    out: np.ndarray,
) -> None:  # fmt: skip
    """`metrics.performance`'s figures of one run, into ``out`` in `FIGURES` order.

    ``equity``/``qty``/``exposure_abs`` per bar and the ``nf`` fills are the account loop's
    (`fast_loop` layout); ``balance`` is the starting balance, ``per_year`` bars a year.
    """
    n = equity.shape[0]
    final = equity[n - 1] if n else balance
    r = np.empty(n)
    m = 0
    prev, peak, mdd, held, expo_sum, expo_n = balance, -math.inf, -math.inf, 0, 0.0, 0
    for i in range(n):
        e = equity[i]
        x = e / prev - 1.0 if prev != 0.0 else (math.nan if e == 0.0 else math.inf)
        if math.isfinite(x):
            r[m] = x
            m += 1
        prev = e
        top = e if e > balance else balance
        if top > peak:
            peak = top
        dd = 1.0 - e / peak if peak > 0 else 0.0
        if dd > mdd or math.isnan(dd):
            mdd = dd
        if abs(qty[i]) > QTY_EPS:
            held += 1
        ex = exposure_abs[i] / e if e > 0 else 0.0
        if math.isfinite(ex):
            expo_sum += ex
            expo_n += 1
    sharpe, sortino = _sharpe_sortino(r, m, per_year)
    sells = wins = closed = 0
    fees = 0.0
    for f in range(nf):
        fees += fills_f[2, f]
        if fills_i[2, f] == SELL:
            sells += 1
            if fills_f[3, f] > 0:
                wins += 1
            at = np.searchsorted(open_time, fills_i[0, f])
            if at < n and open_time[at] == fills_i[0, f] and abs(qty[at]) <= QTY_EPS:
                closed += 1
    out[0] = final / balance - 1.0 if balance else 0.0
    out[1], out[2] = sharpe, sortino
    out[3] = (mdd if mdd > 0.0 else 0.0) if n else 0.0
    out[4] = wins / sells if sells else math.nan
    out[5], out[6], out[7], out[8] = nf, nf - sells, sells, closed
    out[9] = held / n if n else 0.0
    out[10] = expo_sum / expo_n if expo_n else 0.0
    out[11], out[12] = fees, final
