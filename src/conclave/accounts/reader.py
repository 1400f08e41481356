"""`StoreAccountReader`: the pipeline's `AccountReader` over the account store.

It gives the risk-manager agent the account's real state as of the run: the recorded
equity curve up to ``as_of_ms`` (from the peak restart of the last manual resume, if any),
the equity at 00:00 UTC of the as-of day, the gross open exposure at the positions' last
marks, and the account's own risk levels (`AccountState.risk`) with a blocking reason when
the account is paused, halted or under the stop-loss streak guard. An unknown account or
a store failure raises, so the orchestrator records the account as unreadable (not
tradable).
"""

from __future__ import annotations

import numpy as np

from conclave.accounts.config import AccountConfig
from conclave.accounts.risk import Protections, start_of_day
from conclave.accounts.service import AccountService
from conclave.agents import AccountState


class StoreAccountReader:
    """Reads `AccountState` from an `AccountService` (implements `AccountReader`)."""

    def __init__(self, service: AccountService) -> None:
        self.service = service

    async def read(self, account_id: str, *, as_of_ms: int) -> AccountState:
        """The account's state as of ``as_of_ms`` (ms UTC); raises when it cannot be read."""
        acct, held, times, equity = await self.service.state_rows(account_id, as_of_ms=as_of_ms)
        exposure = sum(abs(float(p["qty"]) * float(p["last_price"])) for p in held.values())
        blocked = ""
        if acct["status"] != "active":
            blocked = f"account {acct['status']}: {acct['status_reason']}"
        else:
            prot = Protections(acct["loss_streak"], acct["paused_until_ms"], None)
            blocked = prot.paused(as_of_ms)
        config = AccountConfig.model_validate(acct["config"])
        return AccountState(
            account_id=account_id,
            equity_time_ms=np.asarray(times, dtype=np.int64),
            equity=np.asarray(equity, dtype=np.float64),
            open_exposure=exposure,
            start_of_day_equity=start_of_day(times, equity, as_of_ms) if times else None,
            risk=config.agent_risk(blocked),
        )
