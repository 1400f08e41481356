"""`simulate_compiled`: `account_loop.simulate` run by the numba kernel (`fast_kernel`).

The pure-Python `account_loop.simulate` stays the reference: the kernel takes the same
steps on plain numbers and tests/backtest/test_fast_loop.py holds the two equal (every
array and every fill, bit for bit) on seeded random terms, fees, slippage, sizes and
signals. What the kernel cannot reproduce exactly (see `fast_kernel`) makes this fall
back to the reference, so the answer is always the reference's.

Costs: numba and llvmlite add about 210 MB to an install; the first call in a fresh
environment compiles the kernel (a few seconds, then cached beside the module, or in
numba's user cache when that directory is read-only); later processes load it in well
under a second. numba is imported on the first call, never by importing this package.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from conclave.backtest.account_loop import AccountTrace, simulate
from conclave.backtest.result import Fill
from conclave.backtest.settings import BacktestSettings, Progress
from conclave.backtest.signals import PreDecision
from conclave.market.candles import Candles

_SELL_ALL = "sell all ({:.2f}): the decision's size covers the position"
_SELL_DUST = "sell all ({:.2f}): the remainder would be under the minimum or the step"
_FLATTEN = "sell all: halt_action flatten (halted)"


def _reason(code: int, value: float, size: float, fraction: float) -> str:
    """`paper.size_order`'s reason for an order of ``code`` (`fast_kernel.R_*`)."""
    if code == 0:
        return f"buy {value:.2f}: equity x {fraction} x {size:.4f}"
    if code == 1:
        return _SELL_ALL.format(value)
    if code == 2:
        return _SELL_DUST.format(value)
    if code == 3:
        return f"sell {value:.2f}: equity x {fraction} x {size:.4f}"
    return _FLATTEN


def kernel_terms(
    settings: BacktestSettings, bar_ms: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """The kernel's float and integer terms of ``settings`` (`fast_kernel.kernel`'s layout)."""
    cfg = settings.account
    fnum = np.array(
        [settings.fee_rate, settings.slippage, settings.starting_balance,
         cfg.max_position_fraction, cfg.min_order_notional, cfg.qty_step,
         *cfg.drawdown_limits, *cfg.daily_loss_limits, cfg.max_exposure,
         cfg.warn_multiplier, cfg.reduce_multiplier, cfg.hysteresis],
        dtype=np.float64,
    )  # fmt: skip
    inum = np.array(
        [bar_ms, cfg.stoploss_streak, cfg.stoploss_pause_bars, cfg.cooldown_bars,
         int(cfg.halt_action == "flatten"), cfg.halt_resume_s],
        dtype=np.int64,
    )  # fmt: skip
    return fnum, inum


def kernel_buffers(n: int) -> tuple[npt.NDArray[Any], ...]:
    """The kernel's outputs for ``n`` bars: per-bar floats and ints, fills' floats and ints."""
    floats, ints = np.float64, np.int64
    return (np.empty((6, n), dtype=floats), np.empty((5, n), dtype=ints),
            np.empty((6, n + 1), dtype=floats), np.empty((4, n + 1), dtype=ints))  # fmt: skip


def simulate_compiled(
    period: Candles, pre: PreDecision, settings: BacktestSettings, progress: Progress | None = None
) -> AccountTrace:
    """`account_loop.simulate`, compiled; the same `AccountTrace` bit for bit.

    ``progress`` hears the start and the end only (the loop takes milliseconds).
    """
    from conclave.backtest import fast_kernel as fk  # numba loads here, not at import

    cfg = settings.account
    n = len(period)
    if progress is not None:
        progress("account", 0, n)
    fnum, inum = kernel_terms(settings, period.timeframe.ms)
    out_f, out_i, fills_f, fills_i = kernel_buffers(n)

    def arr(x: npt.ArrayLike, dtype: type) -> npt.NDArray[Any]:
        # contiguous and writable (copied when read-only): one compiled signature for all
        return np.require(x, dtype=dtype, requirements=["C", "W"])

    done, nf = fk.kernel(
        arr(period.open, np.float64), arr(period.close, np.float64),
        arr(period.open_time, np.int64), arr(period.close_time, np.int64),
        arr(pre.action, np.int8), arr(pre.strength, np.float64),
        arr(pre.vol_mult, np.float64), fnum, inum, out_f, out_i, fills_f, fills_i,
    )  # fmt: skip
    if done < n:  # a case only the reference computes exactly (`fast_kernel` docstring)
        return simulate(period, pre, settings, progress)
    if progress is not None:
        progress("account", n, n)
    fraction = cfg.max_position_fraction
    fills = tuple(
        Fill(t, d, "BUY" if side == fk.BUY else "SELL", q, p, fee,
             None if side == fk.BUY else pnl, _reason(why, val, size, fraction))
        for q, p, fee, pnl, val, size, t, d, side, why in zip(
            *fills_f[:, :nf].tolist(), *fills_i[:, :nf].tolist(), strict=True
        )
    )  # fmt: skip
    levels = out_i[0].astype(np.int8)
    return AccountTrace(
        out_f[0], out_f[1], out_f[2], out_f[3], out_i[2].astype(bool), out_i[3].copy(),
        out_i[4].copy(), levels, levels < 3, out_f[5], out_i[1].astype(np.int8), fills,
    )  # fmt: skip
