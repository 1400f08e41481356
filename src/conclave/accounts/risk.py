"""An account's risk from its equity curve, its levels, halts with hysteresis, protections.

Pure functions, no I/O, no clock (times are bar times, ms UTC):

- `assess`: equity now, peak equity (the curve's maximum so far, never the starting
  balance), drawdown from that peak, loss today (against the equity at 00:00 UTC, i.e. the
  last point at or before the day's start, else the first point of the day), gross
  exposure, and the level (``ok``/``warn``/``reduce``/``halt``) by the account's limits.
- `transition`: an ``active`` account at level ``halt`` becomes ``halted``; a ``halted``
  one becomes ``active`` again only once drawdown AND loss today are back below their halt
  limits by the ``hysteresis`` band (or by hand, `AccountService.resume`). A ``paused``
  account (paused by hand) is left alone. Every change comes with its reason.
- `auto_resume`: a ``halted`` account holding no position resumes by itself once halted
  for ``halt_resume_s`` seconds (flat, its equity cannot move, so the recovery rule above
  would never fire); the caller re-baselines the risk window (the peak restarts there) as
  a manual resume does. Checked after `transition`, at the same bar.
- `after_trade`: freqtrade's protections on each closing trade: a losing trade starts a
  cooldown of ``cooldown_bars`` without new entries; ``stoploss_streak`` losses in a row
  pause new entries for ``stoploss_pause_bars`` bars; a winning trade resets the streak.
- `order_blocked`: why an order is refused. The halt and the protections block entries
  (BUYs) only, as freqtrade's protections do: a SELL reduces or closes a long and always
  goes through, so risk never traps a position. A pause by hand (``accounts pause``) is
  the operator's freeze and stops every order.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from conclave.accounts.config import AccountConfig
from conclave.timeframes import DAY_MS

LEVELS = ("ok", "warn", "reduce", "halt")
Status = Literal["active", "paused", "halted"]


@dataclass(frozen=True, slots=True)
class RiskSnapshot:
    """The account's risk at one bar; fractions in [0, 1], money in the quote currency."""

    equity: float
    peak_equity: float
    drawdown: float
    loss_today: float
    exposure: float
    level: str
    reason: str


def drawdown_and_loss(equity: float, peak: float, day_start: float | None) -> tuple[float, float]:
    """Drawdown from ``peak`` and loss since ``day_start`` equity, each clipped to [0, 1]
    (drawdown 1 when the peak is not above 0; no loss without a start-of-day equity)."""
    dd = min(1.0, max(0.0, 1.0 - equity / peak)) if peak > 0 else 1.0
    loss = min(1.0, max(0.0, 1.0 - equity / day_start)) if day_start else 0.0
    return dd, loss


def recovered(drawdown: float, loss_today: float, config: AccountConfig) -> bool:
    """True when both are back below their halt limits by the ``hysteresis`` band."""
    band = config.hysteresis
    return (
        drawdown < config.drawdown_limits[2] - band
        and loss_today < config.daily_loss_limits[2] - band
    )


def level_of(
    drawdown: float, loss_today: float, equity: float, exposure: float, config: AccountConfig
) -> int:
    """The risk level (0 ok, 1 warn, 2 reduce, 3 halt): the worse of drawdown's and loss
    today's by ``config``'s limits, and at least reduce when equity is not above 0 or gross
    ``exposure`` exceeds ``max_exposure`` x equity."""
    dd0, dd1, dd2 = config.drawdown_limits
    ls0, ls1, ls2 = config.daily_loss_limits
    level = max((drawdown >= dd0) + (drawdown >= dd1) + (drawdown >= dd2),
                (loss_today >= ls0) + (loss_today >= ls1) + (loss_today >= ls2))  # fmt: skip
    if equity <= 0 or exposure > config.max_exposure * equity:
        return max(level, 2)
    return level


