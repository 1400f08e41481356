"""Fixtures of the account tests: an `AccountService` over SQLite and real PostgreSQL.

The databases come from tests/store (``target``: SQLite in tmp_path, or a fresh schema of
the PostgreSQL at ``DATABASE_URL``); bars are built by hand so that every bar's open
differs from the previous close.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conclave.accounts import AccountConfig, AccountService, Bar
from tests.store.conftest import Target, pg_url, target  # noqa: F401 - fixtures

T0 = 1_699_999_200_000  # an hour boundary, 2023-11-14T22:00Z
H = 3_600_000


def bar(i: int, open_: float, close: float) -> Bar:
    """The ``i``-th 1h bar after `T0`."""
    return Bar(T0 + i * H, T0 + (i + 1) * H, open_, close)


def run(action: str, size: float = 1.0, *, symbol: str = "BTCUSDT") -> dict[str, Any]:
    """A minimal run wire with a decision of ``action`` and ``size`` multiplier."""
    tradable = action in ("BUY", "SELL") and size > 0
    decision = {"status": "ok", "action": action, "sizeMultiplier": size, "tradable": tradable}
    return {"runId": uuid.uuid4().hex, "symbol": symbol, "timeframe": "1h", "decision": decision}


@pytest.fixture
async def service(target: Target) -> AsyncIterator[AccountService]:  # noqa: F811
    """An account service over an empty store of each backend."""
    store = await target.open()
    yield AccountService(store)
    await store.aclose()


async def new_account(service: AccountService, **limits: Any) -> str:
    """A 10,000 USDT account, fee 0.1 %, slippage 0.1 %, with ``limits``."""
    acct = await service.create("t", balance=10_000.0, quote="USDT", fee_rate=0.001,
                                slippage=0.001, config=AccountConfig(**limits))  # fmt: skip
    return str(acct["id"])
