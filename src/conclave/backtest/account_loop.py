"""The account, bar by bar: the only path-dependent part of the backtest.

`simulate` runs in the order the live scheduler and
`conclave.accounts.service.AccountService.process_run` use: the risk manager's verdict from
the equity recorded up to the previous bar (as the live account reader gives it), then the
pending order filled at this bar's OPEN (`conclave.accounts.paper`), equity recorded at this
bar's close, the account's halt / resume transition (`conclave.accounts.risk`; then the
automatic resume of a halted, flat account after ``halt_resume_s``, which restarts the
equity curve there as the live ``risk_since_ms`` does), and the new order from this bar's
decision. As live, the risk rules (the verdict's veto and multiplier,
the halt, cooldown and stop-loss streak guard) block or shrink entries only: a SELL is sized
by the decision's strength and always placed, and a halted account whose ``halt_action`` is
``flatten`` sells its whole position (whatever the decision). A bar's order fills at the
next bar that exists, as in live trading (gaps are never filled).
`account_state_at` gives what the live account reader would at any bar of the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from conclave.accounts import paper
from conclave.accounts.config import AccountConfig
from conclave.accounts.paper import Bar, Position
from conclave.accounts.risk import (
    Protections,
    after_trade,
    auto_resume,
    drawdown_and_loss,
    level_of,
    order_blocked,
    recovered,
    start_of_day,
)
from conclave.agents import AccountState
from conclave.backtest.result import BUY, F64, HOLD, I64, SELL, B, BacktestResult, Fill
from conclave.backtest.settings import BacktestSettings, Progress
from conclave.backtest.signals import PreDecision
from conclave.market.candles import Candles
from conclave.timeframes import DAY_MS

#: How many loop iterations between two progress calls.
PROGRESS_EVERY = 5_000
_STATUS_ACTIVE, _STATUS_HALTED = 0, 1


class EquityCurve:
    """Equity recorded at each bar's close; peak and start-of-day answered incrementally.

    The peak is kept as points arrive, and `conclave.accounts.risk.start_of_day` is asked
    once per day (points only ever arrive later than every query so far).
    """

    __slots__ = ("_day", "_sod", "peak", "times", "values")

    def __init__(self) -> None:
        self.times: list[int] = []
        self.values: list[float] = []
        self.peak = -math.inf
        self._day = -1
        self._sod: float | None = None

    def append(self, t_ms: int, equity: float) -> None:
        self.times.append(t_ms)
        self.values.append(equity)
        if equity > self.peak:
            self.peak = equity
        if t_ms <= self._day:  # a point exactly at 00:00 is that day's start
            self._day = -1

    def start_of_day(self, t_ms: int) -> float | None:
        """Equity at 00:00 UTC of ``t_ms``'s day: last point at or before it, else the day's
        first point up to ``t_ms``."""
        day = t_ms - t_ms % DAY_MS
        if day == self._day and self._sod is not None:
            return self._sod
        sod = start_of_day(self.times, self.values, t_ms)
        self._day, self._sod = day, sod
        return sod


def agent_verdict(
    curve: EquityCurve,
    as_of_ms: int,
    exposure: float,
    cfg: AccountConfig,
    blocked: bool,
) -> int:
    """The risk-manager agent's level (0 ok .. 3 halt) for a run at ``as_of_ms``.

    The agent's own arithmetic (`conclave.agents.risk_manager`) on the state the live
    account reader gives it: the equity recorded so far (all at or before ``as_of_ms``), the
    start-of-day equity of ``as_of_ms``'s day, the open exposure at the last marks.
    """
    if not curve.values:
        return 3 if blocked else 0
    eq = curve.values[-1]
    peak = curve.peak
    dd = 1.0 - eq / peak if peak > 0 else 0.0
    dd = min(max(dd, 0.0), 1.0)
    sod = curve.start_of_day(as_of_ms)
    loss = 1.0 - eq / sod if sod is not None and sod > 0 else 0.0
    loss = min(max(loss, 0.0), 1.0)
    return 3 if blocked else level_of(dd, loss, eq, exposure, cfg)


def account_risk(
    curve: EquityCurve, exposure: float, cfg: AccountConfig
) -> tuple[float, float, int, float | None]:
    """`conclave.accounts.risk.assess` at the curve's last point: drawdown, loss today,
    level, and the start-of-day equity it used."""
    now = curve.values[-1]
    sod = curve.start_of_day(curve.times[-1])
    dd, loss = drawdown_and_loss(now, curve.peak, sod)
    return dd, loss, level_of(dd, loss, now, exposure, cfg), sod


@dataclass(frozen=True, slots=True, eq=False)
class AccountTrace:
    """The account's state after each bar of the period (what the next run's reader sees)."""

    equity: F64
    cash: F64
    qty: F64
    exposure_abs: F64
    halted: B
    paused_until_ms: I64  # -1: none
    risk_since_ms: I64  # where the risk window restarts (automatic resume); -1: the start
    risk_level: npt.NDArray[np.int8]
    allowed: B
    size_multiplier: F64
    action: npt.NDArray[np.int8]
    fills: tuple[Fill, ...]


def simulate(
    period: Candles, pre: PreDecision, settings: BacktestSettings, progress: Progress | None = None
) -> AccountTrace:
    """Run the account over ``period`` (``pre`` cut to it): verdict, fill, record, order.

    The account's risk uses `conclave.accounts.risk`'s own functions; the risk manager's
    level is reused from the account's when both read the same start of day (see below).
    tests/backtest/test_engine.py replays the result through the real `AccountService` and
    the risk-manager agent bar by bar.
    """
    cfg = settings.account
    fee_rate, slip = settings.fee_rate, settings.slippage
    bar_ms = period.timeframe.ms
    n = len(period)
    opens = period.open.tolist()
    closes = period.close.tolist()
    t_open = period.open_time.tolist()
    t_close = period.close_time.tolist()
    act = pre.action.tolist()
    strength = pre.strength.tolist()
    volm = pre.vol_mult.tolist()

    equity_out: list[float] = []
    cash_out: list[float] = []
    qty_out: list[float] = []
    expo_out: list[float] = []
    halted_out: list[bool] = []
    paused_out: list[int] = []
    since_out: list[int] = []
    level_out: list[int] = []
    size_out: list[float] = []
    action_out: list[int] = []
    fills: list[Fill] = []

    curve = EquityCurve()
    append_point = curve.append
    cash = settings.starting_balance
    pos = Position()
    qty = 0.0
    mark = 0.0  # the position's last mark (price)
    status = _STATUS_ACTIVE
    halted_at, risk_since = -1, -1
    prot = Protections()
    paused_until = -1
    pending: tuple[paper.Order, int] | None = None  # the order and its decision bar's open
    flatten = cfg.halt_action == "flatten"
    lots = {"min_order_notional": cfg.min_order_notional, "qty_step": cfg.qty_step}
    multipliers = (1.0, cfg.warn_multiplier, cfg.reduce_multiplier, 0.0)

    # the risk manager's level at the next run equals the account's at this close when both
    # read the same start-of-day equity and the peak and that equity are positive (the same
    # formula; `agent_verdict` otherwise): one assessment per bar instead of two
    reuse_day, reuse_level = -1, 0
    sod_day, sod = -1, 0.0
    peak = -math.inf
    for i in range(n):
        # 1. the run at bar i: the risk manager on the state recorded so far
        as_of = t_close[i]
        day = as_of - as_of % DAY_MS
        blocked = status != _STATUS_ACTIVE or as_of < paused_until
        if day == reuse_day:
            lv = 3 if blocked else reuse_level
        else:
            lv = agent_verdict(curve, as_of, abs(qty * mark), cfg, blocked)
        a = act[i]
        size = 0.0
        if a == SELL:  # an exit: sized by the decision alone, never vetoed
            size = strength[i]
        elif a == BUY:
            if lv == 3:
                a = HOLD
            else:
                size = strength[i] * volm[i] * multipliers[lv]
        level_out.append(lv)
        action_out.append(a)
        size_out.append(size)

        # 2. settle the order of the previous decision at this bar's open
        if pending is not None:
            o, decided = pending
            pending = None
            fbar = Bar(t_open[i], as_of, opens[i], closes[i])
            fill = paper.fill_at_open(o, fbar, slippage=slip, fee_rate=fee_rate, cash=cash,
                                      position=pos, **lots)[0]  # fmt: skip
            if fill is not None:
                pos, delta, pnl = paper.apply_fill(pos, fill)
                qty = pos.qty
                cash += delta
                mark = opens[i]
                pnl_or_none = pnl if o.side == "SELL" else None
                fills.append(Fill(t_open[i], decided, o.side, fill.qty, fill.price, fill.fee,
                                  pnl_or_none, o.reason))  # fmt: skip
                if o.side == "SELL":
                    prot = after_trade(prot, pnl, t_open[i], bar_ms, cfg)[0]
                    paused_until = -1 if prot.paused_until_ms is None else prot.paused_until_ms

        # 3. record equity at this bar's close; halt or resume (`account_risk`, inline)
        if qty > 0:
            mark = closes[i]
        held = qty * mark
        equity = cash + held
        append_point(as_of, equity)
        if equity > peak:
            peak = equity
        if day != sod_day or as_of == day:  # a point at exactly 00:00 starts its day
            got = curve.start_of_day(as_of)
            sod_day, sod = day, (got if got is not None else 0.0)
        dd, loss = drawdown_and_loss(equity, peak, sod)
        level = level_of(dd, loss, equity, abs(held), cfg)
        if status == _STATUS_ACTIVE:
            if level == 3:
                status, halted_at = _STATUS_HALTED, as_of
        elif recovered(dd, loss, cfg):
            status = _STATUS_ACTIVE
        elif auto_resume("halted", halted_at, as_of, qty <= paper.QTY_EPS, cfg):
            # re-baselined as live (`accounts.ledger.record`): the curve restarts here
            status, risk_since = _STATUS_ACTIVE, as_of
            curve = EquityCurve()
            append_point = curve.append
            append_point(as_of, equity)
            peak, sod_day, sod = equity, day, equity
            dd, loss = drawdown_and_loss(equity, peak, sod)
            level = level_of(dd, loss, equity, abs(held), cfg)
        if peak > 0 and sod > 0:
            reuse_day, reuse_level = day, level
        else:
            reuse_day = -1

        # 4. this bar's decision becomes an order (filled at the next bar's open); the halt
        # and the protections refuse entries only (`accounts.ledger.decide`)
        halted = status == _STATUS_HALTED
        if halted and flatten and qty > paper.QTY_EPS:
            why = "sell all: halt_action flatten (halted)"
            pending = (paper.sell_all(qty, closes[i], why), t_open[i])
        elif size > 0:  # a BUY or a SELL
            side: paper.Side = "BUY" if a == BUY else "SELL"
            if not order_blocked(side, "halted" if halted else "active", prot, as_of):
                order = paper.size_order(
                    side, equity=equity, size_multiplier=size,
                    max_position_fraction=cfg.max_position_fraction,
                    position_qty=qty, price=closes[i], **lots,
                )[0]  # fmt: skip
                if order is not None:
                    pending = (order, t_open[i])

        equity_out.append(equity)
        cash_out.append(cash)
        qty_out.append(qty)
        expo_out.append(abs(held))
        halted_out.append(status == _STATUS_HALTED)
        paused_out.append(paused_until)
        since_out.append(risk_since)
        if progress is not None and (i + 1) % PROGRESS_EVERY == 0:
            progress("account", i + 1, n)
    if progress is not None:
        progress("account", n, n)
    levels = np.asarray(level_out, dtype=np.int8)
    return AccountTrace(
        np.asarray(equity_out), np.asarray(cash_out), np.asarray(qty_out), np.asarray(expo_out),
        np.asarray(halted_out, dtype=bool), np.asarray(paused_out, dtype=np.int64),
        np.asarray(since_out, dtype=np.int64), levels,
        levels < 3, np.asarray(size_out), np.asarray(action_out, dtype=np.int8), tuple(fills),
    )  # fmt: skip


def account_state_at(
    result: BacktestResult, i: int, account_id: str, cfg: AccountConfig
) -> AccountState:
    """What the live account reader would give a run at bar ``i`` of ``result``'s period.

    The equity recorded at the closes of bars before ``i`` (from the last automatic
    resume's restart on, as ``risk_since_ms`` cuts it live), the open exposure at their last
    marks, the start-of-day equity of bar ``i``'s close (`accounts.risk.start_of_day`),
    and the account's levels with the blocking reason (halted, or paused by the
    stop-loss streak guard).
    """
    trace = result.trace
    if trace is None:
        raise ValueError("the result carries no account trace")
    as_of = int(result.close_time[i])
    first = 0
    if i > 0 and trace.risk_since_ms[i - 1] >= 0:
        first = int(np.searchsorted(result.close_time[:i], trace.risk_since_ms[i - 1]))
    times = result.close_time[first:i]
    equity = trace.equity[first:i]
    blocked = ""
    if i > 0 and trace.halted[i - 1]:
        blocked = "account halted"
    elif i > 0 and trace.paused_until_ms[i - 1] > as_of:
        blocked = "stop-loss streak guard"
    return AccountState(
        account_id=account_id,
        equity_time_ms=times,
        equity=equity,
        open_exposure=float(trace.exposure_abs[i - 1]) if i > 0 else 0.0,
        start_of_day_equity=start_of_day(times, equity, as_of) if len(times) else None,
        risk=cfg.agent_risk(blocked),
    )
