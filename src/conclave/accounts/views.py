"""The JSON forms of accounts, positions, orders and risk events (camelCase, plain types)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from conclave.accounts.risk import RiskSnapshot

Row = Mapping[str, Any]


def position_view(row: Row) -> dict[str, Any]:
    """One position marked at its last price."""
    qty, mark, cost = float(row["qty"]), float(row["last_price"]), float(row["avg_cost"])
    return {
        "symbol": row["symbol"],
        "qty": qty,
        "avgCost": cost,
        "lastPrice": mark,
        "value": qty * mark,
        "realisedPnl": float(row["realised_pnl"]),
        "unrealisedPnl": qty * (mark - cost),
        "markedAtMs": int(row["last_t_ms"]),
    }


def order_view(row: Row) -> dict[str, Any]:
    """One order, pending or filled. ``qty``: a pending SELL's quantity ordered (the whole
    position for a sell-all), a filled order's quantity filled; None for a pending BUY
    (which spends ``notional``)."""
    return {
        "id": int(row["id"]),
        "runId": row["run_id"],
        "symbol": row["symbol"],
        "timeframe": row["timeframe"],
        "side": row["side"],
        "status": row["status"],
        "notional": row["notional"],
        "sizeMultiplier": row["size_multiplier"],
        "qty": row["qty"],
        "price": row["price"],
        "fee": row["fee"],
        "realisedPnl": row["realised_pnl"],
        "decisionOpenMs": row["decision_open_ms"],
        "fillOpenMs": row["fill_open_ms"],
        "reason": row["reason"],
        "createdAt": row["created_at"],
    }


def event_view(row: Row) -> dict[str, Any]:
    """One halt, pause, resume or protection event."""
    return {
        "tMs": int(row["t_ms"]),
        "kind": row["kind"],
        "source": row["source"],
        "reason": row["reason"],
        "createdAt": row["created_at"],
    }


def summary_view(acct: Row, equity: float) -> dict[str, Any]:
    """The account without its positions and orders (for lists)."""
    return {
        "id": acct["id"],
        "name": acct["name"],
        "kind": acct["kind"],
        "quote": acct["quote"],
        "startingBalance": acct["starting_balance"],
        "feeRate": acct["fee_rate"],
        "slippage": acct["slippage"],
        "status": acct["status"],
        "statusReason": acct["status_reason"],
        "cash": acct["cash"],
        "equity": equity,
        "createdAt": acct["created_at"],
    }


def account_view(
    acct: Row,
    risk: RiskSnapshot,
    level: str,
    positions: Sequence[Row],
    orders: Sequence[Row],
    events: Sequence[Row],
) -> dict[str, Any]:
    """The whole account: terms, equity, peak, drawdown, level, positions, orders, events."""
    pos = [position_view(p) for p in positions if float(p["qty"]) > 0 or p["realised_pnl"]]
    return summary_view(acct, risk.equity) | {
        "peakEquity": risk.peak_equity,
        "drawdown": risk.drawdown,
        "lossToday": risk.loss_today,
        "exposure": risk.exposure,
        "riskLevel": level,
        "riskReason": risk.reason,
        "realisedPnl": sum(float(p["realised_pnl"]) for p in positions),
        "unrealisedPnl": sum(v["unrealisedPnl"] for v in pos),
        "limits": dict(acct["config"]),
        "protections": {
            "lossStreak": acct["loss_streak"],
            "pausedUntilMs": acct["paused_until_ms"],
            "cooldownUntilMs": acct["cooldown_until_ms"],
        },
        "positions": pos,
        "orders": [order_view(o) for o in orders],
        "riskEvents": [event_view(e) for e in events],
    }
