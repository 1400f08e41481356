"""RELIABILITY E4: a symbol or timeframe outside the allowlist (``btcusdt``, ``1M`` for ``1m``,
``../``, a 10 KB symbol) is refused with 422 before any I/O.

Pass figure of the row: **100 % 422; 0 Stub-BX calls.** The orchestrator app (in process)
reads the market from the real Binance client pointed at Stub-BX on loopback. Every route
that takes a symbol or a timeframe (``POST /pipeline/run``, ``GET /market/candles``,
``GET /market/signals``, ``POST /scheduler/jobs``, ``POST /backtests``) gets every bad value
of either; each answer must be 422 naming the field, and Stub-BX must see no request at all
(no klines, no server time) while they are answered. The control: one good request through
the same app does reach Stub-BX.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2

from tests.fakes import FakeBinance
from tests.reliability.test_exchange_faults_api import _api

BAD_SYMBOLS = ("btcusdt", "../", "B" * 10_240, "PEPEUSDT", "BTC\x00USDT", "BTCUSDT/../x",
               " BTCUSDT", "\uff22TCUSDT", "")  # fmt: skip
BAD_TIMEFRAMES = ("1M", "1H", "../1h", "1h ", "60m", "1w", "", "1" * 5_000)

Request = Callable[[httpx2.AsyncClient, str, str], Any]


def _routes() -> dict[str, Request]:
    """Each route taking a symbol and a timeframe, as a request of the two."""
    return {
        "POST /pipeline/run": lambda c, s, t: c.post(
            "/pipeline/run", json={"symbol": s, "timeframe": t}
        ),
        "GET /market/candles": lambda c, s, t: c.get(
            "/market/candles", params={"symbol": s, "timeframe": t}
        ),
        "GET /market/signals": lambda c, s, t: c.get(
            "/market/signals", params={"symbol": s, "timeframe": t}
        ),
        "POST /scheduler/jobs": lambda c, s, t: c.post(
            "/scheduler/jobs", json={"symbol": s, "timeframe": t}
        ),
        "POST /backtests": lambda c, s, t: c.post("/backtests", json={"symbol": s, "timeframe": t}),
    }


async def test_e4_every_value_outside_the_allowlist_is_422_with_0_exchange_calls(
    tmp_path: Path, stub: FakeBinance
) -> None:
    """E4 (pass figure: 100 % 422; 0 Stub-BX calls): 5 routes x (9 bad symbols + 8 bad
    timeframes) = 85 requests: 85 x 422 naming ``symbol`` or ``timeframe``, 0 requests to
    Stub-BX while they are answered; then one good run does reach it."""
    statuses: dict[int, int] = {}
    unnamed: list[str] = []
    async for api in _api(tmp_path, stub, "", "p"):
        before = len(stub.hits)
        for route, send in _routes().items():
            cases = [(s, "1h", "symbol") for s in BAD_SYMBOLS]
            cases += [("BTCUSDT", t, "timeframe") for t in BAD_TIMEFRAMES]
            for symbol, timeframe, field in cases:
                resp = await send(api, symbol, timeframe)
                statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
                body = resp.json() if resp.status_code == 422 else {}
                if str(body.get("error", {}).get("field", "")).split(".")[-1] != field:
                    unnamed.append(f"{route} {field}={symbol[:12]!r}/{timeframe[:12]!r}")
        calls_during = len(stub.hits) - before
        good = await api.post("/pipeline/run", json={"symbol": "BTCUSDT", "timeframe": "1h"})
        assert good.status_code == 201, good.text
    assert statuses == {422: 5 * (len(BAD_SYMBOLS) + len(BAD_TIMEFRAMES))} == {422: 85}
    assert unnamed == []
    assert calls_during == 0
    assert len(stub.requests()) > 0  # the control: a good run fetches from Stub-BX
