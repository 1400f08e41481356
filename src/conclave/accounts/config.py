"""Per-account terms: sizing limits, risk levels and protections; frozen, unknown keys refused.

Defaults follow the risk-manager agent's (`RiskManagerParams`) for the levels and
freqtrade's protections for the floor: ``MaxDrawdown`` (the drawdown halt level),
``StoplossGuard`` (``stoploss_streak`` losing trades in a row pause new entries for
``stoploss_pause_bars`` bars) and ``CooldownPeriod`` (``cooldown_bars`` bars without a new
entry after a losing trade). As in freqtrade, every protection, the halt, the ``reduce``
level and the risk manager's veto block or shrink only orders that add exposure (BUYs): a
SELL, which reduces or closes a long, always goes through. ``halt_action`` says what a halt
does to an open position: ``block_entries`` (keep it, exits still go through) or
``flatten`` (close it whole at the next bar's open, on every run while halted, a run
without a risk verdict included: closing needs no verdict).

``halt_resume_s`` (seconds, default 86,400: one day, the daily-loss window) ends a halt
that would otherwise never end: once an account has been halted that long and holds no
position (no exposure), its equity can no longer move, so it resumes by itself at the next
recorded bar, with the risk window re-baselined as a manual resume does (the peak restarts
at that bar's equity). An account still holding a position stays halted until drawdown
and loss today recover past the hysteresis band or it is resumed by hand; a pause by hand
is never resumed automatically. ``0`` disables the automatic resume.

Orders follow an exchange's lot rules: quantities are whole multiples of ``qty_step`` (base
units; 1e-8 is Binance's finest BTC step) and no order is under ``min_order_notional``
(quote), exits included; a sale that would leave less than either is a sale of the whole
position.

``markets`` (optional, at most `MAX_MARKETS`) are the account's default markets, each a
``{"symbol", "timeframe"}``: ``POST /pipeline/run`` with only the account's id runs them
(with the account's scheduler jobs; `conclave.services.account_runs`). They are kept in the
account's JSON config, so accounts created before them need no migration; an account
without markets stores and shows its config exactly as before (no ``markets`` key).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from conclave.agents import AccountRisk
from conclave.settings import SYMBOL_PATTERN
from conclave.timeframes import checked_timeframe

HaltAction = Literal["block_entries", "flatten"]
#: Most default markets an account may have (and most markets one request runs).
MAX_MARKETS = 20


class Market(BaseModel):
    """One market an account trades by default: a symbol and a timeframe."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    symbol: str = Field(max_length=20, pattern=SYMBOL_PATTERN.pattern)
    timeframe: str = Field(max_length=8)

    @field_validator("timeframe")
    @classmethod
    def _known_timeframe(cls, value: str) -> str:
        return checked_timeframe(value)


class AccountConfig(BaseModel):
    """Sizing limits and risk settings of one paper account (fractions of equity)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_position_fraction: float = Field(0.25, gt=0.0, le=1.0)
    min_order_notional: float = Field(10.0, ge=0.0)
    qty_step: float = Field(1e-8, gt=0.0, allow_inf_nan=False)
    drawdown_limits: tuple[float, float, float] = (0.05, 0.10, 0.20)
    daily_loss_limits: tuple[float, float, float] = (0.02, 0.03, 0.05)
    max_exposure: float = Field(3.0, gt=0.0)
    warn_multiplier: float = Field(0.75, ge=0.0, le=1.0)
    reduce_multiplier: float = Field(0.5, ge=0.0, le=1.0)
    hysteresis: float = Field(0.02, ge=0.0, lt=1.0)
    stoploss_streak: int = Field(3, ge=1, le=100)
    stoploss_pause_bars: int = Field(12, ge=0, le=10_000)
    cooldown_bars: int = Field(2, ge=0, le=10_000)
    halt_action: HaltAction = "block_entries"
    halt_resume_s: int = Field(86_400, ge=0, le=366 * 86_400)
    markets: tuple[Market, ...] = Field((), max_length=MAX_MARKETS)

    @model_validator(mode="after")
    def _ordered(self) -> AccountConfig:
        for name in ("drawdown_limits", "daily_loss_limits"):
            w, r, h = getattr(self, name)
            if not 0 < w <= r <= h < 1:
                raise ValueError(f"{name} must satisfy 0 < warn <= reduce <= halt < 1")
        return self

    @field_validator("markets")
    @classmethod
    def _distinct(cls, value: tuple[Market, ...]) -> tuple[Market, ...]:
        if len(set(value)) != len(value):
            raise ValueError("each market may be listed once")
        return value

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form (tuples as lists); ``markets`` only when there are some."""
        out = self.model_dump(mode="json")
        if not self.markets:
            del out["markets"]  # the stored form of an account without markets is unchanged
        return out

    def agent_risk(self, blocked_reason: str = "") -> AccountRisk:
        """The levels the risk-manager agent applies to this account."""
        return AccountRisk(
            drawdown_limits=self.drawdown_limits,
            daily_loss_limits=self.daily_loss_limits,
            max_exposure=self.max_exposure,
            warn_multiplier=self.warn_multiplier,
            reduce_multiplier=self.reduce_multiplier,
            blocked_reason=blocked_reason,
        )
