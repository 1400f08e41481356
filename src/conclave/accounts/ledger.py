"""The steps of processing a run for a paper account, on one open transaction.

`AccountService.process_run` composes them: `load` (row-locked), `settle` pending orders at
the next bar's open, `record` equity and risk at the decision bar, `decide` the new order,
`save` the account and positions. Each step mutates a `Work` (the account's state inside the
transaction) and writes through `conclave.store.accounts_repo`; none reads a clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from conclave.accounts import paper, risk
from conclave.accounts.config import AccountConfig
from conclave.accounts.paper import Bar, Position
from conclave.accounts.risk import Protections, RiskSnapshot, Status
from conclave.errors import InvalidRequestError
from conclave.store import accounts_repo as db

Row = dict[str, Any]


class UnknownAccountError(InvalidRequestError):
    """No account has this id (the API answers 404)."""

    reason = "unknown_account"

    def __init__(self, account_id: str) -> None:
        super().__init__(f"no account with id {account_id!r}", field="id")


@dataclass(slots=True)
class Work:
    """The account's mutable state inside one transaction."""

    acct: Row
    positions: dict[str, Row]
    events: list[dict[str, Any]]

    @property
    def config(self) -> AccountConfig:
        return AccountConfig.model_validate(self.acct["config"])

    @property
    def protections(self) -> Protections:
        a = self.acct
        return Protections(a["loss_streak"], a["paused_until_ms"], a["cooldown_until_ms"])

    def position(self, symbol: str) -> Position:
        p = self.positions.get(symbol)
        if p is None:
            return Position()
        return Position(float(p["qty"]), float(p["avg_cost"]), float(p["realised_pnl"]))


async def load(conn: Any, account_id: str) -> Work:
    acct = await db.get_account(conn, account_id, lock=True)
    if acct is None:
        raise UnknownAccountError(account_id)
    return Work(acct, await db.get_positions(conn, account_id), [])


async def event(conn: Any, work: Work, t_ms: int, kind: str, reason: str) -> None:
    await db.insert_event(conn, work.acct["id"], t_ms, kind, "auto", reason)
    work.events.append({"tMs": t_ms, "kind": kind, "reason": reason})


async def settle(
    conn: Any, work: Work, symbol: str, bars: Sequence[Bar], bar_ms: int
) -> list[dict[str, Any]]:
    acct, out = work.acct, []
    for order in await db.pending_orders(conn, acct["id"], symbol):
        nxt = paper.next_bar(bars, int(order["decision_open_ms"]))
        if nxt is None:
            continue  # the next bar is not known yet
        pos = work.position(symbol)
        fill = paper.fill_at_open(
            order["side"],
            float(order["notional"]),
            nxt,
            slippage=acct["slippage"],
            fee_rate=acct["fee_rate"],
            cash=acct["cash"],
            position=pos,
        )
        if fill is None:
            await db.update_order(
                conn,
                order["id"],
                status="cancelled",
                reason=order["reason"] + "; cancelled: nothing to trade",
            )
            continue
        after, cash_delta, pnl = paper.apply_fill(pos, fill)
        acct["cash"] = float(acct["cash"]) + cash_delta
        work.positions[symbol] = {
            "account_id": acct["id"],
            "symbol": symbol,
            "qty": after.qty,
            "avg_cost": after.avg_cost,
            "realised_pnl": after.realised_pnl,
            "last_price": nxt.open,
            "last_t_ms": nxt.open_ms,
        }
        await db.update_order(
            conn,
            order["id"],
            status="filled",
            qty=fill.qty,
            price=fill.price,
            fee=fill.fee,
            realised_pnl=pnl if fill.side == "SELL" else None,
            fill_open_ms=nxt.open_ms,
        )
        out.append(
            {
                "orderId": order["id"],
                "side": fill.side,
                "qty": fill.qty,
                "price": fill.price,
                "fee": fill.fee,
                "realisedPnl": pnl,
                "fillOpenMs": nxt.open_ms,
            }
        )
        if fill.side == "SELL":
            prot, why = risk.after_trade(work.protections, pnl, nxt.open_ms, bar_ms, work.config)
            acct.update(
                loss_streak=prot.loss_streak,
                paused_until_ms=prot.paused_until_ms,
                cooldown_until_ms=prot.cooldown_until_ms,
            )
            if why:
                kind = "streak_guard" if "streak" in why else "cooldown"
                await event(conn, work, nxt.open_ms, kind, why)
    return out


