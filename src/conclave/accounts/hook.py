"""Where a pipeline run meets a paper account: the orchestrator's after-run hook.

`open_accounts` gives an `AccountService` over the run store when the store is the real
one (a test double gets none). `process_for_account` acts on a finished run that names an
existing paper account: it reads the run's recent closed bars through the gateway (cached:
the run has just fetched them) and calls `AccountService.process_run`, which fills the
previous decision's order at the next bar's open, records equity and places the new order.
"""

from __future__ import annotations

from typing import Any

from conclave.accounts.paper import Bar
from conclave.accounts.service import AccountService
from conclave.market.candles import Candles
from conclave.market.gateway import MarketGateway
from conclave.pipeline.orchestrator import PipelineRun

#: Closed bars read for settling: pending orders older than this fill at the oldest bar.
SETTLE_BARS = 100


def open_accounts(store: object) -> AccountService | None:
    """An account service over ``store`` when it is a `RunStore`, else None."""
    from conclave.store import RunStore

    return AccountService(store) if isinstance(store, RunStore) else None


def bars_from_candles(candles: Candles) -> list[Bar]:
    """The candles as `Bar` values (open and exclusive close time, open, close)."""
    close_ms = candles.close_time
    return [
        Bar(int(candles.open_time[i]), int(close_ms[i]), float(candles.open[i]),
            float(candles.close[i]))
        for i in range(len(candles))
    ]  # fmt: skip


async def process_for_account(
    service: AccountService, gateway: MarketGateway, run: PipelineRun
) -> dict[str, Any] | None:
    """Process ``run`` for its paper account; None when it names none or made no decision."""
    if run.account_id is None or run.decision.status == "no_signal":
        return None
    if not await service.exists(run.account_id):
        return None
    snapshot = await gateway.snapshot(
        run.symbol, run.timeframe, limit=SETTLE_BARS, as_of_ms=run.as_of_ms, require_fresh=False
    )
    bars = bars_from_candles(snapshot.base)
    if not bars:
        return None
    return await service.process_run(run.account_id, run.to_wire(), bars=bars)
