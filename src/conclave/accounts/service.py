"""`AccountService`: paper accounts over the store; runs become orders, fills and equity.

Point in time. A run's decision is made at the close of its last closed bar t (the
*decision bar*); it becomes a PENDING order that fills at bar t+1's open, which is known
only later: at the account's next evaluation on that symbol (`process_run` with the bars
up to its own as-of) or an explicit `settle`. So `process_run`, in ONE transaction:

1. fills the symbol's pending orders at the first bar after their decision bar
   (`paper.fill_at_open`), updating cash, position, realised P&L and the protections
   (cooldown, stop-loss streak guard) after a losing sale;
2. marks every position (this symbol at the decision bar's close, others at their last
   price) and records equity at the decision bar's close time;
3. assesses risk from the equity curve (drawdown from the peak since the account opened or
   was last resumed, loss today, exposure) and halts or, past the hysteresis band,
   resumes the account, recording the reason; a halted account holding no position
   resumes by itself after ``halt_resume_s`` with the peak restarted there, as by hand;
4. turns the decision (BUY/SELL, tradable) into a pending order sized by `paper.size_order`.
   A halt, the stop-loss streak guard and the cooldown refuse entries (BUY) only: a SELL
   always goes through, so risk never traps a position; a pause by hand stops every order.
   A halted account with ``halt_action`` ``flatten`` sells the symbol's whole position,
   on a BLOCKED run too (closing needs no risk verdict).

Processing is idempotent per (account, run): a second call with the same run id changes
nothing and answers the first outcome. No clock is read: times are bar times, and manual
actions take ``now_ms`` from the caller.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from conclave.accounts import ledger
from conclave.accounts.config import AccountConfig
from conclave.accounts.ledger import UnknownAccountError
from conclave.accounts.paper import Bar
from conclave.accounts.risk import Status
from conclave.accounts.views import account_view, summary_view
from conclave.errors import InvalidRequestError, StoreRejectedError
from conclave.store import RunStore
from conclave.store import accounts_repo as db
from conclave.timeframes import Timeframe

Row = dict[str, Any]
__all__ = ["AccountService", "UnknownAccountError"]


class AccountService:
    """Create, read, pause and resume paper accounts; process runs and settle orders."""

    def __init__(self, store: RunStore) -> None:
        self.repo = db.AccountRepo(store)

    # -- accounts ----------------------------------------------------------------------

    async def create(
        self,
        name: str,
        *,
        balance: float,
        quote: str,
        fee_rate: float = 0.001,
        slippage: float = 0.0005,
        config: AccountConfig | None = None,
    ) -> dict[str, Any]:
        """A new active paper account holding ``balance`` of ``quote`` in cash."""
        account_id = "paper-" + uuid.uuid4().hex[:16]
        cfg = config or AccountConfig()
        values = {
            "id": account_id,
            "name": name,
            "kind": "paper",
            "quote": quote,
            "starting_balance": balance,
            "fee_rate": fee_rate,
            "slippage": slippage,
            "config": cfg.to_json(),
            "cash": balance,
            "status": "active",
            "status_reason": "created",
            "loss_streak": 0,
        }
        async with self.repo.write() as conn:
            await db.insert_account(conn, values)
        found = await self.get(account_id)
        assert found is not None
        return found

    async def list_accounts(self) -> list[dict[str, Any]]:
        """Every account's summary (terms, status, cash, equity), oldest first."""
        async with self.repo.read() as conn:
            rows = await db.list_accounts(conn)
            out = []
            for acct in rows:
                held = await db.get_positions(conn, acct["id"])
                equity, _ = ledger.mark(acct, held)
                out.append(summary_view(acct, equity))
        return out

    async def exists(self, account_id: str) -> bool:
        """True when an account has this id."""
        async with self.repo.read() as conn:
            return await db.get_account(conn, account_id) is not None

    async def get(self, account_id: str) -> dict[str, Any] | None:
        """The account with equity, peak, drawdown, level, positions, orders and events."""
        async with self.repo.read() as conn:
            acct = await db.get_account(conn, account_id)
            if acct is None:
                return None
            held = await db.get_positions(conn, account_id)
            snap = await ledger.assess(conn, acct, held)
            orders = await db.list_orders(conn, account_id)
            events = await db.list_events(conn, account_id)
        level = "halt" if acct["status"] != "active" else snap.level
        return account_view(acct, snap, level, list(held.values()), orders, events)

    async def pause(self, account_id: str, reason: str, *, now_ms: int) -> dict[str, Any]:
        """Stop every order, exits included, until `resume`; recorded with ``reason``."""
        return await self._set_status(account_id, "paused", "pause", reason, now_ms)

    async def resume(self, account_id: str, reason: str, *, now_ms: int) -> dict[str, Any]:
        """Resume a paused or halted account by hand; recorded with ``reason``.

        The peak restarts at the latest equity: drawdown is measured from here on, so the
        halt that was overridden does not fire again at once. The streak guard is cleared.
        """
        return await self._set_status(account_id, "active", "resume", reason, now_ms)

    async def _set_status(
        self, account_id: str, status: Status, kind: str, reason: str, now_ms: int
    ) -> dict[str, Any]:
        async with self.repo.write() as conn:
            acct = await db.get_account(conn, account_id, lock=True)
            if acct is None:
                raise UnknownAccountError(account_id)
            values: Row = {"status": status, "status_reason": f"{kind} by hand: {reason}"}
            if kind == "resume":
                times, _ = await db.equity_history(conn, account_id)
                values |= {
                    "paused_until_ms": None,
                    "loss_streak": 0,
                    "risk_since_ms": times[-1] if times else None,
                }
            await db.update_account(conn, account_id, **values)
            await db.insert_event(conn, account_id, now_ms, kind, "manual", reason)
        found = await self.get(account_id)
        assert found is not None
        return found

    # -- runs --------------------------------------------------------------------------

    async def process_run(
        self, account_id: str, run_wire: Mapping[str, Any], *, bars: Sequence[Bar]
    ) -> dict[str, Any]:
        """Settle, record equity, assess risk and act on ``run_wire``'s decision (see module).

        ``bars`` are the closed bars of the run's symbol and timeframe up to the run's
        as-of, ascending; the last one is the decision bar (include the bars since the
        account's previous evaluation so a pending order fills at exactly the next bar).
        Idempotent per (account, run id). Raises `UnknownAccountError`, and
        `InvalidRequestError` for a run or bars it cannot use.
        """
        run_id, symbol, timeframe, decision = _run_fields(run_wire)
        if not bars:
            raise InvalidRequestError("at least the decision bar is needed", field="bars")
        bar_ms = Timeframe.parse(timeframe).ms
        try:
            async with self.repo.write() as conn:
                work = await ledger.load(conn, account_id)
                prior = await db.get_account_run(conn, account_id, run_id)
                if prior is not None:
                    return dict(prior["outcome"]) | {"replayed": True}
                fills = await ledger.settle(conn, work, symbol, bars, bar_ms)
                snap = await ledger.record(conn, work, symbol, bars[-1])
                order, skipped = await ledger.decide(conn, work, run_wire, decision, bars[-1])
                await ledger.save(conn, work)
                outcome = {
                    "accountId": account_id,
                    "runId": run_id,
                    "symbol": symbol,
                    "tMs": bars[-1].close_ms,
                    "equity": snap.equity,
                    "drawdown": snap.drawdown,
                    "riskLevel": snap.level,
                    "status": work.acct["status"],
                    "fills": fills,
                    "order": order,
                    "skipped": skipped,
                    "events": work.events,
                }
                await db.insert_account_run(conn, account_id, run_id, bars[-1].close_ms, outcome)
        except StoreRejectedError:
            # a concurrent call processed the same run first (primary key): answer its outcome
            async with self.repo.read() as conn:
                prior = await db.get_account_run(conn, account_id, run_id)
            if prior is None:
                raise
            return dict(prior["outcome"]) | {"replayed": True}
        return outcome | {"replayed": False}

    async def settle(
        self, account_id: str, symbol: str, bars: Sequence[Bar], *, timeframe: str
    ) -> list[dict[str, Any]]:
        """Fill the symbol's pending orders whose next bar is in ``bars``; record equity."""
        if not bars:
            return []
        async with self.repo.write() as conn:
            work = await ledger.load(conn, account_id)
            fills = await ledger.settle(conn, work, symbol, bars, Timeframe.parse(timeframe).ms)
            await ledger.record(conn, work, symbol, bars[-1])
            await ledger.save(conn, work)
        return fills

    async def state_rows(
        self, account_id: str, *, as_of_ms: int
    ) -> tuple[Row, dict[str, Row], list[int], list[float]]:
        """The account row, positions and equity curve (since ``risk_since_ms``) as of a time."""
        async with self.repo.read() as conn:
            acct = await db.get_account(conn, account_id)
            if acct is None:
                raise UnknownAccountError(account_id)
            held = await db.get_positions(conn, account_id)
            times, equity = await db.equity_history(conn, account_id, until_ms=as_of_ms)
        return acct, held, *ledger.since(acct, times, equity)


def _run_fields(run: Mapping[str, Any]) -> tuple[str, str, str, Mapping[str, Any]]:
    fields = {k: run.get(k) for k in ("runId", "symbol", "timeframe")}
    for key, value in fields.items():
        if not isinstance(value, str) or not value:
            raise InvalidRequestError(f"the run has no {key}", field=key)
    decision = run.get("decision")
    if not isinstance(decision, Mapping):
        raise InvalidRequestError("the run has no decision", field="decision")
    return str(fields["runId"]), str(fields["symbol"]), str(fields["timeframe"]), decision
