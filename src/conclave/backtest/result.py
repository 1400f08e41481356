"""What a backtest produced: per-bar series, fills, gaps and the settings it ran with.

Every per-bar array has one value per closed bar of the history (``len(result)``), in bar
order. Times are ms UTC; money is in the quote currency. The engine
(`conclave.backtest.engine`) fills a `BacktestResult`; metrics, per-agent skill, the
exports and the report read it and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I8 = npt.NDArray[np.int8]
B = npt.NDArray[np.bool_]

#: Codes of ``BacktestResult.action``: index into `ACTIONS`.
ACTIONS: tuple[str, ...] = ("NONE", "HOLD", "BUY", "SELL", "BLOCKED")
NONE, HOLD, BUY, SELL, BLOCKED = range(5)
#: Codes of ``BacktestResult.risk_level``: index into `LEVELS`.
LEVELS: tuple[str, ...] = ("ok", "warn", "reduce", "halt")


@dataclass(frozen=True, slots=True, eq=False)
class AgentSeries:
    """One agent's answer at every bar, as the live step would record it.

    ``usable`` is false where the live step would not be ok (the window is shorter than
    the agent's ``min_bars``, the whole series failed: ``status``/``reason`` say why, or the
    agent had no data at that bar: its ``has_data`` column is 0 there, the live step
    ``no_data``); there ``score`` and ``confidence`` are 0 and the decision leaves the agent
    out of its sums and its quorum. ``status`` is the series' (for ``no_data``: the last
    bar's).
    """

    name: str
    score: F64
    confidence: F64
    usable: B
    status: str = "ok"
    reason: str = ""
    min_bars: int = 1
    seconds: float = 0.0
    columns: Mapping[str, F64] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Fill:
    """One executed order: filled at the open of the bar after the decision bar."""

    time_ms: int  # the fill bar's open
    decision_ms: int  # the decision bar's open
    side: Literal["BUY", "SELL"]
    qty: float
    price: float
    fee: float
    realised_pnl: float | None  # SELL only
    reason: str

    @property
    def notional(self) -> float:
        """Quote value traded, before the fee."""
        return self.qty * self.price

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "timeMs": self.time_ms,
            "decisionMs": self.decision_ms,
            "side": self.side,
            "qty": self.qty,
            "price": self.price,
            "notional": self.notional,
            "fee": self.fee,
            "realisedPnl": self.realised_pnl,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class Gap:
    """Bars missing from the history: from the last bar before to the first bar after."""

    after_open_ms: int
    before_open_ms: int
    missing_bars: int

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "afterOpenMs": self.after_open_ms,
            "beforeOpenMs": self.before_open_ms,
            "missingBars": self.missing_bars,
        }


@dataclass(frozen=True, slots=True, eq=False)
class BacktestResult:
    """The whole backtest (see the module docstring for units and shapes).

    Per bar ``i`` (decision at bar ``i``'s close; its order fills at bar ``i + 1``'s open):
    ``conviction``/``confidence`` of the decision (NaN where no decision was made),
    ``action`` (codes of `ACTIONS`), ``size_multiplier``, ``risk_level`` (codes of
    `LEVELS`), ``allowed`` (the risk manager's verdict), and the account at the bar's
    close: ``equity``, ``cash``, ``position_qty``, ``exposure`` (position value /
    equity). ``timings`` holds seconds per phase.
    """

    symbol: str
    timeframe: str
    source: str
    simulated: bool
    open_time: I64
    close_time: I64
    open: F64
    close: F64
    agents: Mapping[str, AgentSeries]
    conviction: F64
    confidence: F64
    action: I8
    size_multiplier: F64
    risk_level: I8
    allowed: B
    equity: F64
    cash: F64
    position_qty: F64
    exposure: F64
    fills: tuple[Fill, ...]
    gaps: tuple[Gap, ...]
    starting_balance: float
    fee_rate: float
    slippage: float
    settings: Mapping[str, Any] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)
    #: the account's `conclave.backtest.account_loop.AccountTrace` (halts, pauses: for parity)
    trace: Any = None

    def __len__(self) -> int:
        return int(self.open_time.shape[0])

    @property
    def fees_paid(self) -> float:
        """Sum of every fill's fee."""
        return float(sum(f.fee for f in self.fills))

    @property
    def missing_bars(self) -> int:
        """Bars missing inside the period (the gaps' total)."""
        return sum(g.missing_bars for g in self.gaps)
