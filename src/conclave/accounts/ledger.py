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
#: How many of the newest risk events `halted_since` searches for the halt.
HALT_LOOKBACK = 1_000


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
    cfg = work.config
    for order in await db.pending_orders(conn, acct["id"], symbol):
        nxt = paper.next_bar(bars, int(order["decision_open_ms"]))
        if nxt is None:
            continue  # the next bar is not known yet
        pos = work.position(symbol)
        fill, why = paper.fill_at_open(
            _order(order, nxt, acct["slippage"]),
            nxt,
            slippage=acct["slippage"],
            fee_rate=acct["fee_rate"],
            cash=acct["cash"],
            position=pos,
            min_order_notional=cfg.min_order_notional,
            qty_step=cfg.qty_step,
        )
        if fill is None:
            await db.update_order(
                conn,
                order["id"],
                status="cancelled",
                reason=order["reason"] + f"; cancelled: {why}",
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
    flat = all(abs(float(p["qty"])) <= paper.QTY_EPS for p in work.positions.values())
    if status == "halted" and flat and work.config.halt_resume_s:
        since = await halted_since(conn, acct["id"])
        why = risk.auto_resume(status, since, bar.close_ms, flat, work.config)
        if why:  # re-baselined as a manual resume: the peak restarts at this bar's equity
            acct.update(status="active", status_reason=why, risk_since_ms=bar.close_ms)
            await event(conn, work, bar.close_ms, "resume", why)
            snap = await assess(conn, acct, work.positions)
    return snap


async def halted_since(conn: Any, account_id: str) -> int | None:
    """Bar time of the account's latest halt; when more than `HALT_LOOKBACK` events came
    after it, the oldest of those (a later time: the automatic resume only waits longer)."""
    events = await db.list_events(conn, account_id, limit=HALT_LOOKBACK)
    for e in reversed(events):
        if e["kind"] == "halt":
            return int(e["t_ms"])
    return int(events[0]["t_ms"]) if events else None


async def decide(
    conn: Any,
    work: Work,
    run: Mapping[str, Any],
    decision: Mapping[str, Any],
    bar: Bar,
) -> tuple[dict[str, Any] | None, str]:
    """Place the order for ``decision`` at ``bar``'s close, or say why there is none.

    Only entries are refused by a halt, the streak guard or the cooldown; a SELL always
    goes through (a pause by hand stops every order). A halted account whose
    ``halt_action`` is ``flatten`` sells the symbol's whole position whatever the
    decision, a BLOCKED one included: closing needs no risk verdict. A BLOCKED decision
    places no order of its own (never tradable, RELIABILITY C5).
    """
    side = decision.get("action")
    acct, cfg = work.acct, work.config
    pos = work.position(run["symbol"])
    status = cast(Status, acct["status"])
    flatten = status == "halted" and cfg.halt_action == "flatten"
    if flatten and pos.qty > paper.QTY_EPS:
        why = f"sell all: halt_action flatten ({acct['status_reason']})"
        return await _place(conn, work, run, paper.sell_all(pos.qty, bar.close, why), 1.0, bar)
    if side not in ("BUY", "SELL") or decision.get("tradable") is not True:
        return None, f"no order: decision {side or decision.get('status')} is not tradable"
    blocked = risk.order_blocked(side, status, work.protections, bar.close_ms)
    if blocked:
        because = f" ({acct['status_reason']})" if status != "active" else ""
        return None, f"no order: {blocked}{because}"
    mult = float(decision.get("sizeMultiplier") or 0.0)
    equity, _ = mark(acct, work.positions)
    order, why = paper.size_order(
        side,
        equity=equity,
        size_multiplier=mult,
        max_position_fraction=cfg.max_position_fraction,
        min_order_notional=cfg.min_order_notional,
        qty_step=cfg.qty_step,
        position_qty=pos.qty,
        price=bar.close,
    )
    if order is None:
        return None, why
    return await _place(conn, work, run, order, mult, bar)


async def _place(
    conn: Any, work: Work, run: Mapping[str, Any], order: paper.Order, mult: float, bar: Bar
) -> tuple[dict[str, Any], str]:
    values = {
        "account_id": work.acct["id"],
        "run_id": run["runId"],
        "symbol": run["symbol"],
        "timeframe": run["timeframe"],
        "side": order.side,
        "status": "pending",
        "decision_open_ms": bar.open_ms,
        "notional": order.notional,
        # a SELL is for a quantity (the fill overwrites it with the quantity filled)
        "qty": order.qty if order.side == "SELL" else None,
        "size_multiplier": mult,
        "reason": order.reason,
    }
    await db.insert_order(conn, values)
    placed = {
        "side": order.side,
        "notional": order.notional,
        "status": "pending",
        "decisionOpenMs": bar.open_ms,
        "reason": order.reason,
    }
    if order.side == "SELL":
        placed["qty"] = order.qty
    return placed, ""


def _order(row: Mapping[str, Any], nxt: Bar, slippage: float) -> paper.Order:
    """A pending order row as a `paper.Order`."""
    notional, qty = float(row["notional"]), row["qty"]
    if row["side"] == "SELL" and qty is None:  # placed before SELL orders carried a quantity
        qty = notional / (nxt.open * (1.0 - slippage))
    return paper.Order(row["side"], notional, float(qty or 0.0), row["reason"])


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
        risk_since_ms=a.get("risk_since_ms"),
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
