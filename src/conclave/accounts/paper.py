"""Paper trading arithmetic: order size, fills at the next bar's open, positions, equity.

Pure functions, no I/O, no clock. Conventions (quote currency throughout):

- **Long-only spot.** BUY opens or adds to a long; SELL reduces or closes it and never
  opens a short. A SELL with no position is no order.
- **Size.** ``Decision.size_multiplier`` is already strength x the volatility-regime's
  multiplier x the risk manager's (see `conclave.pipeline.decision`), so the order's
  notional is ``equity x max_position_fraction x size_multiplier``: a full-strength,
  calm-market, risk-ok BUY puts one ``max_position_fraction`` of equity in. A BUY is capped
  so the position stays within ``max_position_fraction`` of equity and the cash covers
  notional plus fee; a SELL is capped at the position (and closes it whole when what would
  remain is under ``min_order_notional``). Orders under ``min_order_notional`` are not sent.
- **Fill.** A decision made at bar t's close fills at bar t+1's OPEN, never at bar t's
  close: a BUY pays ``open x (1 + slippage)``, a SELL gets ``open x (1 - slippage)``; the fee
  is ``fill notional x fee_rate``.
- **P&L.** A position's ``avg_cost`` includes buy fees, so realised P&L of a sale is
  ``qty x price - fee - qty x avg_cost`` and unrealised is ``qty x (mark - avg_cost)``;
  equity is ``cash + sum(qty x mark)`` = starting balance + realised + unrealised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Side = Literal["BUY", "SELL"]
#: Quantities below this are dust and treated as zero.
QTY_EPS = 1e-12


@dataclass(frozen=True, slots=True)
class Bar:
    """One closed candle: open time and (exclusive) close time in ms UTC, open and close."""

    open_ms: int
    close_ms: int
    open: float
    close: float


@dataclass(frozen=True, slots=True)
class Position:
    """A long position: quantity, average cost per unit (fees included), realised P&L."""

    qty: float = 0.0
    avg_cost: float = 0.0
    realised_pnl: float = 0.0

    def value(self, mark: float) -> float:
        """Market value at ``mark``."""
        return self.qty * mark

    def unrealised(self, mark: float) -> float:
        """Unrealised P&L at ``mark``."""
        return self.qty * (mark - self.avg_cost)


@dataclass(frozen=True, slots=True)
class Fill:
    """An executed order: side, quantity, price after slippage, fee, notional (qty x price)."""

    side: Side
    qty: float
    price: float
    fee: float

    @property
    def notional(self) -> float:
        """Quote value traded, before the fee."""
        return self.qty * self.price


def order_notional(
    side: Side,
    *,
    equity: float,
    size_multiplier: float,
    max_position_fraction: float,
    min_order_notional: float,
    position_value: float,
) -> tuple[float, str]:
    """The notional to order for a decision, and why (0.0 with the reason when none).

    ``position_value`` is the symbol's position at the decision bar's close.
    """
    want = max(0.0, equity) * max_position_fraction * max(0.0, size_multiplier)
    if side == "BUY":
        room = max(0.0, equity * max_position_fraction - position_value)
        notional = min(want, room)
        if notional < min_order_notional:
            why = "position at its limit" if room < want else "below the minimum order"
            return 0.0, f"no order: {why} ({notional:.2f} < {min_order_notional})"
        return (
            notional,
            f"buy {notional:.2f}: equity x {max_position_fraction} x {size_multiplier:.4f}",
        )
    if position_value <= 0.0:
        return 0.0, "no order: long-only spot, no position to sell"
    notional = min(want, position_value)
    if position_value - notional < min_order_notional:
        return position_value, f"sell all ({position_value:.2f}): remainder under the minimum"
    if notional < min_order_notional:
        return 0.0, f"no order: below the minimum order ({notional:.2f} < {min_order_notional})"
    return (
        notional,
        f"sell {notional:.2f}: equity x {max_position_fraction} x {size_multiplier:.4f}",
    )


def fill_at_open(
    side: Side,
    notional: float,
    bar: Bar,
    *,
    slippage: float,
    fee_rate: float,
    cash: float,
    position: Position,
) -> Fill | None:
    """Fill an order for ``notional`` at ``bar``'s open (the bar AFTER the decision).

    A BUY is cut so that notional plus fee fits the cash; a SELL is cut to the position
    (and sells it whole when asked for at least its value at this price). None when
    nothing can be traded.
    """
    if side == "BUY":
        price = bar.open * (1.0 + slippage)
        spend = min(notional, max(0.0, cash) / (1.0 + fee_rate))
        qty = spend / price if price > 0 else 0.0
    else:
        price = bar.open * (1.0 - slippage)
        qty = position.qty if notional >= position.qty * price else notional / price
        qty = min(qty, position.qty)
    if qty <= QTY_EPS:
        return None
    return Fill(side, qty, price, qty * price * fee_rate)


def apply_fill(position: Position, fill: Fill) -> tuple[Position, float, float]:
    """The position after ``fill``, the cash change and the realised P&L of this fill."""
    if fill.side == "BUY":
        cost = fill.notional + fill.fee
        qty = position.qty + fill.qty
        avg = (position.qty * position.avg_cost + cost) / qty
        return Position(qty, avg, position.realised_pnl), -cost, 0.0
    proceeds = fill.notional - fill.fee
    pnl = proceeds - fill.qty * position.avg_cost
    qty = position.qty - fill.qty
    if qty <= QTY_EPS:
        return Position(0.0, 0.0, position.realised_pnl + pnl), proceeds, pnl
    return Position(qty, position.avg_cost, position.realised_pnl + pnl), proceeds, pnl


def next_bar(bars: Sequence[Bar], decision_open_ms: int) -> Bar | None:
    """The first bar after the decision bar (opened at ``decision_open_ms``), if known."""
    for bar in bars:
        if bar.open_ms > decision_open_ms:
            return bar
    return None


def mark_to_market(cash: float, holdings: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Equity and gross exposure from cash and ``(qty, mark)`` pairs."""
    exposure = sum(abs(q * m) for q, m in holdings)
    return cash + sum(q * m for q, m in holdings), exposure
