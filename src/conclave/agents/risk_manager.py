"""risk-manager: drawdown from peak equity and today's loss against limits; never directional.

Method (drawdown control as in Vince 1992, *The Mathematics of Money Management*, and
Carver 2015): for every bar, the account's equity curve up to that bar's close gives
``drawdown = 1 - equity / peak equity`` and ``loss today = 1 - equity / equity at 00:00 UTC``
(``AccountState.start_of_day_equity`` when given, for the last bar). Each is compared with
its ``warn``, ``reduce`` and ``halt`` limits; the worse level wins. Gross open exposure above
``max_exposure`` x equity is at least ``reduce``. Levels map to a size multiplier
(ok 1, warn ``warn_multiplier``, reduce ``reduce_multiplier``, halt 0) and ``allowed``
(false at halt). An account's own levels (``AccountState.risk``, from the account store)
replace the parameters' limits and multipliers; its ``blocked_reason`` (paused, halted,
streak guard) means ``halt``.

A run that names no account is assessed as a fresh account with no drawdown (the payload
says so); a named account whose state could not be read is not tradable (``allowed``
false, level ``halt``, and the reason says why). Score: always 0. Confidence: 100 when the
state was read (or the account is fresh), 0 otherwise.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import Field, model_validator

from conclave.agents.base import Agent
from conclave.agents.inputs import AccountState, AgentInput, Needs
from conclave.agents.outputs import SeriesOutput
from conclave.agents.params import AgentParams
from conclave.agents.scoring import fnum
from conclave.timeframes import DAY_MS

LEVELS = ("ok", "warn", "reduce", "halt")


class RiskManagerParams(AgentParams):
    drawdown_limits: tuple[float, float, float] = (0.05, 0.10, 0.20)
    daily_loss_limits: tuple[float, float, float] = (0.02, 0.03, 0.05)
    max_exposure: float = Field(3.0, gt=0.0)
    warn_multiplier: float = Field(0.75, ge=0.0, le=1.0)
    reduce_multiplier: float = Field(0.5, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> RiskManagerParams:
        for name in ("drawdown_limits", "daily_loss_limits"):
            w, r, h = getattr(self, name)
            if not 0 < w <= r <= h < 1:
                raise ValueError(f"{name} must satisfy 0 < warn <= reduce <= halt < 1")
        return self


def _level(x: np.ndarray[Any, Any], limits: tuple[float, float, float]) -> np.ndarray[Any, Any]:
    return np.searchsorted(np.asarray(limits), x, side="right")


class RiskManager(Agent):
    """Account drawdown protection; may veto (see module docstring)."""

    name: ClassVar[str] = "risk-manager"
    version: ClassVar[str] = "1.0.0"
    description: ClassVar[str] = "Drawdown and daily-loss limits with warn/reduce/halt; can veto"
    needs: ClassVar[Needs] = Needs(min_bars=1, lookback=1, account=True)
    Params: ClassVar[type[AgentParams]] = RiskManagerParams
    params: RiskManagerParams

    def compute(self, data: AgentInput) -> SeriesOutput:
        p = self.params
        n = len(data.candles)
        acct = data.account or AccountState.fresh()
        zeros = np.zeros(n)
        if not acct.readable:
            evidence = {
                "allowed": False,
                "size_multiplier": 0.0,
                "level": "halt",
                "drawdown": None,
                "loss_today": None,
                "account": acct.account_id,
                "reason": f"account state unreadable: {acct.error or 'unknown error'}",
            }
            return SeriesOutput(zeros, np.full(n, 100.0), evidence)
        if acct.account_id is None or acct.equity.shape[0] == 0:
            fresh = acct.account_id is None
            evidence = {
                "allowed": True,
                "size_multiplier": 1.0,
                "level": "ok",
                "drawdown": 0.0,
                "loss_today": 0.0,
                "account": acct.account_id,
                "reason": "no account named: assessed as a fresh account with no drawdown"
                if fresh
                else "no equity history yet: no drawdown",
            }
            return SeriesOutput(zeros, np.full(n, 100.0), evidence)

        limits = acct.risk or p  # the account's own levels when the reader gave them
        blocked = acct.risk.blocked_reason if acct.risk is not None else ""
        t_eq, eq = acct.equity_time_ms, acct.equity
        at = np.searchsorted(t_eq, data.candles.close_time, side="right") - 1
        peak = np.maximum.accumulate(eq)
        known = at >= 0
        j = np.maximum(at, 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            dd = np.where(known & (peak[j] > 0), 1.0 - eq[j] / peak[j], 0.0)
            day_start = (t_eq[j] // DAY_MS) * DAY_MS
            k = np.searchsorted(t_eq, day_start, side="right") - 1
            sod = np.where(k >= 0, eq[np.maximum(k, 0)], eq[0])
            if acct.start_of_day_equity is not None:
                sod[-1] = acct.start_of_day_equity
            loss = np.where(known & (sod > 0), 1.0 - eq[j] / sod, 0.0)
        dd = np.clip(dd, 0.0, 1.0)
        loss = np.clip(loss, 0.0, 1.0)
        level = np.maximum(
            _level(dd, limits.drawdown_limits), _level(loss, limits.daily_loss_limits)
        )
        equity_now = eq[j[-1]]
        over = equity_now <= 0 or acct.open_exposure > limits.max_exposure * equity_now
        if over:
            level[-1] = max(int(level[-1]), 2)
        if blocked:
            level[-1] = 3
        conf = np.where(known, 100.0, 0.0)

        lv = int(level[-1])
        mult = (1.0, limits.warn_multiplier, limits.reduce_multiplier, 0.0)[lv]
        reasons = []
        if dd[-1] > 0:
            reasons.append(f"drawdown {dd[-1]:.2%} from peak")
        if loss[-1] > 0:
            reasons.append(f"loss today {loss[-1]:.2%}")
        if over:
            reasons.append(f"open exposure {acct.open_exposure:.2f} above limit")
        if blocked:
            reasons.append(blocked)
        evidence = {
            "allowed": lv < 3,
            "size_multiplier": float(mult),
            "level": LEVELS[lv],
            "drawdown": fnum(dd[-1]),
            "loss_today": fnum(loss[-1]),
            "equity": fnum(equity_now),
            "peak_equity": fnum(peak[j[-1]]),
            "open_exposure": fnum(acct.open_exposure),
            "account": acct.account_id,
            "reason": "; ".join(reasons) if reasons else "within limits",
        }
        return SeriesOutput(zeros, conf, evidence)
