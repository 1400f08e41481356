"""The account loop of `account_loop.simulate`, compiled by numba: same steps, same floats.

Each function here mirrors one of `conclave.accounts.paper` / `conclave.accounts.risk`
(named in its docstring) on plain numbers, in the same order of operations, so every value
rounds as the reference does; Python's ``min``/``max`` are spelled out (`_pmin`, `_pmax`)
because their NaN behaviour depends on the argument order. numba compiles without fast-math
(no reassociation, no fused multiply-add), so the floats are IEEE operations one by one.
tests/backtest/test_fast_loop.py holds the result equal to the reference on random terms.

Times are int64 ms; "no time" (``Protections``' None) is `NO_TIME`, below every bar time.
Where the reference's integer arithmetic could differ from float (a quantity ratio beyond
2**52 in `paper.floor_step`), or it would raise (a NaN ratio), the kernel stops and returns
the bar index: the caller then runs the reference loop instead.
"""

from __future__ import annotations

import math

import numba
import numpy as np

QTY_EPS = 1e-12  # conclave.accounts.paper.QTY_EPS
NO_TIME = np.iinfo(np.int64).min
BUY, SELL, HOLD = 2, 3, 1  # conclave.backtest.result codes
# why an order was placed: `paper.size_order`'s and the flatten reasons
R_BUY, R_SELL_ALL, R_SELL_DUST, R_SELL, R_FLATTEN = range(5)
_BIG = 2.0**52

_jit = numba.njit(cache=True, nogil=True)


@_jit
def _pmax(a: float, b: float) -> float:  # Python's max(a, b)
    return b if b > a else a


@_jit
def _pmin(a: float, b: float) -> float:  # Python's min(a, b)
    return b if b < a else a


@_jit
def _floor_step(qty: float, step: float) -> tuple[float, bool]:
    """`paper.floor_step`; False when the ratio is out of the exact range (see module)."""
    if step <= 0.0:
        return qty, True
    ratio = qty / step
    if not (abs(ratio) < _BIG):
        return 0.0, False
    n = float(math.floor(ratio))  # exact: |ratio| < 2**52
    if n + 1.0 - ratio <= _pmin(0.5, _pmax(1e-9, abs(ratio) * 1e-15)):
        n += 1.0
    return n * step, True


@_jit
def _dust(rem: float, price: float, min_notional: float, step: float) -> bool:
    """`paper.leaves_dust`."""
    return rem > 0.0 and (rem < step or rem * price < min_notional)


@_jit
def _level(dd: float, loss: float, equity: float, exposure: float, lim: np.ndarray) -> int:
    """`risk.level_of`; ``lim``: drawdown limits, loss limits, max exposure."""
    a = int(dd >= lim[0]) + int(dd >= lim[1]) + int(dd >= lim[2])
    b = int(loss >= lim[3]) + int(loss >= lim[4]) + int(loss >= lim[5])
    level = b if b > a else a
    if equity <= 0 or exposure > lim[6] * equity:
        return level if level > 2 else 2
    return level


@_jit
def _dd_loss(equity: float, peak: float, day_start: float) -> tuple[float, float]:
    """`risk.drawdown_and_loss` (``day_start`` 0.0 for None: both are falsy there)."""
    dd = _pmin(1.0, _pmax(0.0, 1.0 - equity / peak)) if peak > 0 else 1.0
    loss = _pmin(1.0, _pmax(0.0, 1.0 - equity / day_start)) if day_start else 0.0
    return dd, loss


