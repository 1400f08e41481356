"""Paper trading arithmetic: order size, fills at the next bar's open, positions, equity.

Pure functions, no I/O, no clock. Conventions (quote currency throughout):

- **Long-only spot.** BUY opens or adds to a long; SELL reduces or closes it and never
  opens a short. A SELL with no position is no order.
- **Size.** A BUY's ``Decision.size_multiplier`` is strength x the volatility-regime's
  multiplier x the risk manager's, a SELL's the decision's strength alone (see
  `conclave.pipeline.decision`); the order is worth ``equity x max_position_fraction x
  size_multiplier``: a full-strength, calm-market, risk-ok BUY puts one
  ``max_position_fraction`` of equity in. A BUY *spends* that notional, capped so the
  position stays within ``max_position_fraction`` of equity and the cash covers notional
  plus fee. A SELL *sells a quantity* (base units, at the decision bar's close), capped at
  the position: a sell-all is an order for the whole position, so it closes it whatever
  the next open.
- **Lot rules, every order alike.** Quantities are rounded down to ``qty_step``; no order
  under ``min_order_notional`` is sent or filled (checked at the decision bar's close and
  again at the fill price). A sale that would leave a remainder under the minimum or the
  step sells the whole position instead, so no dust is left. The one order allowed under
  the minimum is the sale of a whole position that is itself worth less (its price fell
  after the buy): otherwise it could never be sold.
- **Fill.** A decision made at bar t's close fills at bar t+1's OPEN, never at bar t's
  close: a BUY pays ``open x (1 + slippage)``, a SELL gets ``open x (1 - slippage)``; the fee
  is ``fill notional x fee_rate``.
- **P&L.** A position's ``avg_cost`` includes buy fees, so realised P&L of a sale is
  ``qty x price - fee - qty x avg_cost`` and unrealised is ``qty x (mark - avg_cost)``;
  equity is ``cash + sum(qty x mark)`` = starting balance + realised + unrealised.
"""

from __future__ import annotations

import math
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


@dataclass(frozen=True, slots=True)
class Order:
    """An order for the next bar's open.

    A BUY spends ``notional`` (quote; ``qty`` is 0 until the fill). A SELL sells ``qty``
    (base units; the whole position for a sell-all); ``notional`` is its value at the
    decision bar's close.
    """

    side: Side
    notional: float
    qty: float
    reason: str


def floor_step(qty: float, step: float) -> float:
    """``qty`` rounded down to a whole multiple of ``step``; float noise (a few ulps) is
    forgiven, so a quantity already on the step stays as it is."""
    if step <= 0.0:
        return qty
    ratio = qty / step
    n = math.floor(ratio)
    if n + 1 - ratio <= min(0.5, max(1e-9, abs(ratio) * 1e-15)):
        n += 1
    return n * step


def leaves_dust(remainder: float, price: float, min_order_notional: float, step: float) -> bool:
    """True when a position of ``remainder`` units left by a sale could not be sold on its
    own at ``price``: above 0 but under the quantity step or the minimum order."""
    return remainder > 0.0 and (remainder < step or remainder * price < min_order_notional)


def size_order(
    side: Side,
    *,
    equity: float,
    size_multiplier: float,
    max_position_fraction: float,
    min_order_notional: float,
    qty_step: float,
    position_qty: float,
    price: float,
) -> tuple[Order | None, str]:
    """The order for a decision at a bar closing at ``price``, and why (None with the reason
    when there is none). ``position_qty`` is the symbol's position at that close."""
    want = max(0.0, equity) * max_position_fraction * max(0.0, size_multiplier)
    held = position_qty * price
    if side == "BUY":
        room = max(0.0, equity * max_position_fraction - held)
        notional = min(want, room)
        if notional < min_order_notional or notional <= 0.0:
            why = "position at its limit" if room < want else "below the minimum order"
            return None, f"no order: {why} ({notional:.2f} < {min_order_notional})"
        why = f"buy {notional:.2f}: equity x {max_position_fraction} x {size_multiplier:.4f}"
        return Order("BUY", notional, 0.0, why), why
    if position_qty <= QTY_EPS:
        return None, "no order: long-only spot, no position to sell"
    qty = floor_step(want / price, qty_step) if price > 0 else position_qty
    if qty >= position_qty:
        why = f"sell all ({held:.2f}): the decision's size covers the position"
        return Order("SELL", held, position_qty, why), why
    if leaves_dust(position_qty - qty, price, min_order_notional, qty_step):
        why = f"sell all ({held:.2f}): the remainder would be under the minimum or the step"
        return Order("SELL", held, position_qty, why), why
    if qty * price < min_order_notional or qty <= 0.0:
        return None, (
            f"no order: below the minimum order ({qty * price:.2f} < {min_order_notional})"
        )
    why = f"sell {qty * price:.2f}: equity x {max_position_fraction} x {size_multiplier:.4f}"
    return Order("SELL", qty * price, qty, why), why


def sell_all(position_qty: float, price: float, reason: str) -> Order:
    """An order to sell the whole position (worth ``position_qty x price`` now)."""
    return Order("SELL", position_qty * price, position_qty, reason)


def fill_at_open(
    order: Order,
    bar: Bar,
    *,
    slippage: float,
    fee_rate: float,
    cash: float,
    position: Position,
    min_order_notional: float,
    qty_step: float,
) -> tuple[Fill | None, str]:
    """Fill ``order`` at ``bar``'s open (the bar AFTER the decision), or why not.

    A BUY is cut so that notional plus fee fits the cash, then to the step. A SELL is cut
    to the position, and sells it whole when the remainder would be dust (`leaves_dust`).
    An order under ``min_order_notional`` at the fill price is not filled, except the sale
    of a whole position worth less.
    """
    if order.side == "BUY":
        price = bar.open * (1.0 + slippage)
        spend = min(order.notional, max(0.0, cash) / (1.0 + fee_rate))
        qty = floor_step(spend / price, qty_step) if price > 0 else 0.0
        whole = False
    else:
        price = bar.open * (1.0 - slippage)
        qty = min(order.qty, position.qty)
        whole = qty >= position.qty or leaves_dust(
            position.qty - qty, price, min_order_notional, qty_step
        )
        if whole:
            qty = position.qty
    if qty <= QTY_EPS:
        return None, "nothing to trade"
    if qty * price < min_order_notional and not whole:
        return None, (
            f"under the minimum order at the fill price ({qty * price:.2f} < {min_order_notional})"
        )
    return Fill(order.side, qty, price, qty * price * fee_rate), ""


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
