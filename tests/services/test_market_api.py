"""The dashboard's API additions in process (ASGI): ``/market/candles``, ``/market/signals``
and the backtest jobs, over SQLite in tmp_path and the simulated market."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from conclave.services.api import create_app
from conclave.settings import Settings


def make_settings(tmp_path: Path) -> Settings:
    """SQLite and the in-process cache in tmp_path, the simulated market; no .env read."""
    return Settings(
        _env_file=None,
        data_dir=tmp_path, logs_dir=tmp_path / "logs", database_url=None, redis_url=None,
        use_http_agents=False, market={"source": "sim"},
    )  # fmt: skip


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx2.AsyncClient]:
    app = create_app(make_settings(tmp_path))
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx2.AsyncClient(transport=transport, base_url="http://api") as c:
            yield c


async def test_candles_are_the_closed_bars_of_the_market_labelled(
    client: httpx2.AsyncClient,
) -> None:
    answer = await client.get("/market/candles", params={"symbol": "ETHUSDT", "timeframe": "1h",
                                                         "limit": 50})  # fmt: skip
    assert answer.status_code == 200
    body = answer.json()
    assert body["source"].startswith("sim")
    assert body["simulated"] is True
    assert len(body["time"]) == 50
    assert all(len(body[k]) == 50 for k in ("open", "high", "low", "close", "volume"))
    hour = 3_600_000
    assert all(b - a == hour for a, b in zip(body["time"], body["time"][1:], strict=False))
    assert body["time"][-1] + hour <= body["asOf"]  # closed candles only
    for o, h, lo, c in zip(body["open"], body["high"], body["low"], body["close"], strict=True):
        assert lo <= min(o, c) <= max(o, c) <= h


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"symbol": "NOPEUSDT", "timeframe": "1h"}, "symbol"),  # not in the allowlist
        ({"symbol": "BTCUSDT", "timeframe": "2h"}, "timeframe"),
        ({"symbol": "btc", "timeframe": "1h"}, "symbol"),
        ({"symbol": "BTCUSDT", "timeframe": "1h", "limit": 5}, "limit"),
    ],
)
async def test_bad_market_parameters_are_422_naming_the_field(
    client: httpx2.AsyncClient, params: dict[str, Any], field: str
) -> None:
    answer = await client.get("/market/candles", params=params)
    assert answer.status_code == 422
    assert answer.json()["error"]["field"] == field


async def test_signals_carry_each_run_of_the_market_with_every_agent(
    client: httpx2.AsyncClient,
) -> None:
    made = []
    for symbol, tf in (("BTCUSDT", "1h"), ("BTCUSDT", "4h"), ("BTCUSDT", "1h")):
        r = await client.post("/pipeline/run", json={"symbol": symbol, "timeframe": tf})
        assert r.status_code == 201
        made.append(r.json())
    answer = await client.get("/market/signals", params={"symbol": "BTCUSDT",
                                                         "timeframe": "1h"})  # fmt: skip
    assert answer.status_code == 200
    items = answer.json()["items"]
    assert [i["runId"] for i in items] == [made[2]["runId"], made[0]["runId"]]  # newest first
    first, run = items[0], made[2]
    assert first["conviction"] == run["decision"]["conviction"]
    assert set(first["agents"]) == set(run["steps"])
    assert all(first["agents"][a]["score"] == s["score"] for a, s in run["steps"].items())
    candles = (await client.get("/market/candles", params={"symbol": "BTCUSDT",
                                                           "timeframe": "1h"})).json()  # fmt: skip
    assert first["candleTime"] == candles["time"][-1]  # the marker sits on the last closed bar


async def test_a_backtest_job_runs_in_the_background_and_reports(
    client: httpx2.AsyncClient,
) -> None:
    body = {"symbol": "BTCUSDT", "timeframe": "1h", "bars": 200, "agents": ["momentum",
            "market-structure"], "weights": {"momentum": 2}}  # fmt: skip
    started = await client.post("/backtests", json=body)
    assert started.status_code == 202
    job = started.json()
    assert job["status"] == "queued"
    assert started.headers["location"] == f"/backtests/{job['id']}"
    deadline = time.monotonic() + 60
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        job = (await client.get(f"/backtests/{job['id']}")).json()
    assert job["status"] == "done", job["error"]
    assert job["progress"] == 1.0
    summary, series = job["summary"], job["series"]
    assert summary["bars"] == 200 == len(series["time"])
    assert summary["settings"]["agents"] == ["market-structure", "momentum", "risk-manager"]
    assert summary["settings"]["decision"]["weights"]["momentum"] == 2
    assert math.isclose(series["equity"][-1], summary["performance"]["finalEquity"])
    first_close = series["close"][0]
    assert math.isclose(series["buyAndHold"][-1], 10_000 * series["close"][-1] / first_close)
    assert max(series["drawdown"]) <= 0.0
    assert math.isclose(-min(series["drawdown"]), summary["performance"]["maxDrawdown"],
                        rel_tol=1e-9)  # fmt: skip
    listed = (await client.get("/backtests")).json()["items"]
    assert listed[0]["id"] == job["id"]
    assert "series" not in listed[0]


async def test_a_backtest_the_data_cannot_serve_fails_with_its_reason(
    client: httpx2.AsyncClient,
) -> None:
    weights = dict.fromkeys(
        [
            "market-structure",
            "order-flow",
            "momentum",
            "news-sentiment",
            "multi-timeframe",
            "pattern-recognition",
            "statistical-edge",
        ],
        0,
    )
    job = (await client.post("/backtests", json={"symbol": "BTCUSDT", "timeframe": "1h",
                                                 "weights": weights})).json()  # fmt: skip
    for _ in range(200):
        job = (await client.get(f"/backtests/{job['id']}")).json()
        if job["status"] not in ("queued", "running"):
            break
        await asyncio.sleep(0.05)
    assert job["status"] == "failed"
    assert "weight above 0" in job["error"]


@pytest.mark.parametrize(
    "body",
    [
        {"symbol": "BTCUSDT", "timeframe": "1h", "bars": "300"},  # strict JSON
        {"symbol": "BTCUSDT", "timeframe": "1h", "agents": ["risk-manager"]},  # not analysis
        {"symbol": "BTCUSDT", "timeframe": "1h", "source": "file:/etc/passwd"},
        {"symbol": "BTCUSDT", "timeframe": "1h", "weights": {"volatility-regime": 1}},
        {"symbol": "BTCUSDT", "timeframe": "1h", "bars": 10},
        {"symbol": "BTCUSDT", "timeframe": "1h", "extra": 1},
    ],
)
async def test_bad_backtest_bodies_are_422(
    client: httpx2.AsyncClient, body: dict[str, Any]
) -> None:
    answer = await client.post("/backtests", json=body)
    assert answer.status_code == 422
    assert (await client.get("/backtests")).json()["items"] == []


async def test_an_unknown_job_is_404(client: httpx2.AsyncClient) -> None:
    assert (await client.get("/backtests/" + "0" * 32)).status_code == 404


async def test_an_accounts_equity_curve_has_its_points_and_limits(
    client: httpx2.AsyncClient,
) -> None:
    account = (await client.post("/accounts", json={
        "name": "curve", "balance": 5000, "quote": "USDT",
        "limits": {"drawdown_limits": [0.04, 0.08, 0.15]}})).json()  # fmt: skip
    empty = (await client.get(f"/accounts/{account['id']}/equity")).json()
    assert empty["time"] == []
    for tf in ("1h", "1m"):  # two bars: one equity point each
        run = {"accountId": account["id"], "symbol": "BTCUSDT", "timeframe": tf}
        assert (await client.post("/pipeline/run", json=run)).status_code == 201
    curve = (await client.get(f"/accounts/{account['id']}/equity")).json()
    assert curve["limits"] == {"warn": 0.04, "reduce": 0.08, "halt": 0.15}
    assert len(curve["time"]) == len(curve["equity"]) == len(curve["drawdown"]) >= 1
    assert curve["time"] == sorted(curve["time"])
    assert curve["equity"][0] == 5000
    peak = 0.0
    for e, dd in zip(curve["equity"], curve["drawdown"], strict=True):
        peak = max(peak, e)
        assert math.isclose(dd, e / peak - 1, abs_tol=1e-12)
    missing = await client.get("/accounts/paper-0000000000000000/equity")
    assert missing.status_code == 404