@_jit
def _sod(times: np.ndarray, values: np.ndarray, lo: int, hi: int, t: int) -> tuple[float, bool]:
    """`risk.start_of_day` over the curve ``times[lo:hi]``; False for None."""
    day = (t // 86_400_000) * 86_400_000
    a, b = lo, hi  # bisect_right(times[lo:hi], day)
    while a < b:
        mid = (a + b) // 2
        if day < times[mid]:
            b = mid
        else:
            a = mid + 1
    if a > lo:
        return values[a - 1], True
    if a < hi and times[a] <= t:
        return values[a], True
    return 0.0, False


@_jit
def kernel(
    opens: np.ndarray, closes: np.ndarray, t_open: np.ndarray, t_close: np.ndarray,
    act: np.ndarray, strength: np.ndarray, volm: np.ndarray,
    fnum: np.ndarray, inum: np.ndarray, out_f: np.ndarray, out_i: np.ndarray,
    fills_f: np.ndarray, fills_i: np.ndarray,
) -> tuple[int, int]:  # fmt: skip
    """Run the account over the bars; answer (bars done, fills). Layout: `fast_loop`."""
    fee_rate, slip, balance = fnum[0], fnum[1], fnum[2]
    mpf, min_not, step = fnum[3], fnum[4], fnum[5]
    lim = fnum[6:13]
    mults = np.array([1.0, fnum[13], fnum[14], 0.0])
    hyst = fnum[15]
    bar_ms, streak_max, pause_bars, cool_bars = inum[0], inum[1], inum[2], inum[3]
    flatten, resume_ms = inum[4] != 0, inum[5] * 1000
    n = opens.shape[0]
    times = np.empty(n, dtype=np.int64)  # the equity curve: points cs .. npts - 1
    values = np.empty(n, dtype=np.float64)
    cs = npts = 0
    c_day, c_sod, c_has = -1, 0.0, False  # `EquityCurve.start_of_day`'s cache
    cash, qty, avg, realised, mark = balance, 0.0, 0.0, 0.0, 0.0
    halted = False
    halted_at, risk_since, paused_until = -1, -1, -1
    streak, p_until, cool_until = 0, NO_TIME, NO_TIME
    has_order, o_side, o_notional, o_qty, o_decided, o_why, o_val, o_size = (
        False, 0, 0.0, 0.0, 0, 0, 0.0, 0.0)  # fmt: skip
    reuse_day, reuse_level, sod_day, sod, peak = -1, 0, -1, 0.0, -math.inf
    nf = 0
    for i in range(n):
        as_of = t_close[i]
        day = as_of - as_of % 86_400_000
        blocked = halted or as_of < paused_until
        if day == reuse_day:
            lv = 3 if blocked else reuse_level
        elif npts == cs:
            lv = 3 if blocked else 0
        else:  # `account_loop.agent_verdict`
            eq = values[npts - 1]
            dd = 1.0 - eq / peak if peak > 0 else 0.0
            dd = _pmin(_pmax(dd, 0.0), 1.0)
            if c_day == day and c_has:
                s_, has = c_sod, True
            else:
                s_, has = _sod(times, values, cs, npts, as_of)
                c_day, c_sod, c_has = day, s_, has
            loss = 1.0 - eq / s_ if has and s_ > 0 else 0.0
            loss = _pmin(_pmax(loss, 0.0), 1.0)
            lv = 3 if blocked else _level(dd, loss, eq, abs(qty * mark), lim)
        a = act[i]
        size = 0.0
        if a == SELL:
            size = strength[i]
        elif a == BUY:
            if lv == 3:
                a = HOLD
            else:
                size = strength[i] * volm[i] * mults[lv]
        out_i[0, i], out_i[1, i], out_f[5, i] = lv, a, size

        if has_order:  # `paper.fill_at_open` and `paper.apply_fill`
            has_order = False
            if o_side == BUY:
                price = opens[i] * (1.0 + slip)
                spend = _pmin(o_notional, _pmax(0.0, cash) / (1.0 + fee_rate))
                fq = 0.0
                if price > 0:
                    fq, ok = _floor_step(spend / price, step)
                    if not ok:
                        return i, nf
                whole = False
            else:
                price = opens[i] * (1.0 - slip)
                fq = _pmin(o_qty, qty)
                whole = fq >= qty or _dust(qty - fq, price, min_not, step)
                if whole:
                    fq = qty
            if fq > QTY_EPS and not (fq * price < min_not and not whole):
                fee = fq * price * fee_rate
                pnl = 0.0
                if o_side == BUY:
                    cost = fq * price + fee
                    nq = qty + fq
                    avg = (qty * avg + cost) / nq
                    qty = nq
                    cash += -cost
                else:
                    proceeds = fq * price - fee
                    pnl = proceeds - fq * avg
                    nq = qty - fq
                    realised = realised + pnl
                    if nq <= QTY_EPS:
                        qty, avg = 0.0, 0.0
                    else:
                        qty = nq
                    cash += proceeds
                mark = opens[i]
                fills_f[0, nf], fills_f[1, nf], fills_f[2, nf], fills_f[3, nf] = fq, price, fee, pnl
                fills_f[4, nf], fills_f[5, nf] = o_val, o_size
                fills_i[0, nf], fills_i[1, nf], fills_i[2, nf] = t_open[i], o_decided, o_side
                fills_i[3, nf] = o_why
                nf += 1
                if o_side == SELL:  # `risk.after_trade`
                    if pnl >= 0:
                        streak = 0
                    else:
                        streak += 1
                        cool_until = t_open[i] + cool_bars * bar_ms
                        if streak >= streak_max:
                            streak, p_until = 0, t_open[i] + pause_bars * bar_ms
                    paused_until = -1 if p_until == NO_TIME else p_until

        if qty > 0:
            mark = closes[i]
        held = qty * mark
        equity = cash + held
        times[npts], values[npts] = as_of, equity
        npts += 1  # noqa: SIM113 (the curve's points, one per bar; the resume keeps them)
        if as_of <= c_day:
            c_day = -1
        if equity > peak:
            peak = equity
        if day != sod_day or as_of == day:
            if c_day == day and c_has:
                got, has = c_sod, True
            else:
                got, has = _sod(times, values, cs, npts, as_of)
                c_day, c_sod, c_has = day, got, has
            sod_day, sod = day, (got if has else 0.0)
        dd, loss = _dd_loss(equity, peak, sod)
        level = _level(dd, loss, equity, abs(held), lim)
        if not halted:
            if level == 3:
                halted, halted_at = True, as_of
        elif dd < lim[2] - hyst and loss < lim[5] - hyst:  # `risk.recovered`
            halted = False
        elif resume_ms and qty <= QTY_EPS and as_of - halted_at >= resume_ms:
            halted, risk_since = False, as_of  # `risk.auto_resume`: the curve restarts
            cs = npts - 1
            c_day, c_has = -1, False
            peak, sod_day, sod = equity, day, equity
            dd, loss = _dd_loss(equity, peak, sod)
            level = _level(dd, loss, equity, abs(held), lim)
        if peak > 0 and sod > 0:
            reuse_day, reuse_level = day, level
        else:
            reuse_day = -1

        if halted and flatten and qty > QTY_EPS:  # `paper.sell_all`
            has_order, o_side, o_notional, o_qty = True, SELL, qty * closes[i], qty
            o_decided, o_why, o_val, o_size = t_open[i], R_FLATTEN, 0.0, 0.0
        elif size > 0:
            side = BUY if a == BUY else SELL
            refused = side == BUY and (halted or as_of < p_until or as_of < cool_until)
            if not refused:  # `paper.size_order`
                price = closes[i]
                want = _pmax(0.0, equity) * mpf * _pmax(0.0, size)
                held_c = qty * price
                if side == BUY:
                    room = _pmax(0.0, equity * mpf - held_c)
                    notional = _pmin(want, room)
                    if not (notional < min_not or notional <= 0.0):
                        has_order, o_side, o_notional, o_qty = True, BUY, notional, 0.0
                        o_decided, o_why, o_val, o_size = t_open[i], R_BUY, notional, size
                elif qty > QTY_EPS:
                    sq = qty
                    if price > 0:
                        sq, ok = _floor_step(want / price, step)
                        if not ok:
                            return i, nf
                    why = -1
                    if sq >= qty:
                        why = R_SELL_ALL
                    elif _dust(qty - sq, price, min_not, step):
                        why = R_SELL_DUST
                    elif not (sq * price < min_not or sq <= 0.0):
                        has_order, o_side, o_notional, o_qty = True, SELL, sq * price, sq
                        o_decided, o_why, o_val, o_size = t_open[i], R_SELL, sq * price, size
                    if why >= 0:
                        has_order, o_side, o_notional, o_qty = True, SELL, held_c, qty
                        o_decided, o_why, o_val, o_size = t_open[i], why, held_c, size

        out_f[0, i], out_f[1, i], out_f[2, i], out_f[3, i] = equity, cash, qty, abs(held)
        out_i[2, i], out_i[3, i], out_i[4, i] = halted, paused_until, risk_since
    return n, nf
