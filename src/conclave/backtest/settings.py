"""What one backtest runs with: money, costs, the account's terms and the decision's weights.

`BacktestSettings` is read by the account loop (`account_loop.simulate`) and recorded in the
result (`BacktestResult.settings`); `Progress` is the callback every phase reports to.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conclave.accounts.config import AccountConfig
from conclave.errors import InvalidRequestError
from conclave.market.gateway import ResamplePolicy
from conclave.pipeline.decision import DecisionConfig

#: ``progress(phase, done, total)``: called as the phases advance (for a progress bar).
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class BacktestSettings:
    """Money, costs, the account's terms and the decision's weights for one backtest.

    ``fee_rate`` and ``slippage`` are fractions (0.001 = 0.1 %) as in `conclave.accounts`.
    ``resample`` is the gateway policy the live runs use for this source (see
    `conclave.market.gateway.MarketGateway`).
    """

    starting_balance: float = 10_000.0
    fee_rate: float = 0.001
    slippage: float = 0.0005
    account: AccountConfig = field(default_factory=AccountConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    resample: ResamplePolicy = "auto"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.starting_balance) and self.starting_balance > 0):
            raise InvalidRequestError("the starting balance must be above 0", field="balance")
        for name, value in (("fee", self.fee_rate), ("slippage", self.slippage)):
            if not (math.isfinite(value) and 0.0 <= value < 0.1):
                raise InvalidRequestError(f"{name} must lie in [0, 0.1), got {value}", field=name)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "startingBalance": self.starting_balance,
            "feeRate": self.fee_rate,
            "slippage": self.slippage,
            "account": self.account.to_json(),
            "decision": self.decision.model_dump(mode="json"),
            "resample": self.resample,
        }
