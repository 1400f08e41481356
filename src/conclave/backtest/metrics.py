"""Performance figures of a backtest and of buy-and-hold over the same bars.

Conventions (quote currency, fractions rather than percent):

- **Returns.** Per-bar simple returns of the equity at each bar's close, the first one
  against ``starting_balance``. Sharpe and Sortino annualise them with ``bars per year =
  365.25 days / bar length`` (crypto trades 24/7), risk-free rate 0; Sharpe uses the
  population standard deviation, Sortino the downside deviation
  ``sqrt(mean(min(r, 0)^2))`` over all bars. Both are None when undefined (fewer than
  two bars, or a deviation of (numerically) zero).
- **CAGR.** Over ``open_time[0]`` to ``close_time[-1]`` in years of 365.25 days; None when
  that is under one day.
- **Drawdown.** ``1 - equity / running peak``, the peak starting at ``starting_balance``.
- **Buy-and-hold.** Every coin bought at the first bar's open at ``open x (1 + slippage)``
  with the fee ``notional x fee_rate`` paid from the starting balance (as
  `conclave.accounts.paper.fill_at_open` does), then marked at each close; no exit fee.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from conclave.accounts.paper import QTY_EPS
from conclave.backtest.result import F64, BacktestResult
from conclave.timeframes import DAY_MS, Timeframe

YEAR_MS = 365.25 * DAY_MS
#: A per-bar deviation at or under this counts as zero (float noise of a constant curve).
ZERO_DEVIATION = 1e-12


def _camel(name: str) -> str:
    return re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "to_json"):
        return value.to_json()
    return value


def _camel_json(obj: Any) -> dict[str, Any]:
    """A dataclass's fields with camelCase keys, NaN/inf as None, nested ``to_json``."""
    return {_camel(f.name): _jsonable(getattr(obj, f.name)) for f in fields(obj)}