def start_of_day(
    times: Sequence[int] | npt.NDArray[np.int64],
    equity: Sequence[float] | npt.NDArray[np.float64],
    t_ms: int,
) -> float | None:
    """Equity at 00:00 UTC of ``t_ms``'s day: last point at or before it, else the day's first
    point up to ``t_ms`` (None when there is neither). ``times`` ascend: a binary search."""
    day = (t_ms // DAY_MS) * DAY_MS
    i = bisect.bisect_right(times, day)
    if i > 0:
        return float(equity[i - 1])
    if i < len(times) and times[i] <= t_ms:
        return float(equity[i])
    return None


def assess(
    times: Sequence[int],
    equity: Sequence[float],
    *,
    exposure: float,
    config: AccountConfig,
    starting_balance: float,
) -> RiskSnapshot:
    """Risk at the last point of the curve (``times`` ascending; empty: a fresh account)."""
    if not equity:
        return RiskSnapshot(
            starting_balance, starting_balance, 0.0, 0.0, 0.0, "ok", "no equity history yet"
        )
    now, peak = equity[-1], max(equity)
    dd, loss = drawdown_and_loss(now, peak, start_of_day(times, equity, times[-1]))
    lv = level_of(dd, loss, now, exposure, config)
    over = now <= 0 or exposure > config.max_exposure * now
    bits = []
    if dd > 0:
        bits.append(f"drawdown {dd:.2%} from peak {peak:.2f}")
    if loss > 0:
        bits.append(f"loss today {loss:.2%}")
    if over:
        bits.append(f"exposure {exposure:.2f} above {config.max_exposure} x equity")
    return RiskSnapshot(
        now, peak, dd, loss, exposure, LEVELS[lv], "; ".join(bits) or "within limits"
    )


def transition(status: Status, risk: RiskSnapshot, config: AccountConfig) -> tuple[Status, str]:
    """The account's status after ``risk`` and why ("" when it does not change)."""
    if status == "active" and risk.level == "halt":
        return "halted", f"halt: {risk.reason}"
    if status == "halted" and recovered(risk.drawdown, risk.loss_today, config):
        return "active", (
            f"recovered past the hysteresis band ({config.hysteresis:.2%}): drawdown"
            f" {risk.drawdown:.2%}, loss today {risk.loss_today:.2%}"
        )
    return status, ""


def auto_resume(
    status: Status, halted_since_ms: int | None, t_ms: int, flat: bool, config: AccountConfig
) -> str:
    """Why a halted account resumes by itself at bar time ``t_ms`` ("" when it does not):
    it holds no position (``flat``) and has been halted since ``halted_since_ms`` for at
    least ``config.halt_resume_s`` seconds (``0``: never). Paused or active: never."""
    wait_ms = config.halt_resume_s * 1000
    if status != "halted" or not wait_ms or not flat or halted_since_ms is None:
        return ""
    if t_ms - halted_since_ms < wait_ms:
        return ""
    hours = (t_ms - halted_since_ms) / 3_600_000
    return (
        f"resume: flat, {hours:g}h after halt (halt_resume_s {config.halt_resume_s});"
        " the peak restarts here"
    )


@dataclass(frozen=True, slots=True)
class Protections:
    """Losing trades in a row, and until when (bar time, ms) new entries are blocked."""

    loss_streak: int = 0
    paused_until_ms: int | None = None
    cooldown_until_ms: int | None = None

    def paused(self, t_ms: int) -> str:
        """Why the stop-loss streak guard holds at ``t_ms`` ("" when it does not)."""
        if self.paused_until_ms is not None and t_ms < self.paused_until_ms:
            return f"stop-loss streak guard: paused until bar time {self.paused_until_ms}"
        return ""

    def blocks(self, side: str, t_ms: int) -> str:
        """Why an order of ``side`` at ``t_ms`` is blocked ("" when it is not): the streak
        guard and the cooldown block entries (BUY) only; a SELL is never blocked."""
        if side != "BUY":
            return ""
        why = self.paused(t_ms)
        if why:
            return f"{why} (entries only)"
        if self.cooldown_until_ms is not None and t_ms < self.cooldown_until_ms:
            return "cooldown after a losing trade: no new entry yet"
        return ""


def order_blocked(side: str, status: Status, protections: Protections, t_ms: int) -> str:
    """Why an order of ``side`` at ``t_ms`` is refused ("" when it is not). A halt, the
    streak guard and the cooldown refuse entries (BUY) only; a pause by hand (the
    operator's freeze) stops every order."""
    if status == "paused":
        return "account paused by hand: every order stopped"
    if side != "BUY":
        return ""
    if status == "halted":
        return "account halted: entries blocked, exits go through"
    return protections.blocks("BUY", t_ms)


def after_trade(
    state: Protections, pnl: float, t_ms: int, bar_ms: int, config: AccountConfig
) -> tuple[Protections, str]:
    """Protections after a closing trade with realised ``pnl`` at ``t_ms``; and what started."""
    if pnl >= 0:
        return Protections(0, state.paused_until_ms, state.cooldown_until_ms), ""
    streak = state.loss_streak + 1
    cooldown = t_ms + config.cooldown_bars * bar_ms
    if streak >= config.stoploss_streak:
        until = t_ms + config.stoploss_pause_bars * bar_ms
        why = (
            f"stop-loss streak guard: {streak} losing trades in a row, paused for"
            f" {config.stoploss_pause_bars} bars"
        )
        return Protections(0, until, cooldown), why
    why = f"cooldown: losing trade ({pnl:.2f}), no new entry for {config.cooldown_bars} bars"
    return Protections(streak, state.paused_until_ms, cooldown), why