async def record(conn: Any, work: Work, symbol: str, bar: Bar) -> RiskSnapshot:
    acct = work.acct
    if symbol in work.positions:
        work.positions[symbol] |= {"last_price": bar.close, "last_t_ms": bar.close_ms}
    equity, exposure = mark(acct, work.positions)
    await db.upsert_equity(
        conn,
        {
            "account_id": acct["id"],
            "t_ms": bar.close_ms,
            "equity": equity,
            "cash": acct["cash"],
            "exposure": exposure,
        },
    )
    snap = await assess(conn, acct, work.positions)
    status, why = risk.transition(cast(Status, acct["status"]), snap, work.config)
    if why:
        acct.update(status=status, status_reason=why)
        await event(conn, work, bar.close_ms, "halt" if status == "halted" else "resume", why)
    return snap


async def decide(
    conn: Any,
    work: Work,
    run: Mapping[str, Any],
    decision: Mapping[str, Any],
    bar: Bar,
) -> tuple[dict[str, Any] | None, str]:
    side = decision.get("action")
    if side not in ("BUY", "SELL") or decision.get("tradable") is not True:
        return None, f"no order: decision {side or decision.get('status')} is not tradable"
    acct = work.acct
    if acct["status"] != "active":
        return None, f"no order: account {acct['status']} ({acct['status_reason']})"
    blocked = work.protections.blocks(side, bar.close_ms)
    if blocked:
        return None, f"no order: {blocked}"
    mult = float(decision.get("sizeMultiplier") or 0.0)
    cfg = work.config
    equity, _ = mark(acct, work.positions)
    held = work.position(run["symbol"]).value(bar.close)
    notional, why = paper.order_notional(
        side,
        equity=equity,
        size_multiplier=mult,
        max_position_fraction=cfg.max_position_fraction,
        min_order_notional=cfg.min_order_notional,
        position_value=held,
    )
    if notional <= 0:
        return None, why
    values = {
        "account_id": acct["id"],
        "run_id": run["runId"],
        "symbol": run["symbol"],
        "timeframe": run["timeframe"],
        "side": side,
        "status": "pending",
        "decision_open_ms": bar.open_ms,
        "notional": notional,
        "size_multiplier": mult,
        "reason": why,
    }
    await db.insert_order(conn, values)
    return {
        "side": side,
        "notional": notional,
        "status": "pending",
        "decisionOpenMs": bar.open_ms,
        "reason": why,
    }, ""


async def save(conn: Any, work: Work) -> None:
    a = work.acct
    await db.update_account(
        conn,
        a["id"],
        cash=a["cash"],
        status=a["status"],
        status_reason=a["status_reason"],
        loss_streak=a["loss_streak"],
        paused_until_ms=a["paused_until_ms"],
        cooldown_until_ms=a["cooldown_until_ms"],
    )
    for row in work.positions.values():
        await db.upsert_position(conn, row)


def mark(acct: Mapping[str, Any], held: Mapping[str, Row]) -> tuple[float, float]:
    pairs = [(float(p["qty"]), float(p["last_price"])) for p in held.values()]
    return paper.mark_to_market(float(acct["cash"]), pairs)


def since(
    acct: Mapping[str, Any], times: list[int], equity: list[float]
) -> tuple[list[int], list[float]]:
    since = acct.get("risk_since_ms")
    if since is None:
        return times, equity
    keep = [i for i, t in enumerate(times) if t >= since]
    return [times[i] for i in keep], [equity[i] for i in keep]


async def assess(conn: Any, acct: Mapping[str, Any], held: Mapping[str, Row]) -> RiskSnapshot:
    times, equity = since(acct, *await db.equity_history(conn, acct["id"]))
    now, exposure = mark(acct, held)
    cfg = AccountConfig.model_validate(acct["config"])
    if not equity:
        return risk.assess([0], [now], exposure=exposure, config=cfg, starting_balance=now)
    return risk.assess(
        times,
        equity,
        exposure=exposure,
        config=cfg,
        starting_balance=float(acct["starting_balance"]),
    )