@dataclass(frozen=True, slots=True)
class Headline:
    """The headline figures of one equity curve (fractions; Sharpe/Sortino annualised)."""

    total_return: float
    cagr: float | None
    sharpe: float | None
    sortino: float | None
    max_drawdown: float
    final_equity: float

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form with camelCase keys."""
        return _camel_json(self)


@dataclass(frozen=True, slots=True)
class Performance:
    """The strategy's figures, buy-and-hold's, and ``excess`` (total return minus
    buy-and-hold's). ``time_in_market`` is the fraction of bars ending with a position,
    ``mean_exposure`` the mean of position value / equity; ``round_trips`` counts SELL
    fills that closed the position; ``win_rate`` is over all SELL fills."""

    total_return: float
    cagr: float | None
    sharpe: float | None
    sortino: float | None
    max_drawdown: float
    win_rate: float | None
    trades: int
    buys: int
    sells: int
    round_trips: int
    time_in_market: float
    mean_exposure: float
    fees_paid: float
    starting_balance: float
    final_equity: float
    bars: int
    years: float
    bars_per_year: float
    buy_and_hold: Headline
    excess: float

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form with camelCase keys (``buyAndHold`` nested)."""
        return _camel_json(self)


def bars_per_year(timeframe: str) -> float:
    """Bars in a year of 365.25 days for ``timeframe`` (a month counts 30 days)."""
    return YEAR_MS / Timeframe.parse(timeframe).ms


def period_years(result: BacktestResult) -> float:
    """Years (365.25 days) from the first bar's open to the last bar's close; 0 when empty."""
    if len(result) == 0:
        return 0.0
    return years_between(int(result.open_time[0]), int(result.close_time[-1]))


def years_between(first_open_ms: int, last_close_ms: int) -> float:
    """Years (365.25 days) from ``first_open_ms`` to ``last_close_ms`` (ms UTC)."""
    return float(last_close_ms - first_open_ms) / YEAR_MS


def bar_returns(equity: F64, starting_balance: float) -> F64:
    """Per-bar simple returns, the first against ``starting_balance``."""
    prev = np.empty_like(equity)
    if equity.size:
        prev[0] = starting_balance
        prev[1:] = equity[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        out: F64 = equity / prev - 1.0
    return out


def drawdown(equity: F64, starting_balance: float) -> F64:
    """``1 - equity / running peak`` per bar (a fraction), the peak starting at
    ``starting_balance``."""
    peak = np.maximum.accumulate(np.maximum(equity, starting_balance))
    with np.errstate(divide="ignore", invalid="ignore"):
        dd: F64 = np.where(peak > 0, 1.0 - equity / peak, 0.0)
    return dd


def buy_and_hold_equity(result: BacktestResult) -> F64:
    """Buy-and-hold equity at each close: all of the starting balance in at the first
    open (slippage and fee as the strategy pays them), no cash left."""
    if len(result) == 0:
        return np.empty(0, dtype=np.float64)
    return buy_and_hold_curve(
        float(result.open[0]), result.close, result.starting_balance, result.fee_rate,
        result.slippage,
    )  # fmt: skip


def buy_and_hold_curve(
    first_open: float, close: F64, starting_balance: float, fee_rate: float, slippage: float
) -> F64:
    """`buy_and_hold_equity` of bars whose first open is ``first_open`` and closes ``close``."""
    price = first_open * (1.0 + slippage)
    qty = starting_balance / (price * (1.0 + fee_rate)) if price > 0 else 0.0
    out: F64 = qty * np.asarray(close, dtype=np.float64)
    return out


def _sharpe_sortino(r: F64, per_year: float) -> tuple[float | None, float | None]:
    r = r[np.isfinite(r)]
    if r.size < 2:
        return None, None
    mean = float(r.mean())
    std = float(r.std())
    down = float(np.sqrt(np.mean(np.minimum(r, 0.0) ** 2)))
    scale = math.sqrt(per_year)
    sharpe = mean / std * scale if std > ZERO_DEVIATION else None
    sortino = mean / down * scale if down > ZERO_DEVIATION else None
    return sharpe, sortino


def cagr(total_return: float, years: float) -> float | None:
    """The yearly growth rate of ``total_return`` over ``years``; None under one day."""
    if years * 365.25 < 1.0:
        return None
    growth = 1.0 + total_return
    return -1.0 if growth <= 0 else growth ** (1.0 / years) - 1.0


def headline(equity: F64, starting_balance: float, *, years: float, per_year: float) -> Headline:
    """Total return, CAGR, Sharpe, Sortino, max drawdown and final equity of ``equity``."""
    final = float(equity[-1]) if equity.size else float(starting_balance)
    total = final / starting_balance - 1.0 if starting_balance else 0.0
    sharpe, sortino = _sharpe_sortino(bar_returns(equity, starting_balance), per_year)
    mdd = float(np.max(drawdown(equity, starting_balance))) if equity.size else 0.0
    return Headline(
        total_return=total,
        cagr=cagr(total, years),
        sharpe=sharpe,
        sortino=sortino,
        max_drawdown=max(0.0, mdd),
        final_equity=final,
    )


def _closing_sells(result: BacktestResult) -> int:
    """SELL fills after which no position is left (the position at the fill bar's close)."""
    sells = [f.time_ms for f in result.fills if f.side == "SELL"]
    n = len(result)
    if not sells or n == 0:
        return 0
    t = np.asarray(sells, dtype=np.int64)
    idx = np.searchsorted(result.open_time, t)
    ok = idx < n
    ok[ok] = result.open_time[idx[ok]] == t[ok]
    closed = np.zeros(t.size, dtype=np.bool_)
    closed[ok] = np.abs(result.position_qty[idx[ok]]) <= QTY_EPS
    return int(closed.sum())


def performance(result: BacktestResult) -> Performance:
    """The strategy's performance and buy-and-hold's over the same bars (see the module
    docstring for the conventions)."""
    n = len(result)
    years = period_years(result)
    per_year = bars_per_year(result.timeframe)
    equity = np.asarray(result.equity, dtype=np.float64)
    strat = headline(equity, result.starting_balance, years=years, per_year=per_year)
    bh = headline(
        buy_and_hold_equity(result), result.starting_balance, years=years, per_year=per_year
    )
    sells = [f for f in result.fills if f.side == "SELL"]
    wins = sum(1 for f in sells if f.realised_pnl is not None and f.realised_pnl > 0)
    exposure = np.asarray(result.exposure, dtype=np.float64)
    finite = exposure[np.isfinite(exposure)]
    return Performance(
        total_return=strat.total_return,
        cagr=strat.cagr,
        sharpe=strat.sharpe,
        sortino=strat.sortino,
        max_drawdown=strat.max_drawdown,
        win_rate=wins / len(sells) if sells else None,
        trades=len(result.fills),
        buys=len(result.fills) - len(sells),
        sells=len(sells),
        round_trips=_closing_sells(result),
        time_in_market=float(np.mean(np.abs(result.position_qty) > QTY_EPS)) if n else 0.0,
        mean_exposure=float(finite.mean()) if finite.size else 0.0,
        fees_paid=result.fees_paid,
        starting_balance=float(result.starting_balance),
        final_equity=strat.final_equity,
        bars=n,
        years=years,
        bars_per_year=per_year,
        buy_and_hold=bh,
        excess=strat.total_return - bh.total_return,
    )
