"""``POST /pipeline/run`` with only ``accountId`` (the seed's request): the account's markets.

The orchestrator in process (ASGI, lifespan run) over SQLite in tmp_path and the sim source.
Accounts are created through ``POST /accounts``; scheduler jobs come from settings (a
second app over the same database, since settings are read at start) and from
``POST /scheduler/jobs``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest

from conclave.agents import REGISTRY
from conclave.market.candles import Candles
from conclave.market.sources import open_source
from conclave.services.account_runs import MAX_MARKETS
from conclave.services.api import create_app
from conclave.settings import Settings
from conclave.timeframes import Timeframe
from tests.pipeline.helpers import CountingSource
from tests.services.test_api import _now_ms, assert_error, calls, make_settings

NEW = {"name": "seed", "balance": 10_000, "quote": "USDT"}
BTC_1H = {"symbol": "BTCUSDT", "timeframe": "1h"}
ETH_4H = {"symbol": "ETHUSDT", "timeframe": "4h"}


class Api:
    """A client of the app with its source (to count fetches)."""

    def __init__(self, client: httpx2.AsyncClient, source: CountingSource) -> None:
        self.client = client
        self.source = source

    async def post(self, path: str, body: Any, **kwargs: Any) -> httpx2.Response:
        return await self.client.post(path, json=body, **kwargs)

    async def get(self, path: str, **params: Any) -> Any:
        resp = await self.client.get(path, params=params)
        assert resp.status_code == 200, resp.text
        return resp.json()

    async def account(self, **limits: Any) -> str:
        """A new paper account's id (``limits``: its `AccountConfig`)."""
        resp = await self.post("/accounts", NEW | {"limits": limits})
        assert resp.status_code == 201, resp.text
        return str(resp.json()["id"])

    async def job(self, account_id: str, market: dict[str, str]) -> None:
        resp = await self.post("/scheduler/jobs", {"accountId": account_id} | market)
        assert resp.status_code == 201, resp.text


@asynccontextmanager
async def serve(settings: Settings, source: Any = None) -> AsyncIterator[Api]:
    """The orchestrator app over ``settings`` (default source: the sim market, counted)."""
    counted = CountingSource(source or open_source("sim", settings, now_ms=_now_ms))
    app = create_app(settings, source=counted)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            yield Api(c, counted)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    async with serve(settings) as client:
        yield client


def markets(answer: dict[str, Any]) -> list[tuple[str, str]]:
    return [(r["symbol"], r["timeframe"]) for r in answer["runs"]]


# -- the account form -------------------------------------------------------------------------


async def test_the_seeds_request_runs_each_scheduled_market(tmp_path: Path) -> None:
    """``{"accountId", "useHttpAgents": false}`` for an account with a job from settings and
    one from the API answers 201 with both runs (settings' first), each with nine steps, the
    account read by the risk manager, and each recorded and listed under the account."""
    async with serve(make_settings(tmp_path)) as first:
        acct = await first.account()
    settings = make_settings(tmp_path, scheduler={"jobs": [{"account": acct} | BTC_1H]})
    async with serve(settings) as api:
        await api.job(acct, ETH_4H)
        resp = await api.post("/pipeline/run", {"accountId": acct, "useHttpAgents": False})
        assert resp.status_code == 201, resp.text
        answer = resp.json()
        assert answer["accountId"] == acct
        assert markets(answer) == [("BTCUSDT", "1h"), ("ETHUSDT", "4h")]
        for run in answer["runs"]:
            assert run["accountId"] == acct
            assert list(run["steps"]) == list(REGISTRY)
            risk = run["steps"]["risk-manager"]
            assert (risk["payload"]["account"], risk["meta"]["status"]) == (acct, "ok")
            assert await api.get(f"/pipeline/runs/{run['runId']}") == run
        listed = await api.get("/pipeline/runs", accountId=acct)
        assert listed["total"] == 2
        assert {r["runId"] for r in listed["items"]} == {r["runId"] for r in answer["runs"]}


async def test_default_markets_on_the_account_come_first_and_once(api: Api) -> None:
    """``limits.markets`` set at creation are the account's markets, shown with its limits;
    a scheduler job for one of them adds nothing, another one comes after."""
    acct = await api.account(markets=[ETH_4H, BTC_1H])
    shown = await api.get(f"/accounts/{acct}")
    assert shown["limits"]["markets"] == [ETH_4H, BTC_1H]
    await api.job(acct, BTC_1H)
    await api.job(acct, {"symbol": "SOLUSDT", "timeframe": "1d"})
    resp = await api.post("/pipeline/run", {"accountId": acct})
    assert resp.status_code == 201, resp.text
    assert markets(resp.json()) == [("ETHUSDT", "4h"), ("BTCUSDT", "1h"), ("SOLUSDT", "1d")]
    assert (await api.get("/pipeline/runs", accountId=acct))["total"] == 3


async def test_an_account_without_markets_keeps_its_stored_limits(api: Api) -> None:
    """An account created without markets shows its limits exactly as before (no key)."""
    acct = await api.account()
    assert "markets" not in (await api.get(f"/accounts/{acct}"))["limits"]


@pytest.mark.parametrize(
    ("markets_", "field"),
    [
        ([{"symbol": "BTCUSDT", "timeframe": "1H"}], "limits.markets.0.timeframe"),
        ([{"symbol": "btc", "timeframe": "1h"}], "limits.markets.0.symbol"),
        ([BTC_1H, BTC_1H], "limits.markets"),
        ([BTC_1H | {"extra": 1}], "limits.markets.0.extra"),
    ],
)
async def test_bad_default_markets_are_422_naming_them(
    api: Api, markets_: list[dict[str, Any]], field: str
) -> None:
    """A market's symbol, timeframe, a duplicate or an unknown key is refused at creation."""
    assert_error(await api.post("/accounts", NEW | {"limits": {"markets": markets_}}), 422, field)


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("market", [{}, BTC_1H])
async def test_an_unknown_account_is_404_naming_it(api: Api, market: dict[str, str]) -> None:
    """An accountId that names no account is 404 (not a vetoed HOLD), with or without a
    market; nothing is fetched or recorded."""
    resp = await api.post("/pipeline/run", {"accountId": "acct-1"} | market)
    assert assert_error(resp, 404, "accountId")["code"] == "not_found"
    assert calls(api.source) == 0
    assert (await api.get("/pipeline/runs"))["total"] == 0


async def test_an_account_with_no_market_is_422_saying_how_to_give_one(api: Api) -> None:
    """A known account with no default market and no job is 422 naming accountId."""
    acct = await api.account()
    err = assert_error(await api.post("/pipeline/run", {"accountId": acct}), 422, "accountId")
    assert "symbol and timeframe" in err["message"]
    assert "/scheduler/jobs" in err["message"]
    assert calls(api.source) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"accountId": "acct-1", "symbol": "BTCUSDT"}, "timeframe"),
        ({"accountId": "acct-1", "timeframe": "1h"}, "symbol"),
        ({"symbol": "BTCUSDT"}, "timeframe"),
        ({}, "accountId"),
        ({"useHttpAgents": True}, "accountId"),
        ({"accountId": None, "symbol": None, "timeframe": None}, "accountId"),
    ],
)
async def test_half_a_market_or_nothing_is_422_before_any_io(
    api: Api, body: dict[str, Any], field: str
) -> None:
    """Symbol and timeframe go together; with neither, accountId is required."""
    assert_error(await api.post("/pipeline/run", body), 422, field)
    assert calls(api.source) == 0


async def test_more_markets_than_the_cap_is_422(tmp_path: Path) -> None:
    """An account with more than MAX_MARKETS markets is 422 naming accountId; none runs."""
    async with serve(make_settings(tmp_path)) as first:
        acct = await first.account()
    combos = [(s, t) for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT") for t in
              ("1m", "5m", "15m", "30m", "1h", "4h")][: MAX_MARKETS + 1]  # fmt: skip
    jobs = [{"account": acct, "symbol": s, "timeframe": t} for s, t in combos]
    async with serve(make_settings(tmp_path, scheduler={"jobs": jobs})) as api:
        err = assert_error(await api.post("/pipeline/run", {"accountId": acct}), 422, "accountId")
        assert str(MAX_MARKETS) in err["message"]
        assert calls(api.source) == 0


async def test_a_market_off_the_allowlist_is_422(tmp_path: Path) -> None:
    """A settings job outside the deployment's allowlists is refused, naming accountId."""
    async with serve(make_settings(tmp_path)) as first:
        acct = await first.account()
    job = {"account": acct, "symbol": "PEPEUSDT", "timeframe": "1h"}
    async with serve(make_settings(tmp_path, scheduler={"jobs": [job]})) as api:
        err = assert_error(await api.post("/pipeline/run", {"accountId": acct}), 422, "accountId")
        assert "PEPEUSDT" in err["message"]


# -- the single form --------------------------------------------------------------------------


async def test_the_single_form_is_unchanged_for_a_known_account(api: Api) -> None:
    """With symbol and timeframe the answer is the one run, as before, even when the
    account has markets of its own."""
    acct = await api.account(markets=[ETH_4H])
    resp = await api.post("/pipeline/run", {"accountId": acct} | BTC_1H)
    assert resp.status_code == 201, resp.text
    run = resp.json()
    assert (run["accountId"], run["symbol"], run["timeframe"]) == (acct, "BTCUSDT", "1h")
    assert run["steps"]["risk-manager"]["meta"]["status"] == "ok"
    assert await api.get(f"/pipeline/runs/{run['runId']}") == run
    assert (await api.get("/pipeline/runs"))["total"] == 1


# -- idempotency ------------------------------------------------------------------------------


async def test_the_same_key_replays_the_stored_runs(api: Api) -> None:
    """The same key and body answer the stored runs (200, replayed) without running; the
    key with another body is 422; the single form with the key is 422 too."""
    acct = await api.account(markets=[BTC_1H, ETH_4H])
    key = {"Idempotency-Key": "seed-7f3a"}
    first = await api.post("/pipeline/run", {"accountId": acct}, headers=key)
    assert first.status_code == 201, first.text
    fetched = calls(api.source)
    again = await api.post("/pipeline/run", {"useHttpAgents": None, "accountId": acct},
                           headers=key)  # fmt: skip
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert calls(api.source) == fetched
    other = {"accountId": acct, "useHttpAgents": False}
    assert_error(await api.post("/pipeline/run", other, headers=key), 422, "Idempotency-Key")
    single = {"accountId": acct} | BTC_1H
    assert_error(await api.post("/pipeline/run", single, headers=key), 422, "Idempotency-Key")
    assert (await api.get("/pipeline/runs"))["total"] == 2


class HeldSource:
    """A source whose fetches of ``symbol`` wait until ``gate`` is set."""

    def __init__(self, inner: Any, symbol: str) -> None:
        self.inner, self.symbol = inner, symbol
        self.name, self.simulated = inner.name, inner.simulated
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def get_candles(
        self, symbol: str, timeframe: Timeframe | str, limit: int, end: int | None = None
    ) -> Candles:
        if symbol == self.symbol:
            self.entered.set()
            await self.gate.wait()
        return await self.inner.get_candles(symbol, timeframe, limit, end)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_retry_after_a_market_times_out_reuses_the_recorded_runs(
    tmp_path: Path,
) -> None:
    """A market past the run deadline makes the answer 503 (the other run stays recorded);
    the retry with the same key runs only the missing market and answers both."""
    settings = make_settings(tmp_path, pipeline={"run_deadline_s": 1.5})
    held = HeldSource(open_source("sim", settings, now_ms=_now_ms), "ETHUSDT")
    async with serve(settings, held) as api:
        acct = await api.account(markets=[BTC_1H, ETH_4H])
        key = {"Idempotency-Key": "retry-1"}
        failed = await api.post("/pipeline/run", {"accountId": acct}, headers=key)
        assert "ETHUSDT" in assert_error(failed, 503)["message"]
        assert failed.headers["retry-after"]
        recorded = (await api.get("/pipeline/runs", accountId=acct))["items"]
        assert [r["symbol"] for r in recorded] == ["BTCUSDT"]
        held.gate.set()
        retry = await api.post("/pipeline/run", {"accountId": acct}, headers=key)
        assert retry.status_code == 201, retry.text
        runs = retry.json()["runs"]
        assert markets(retry.json()) == [("BTCUSDT", "1h"), ("ETHUSDT", "4h")]
        assert runs[0]["runId"] == recorded[0]["runId"]
        assert (await api.get("/pipeline/runs", accountId=acct))["total"] == 2
        replay = await api.post("/pipeline/run", {"accountId": acct}, headers=key)
        assert (replay.status_code, replay.json()) == (200, retry.json())


async def test_the_same_key_while_running_is_409(tmp_path: Path) -> None:
    """The same key and body while the first request still runs is 409; the first then
    answers 201 and a later repeat replays it."""
    settings = make_settings(tmp_path)
    held = HeldSource(open_source("sim", settings, now_ms=_now_ms), "ETHUSDT")
    async with serve(settings, held) as api:
        acct = await api.account(markets=[BTC_1H, ETH_4H])
        key = {"Idempotency-Key": "in-flight"}
        first = asyncio.create_task(api.post("/pipeline/run", {"accountId": acct}, headers=key))
        await asyncio.wait_for(held.entered.wait(), 10)
        busy = await api.post("/pipeline/run", {"accountId": acct}, headers=key)
        assert_error(busy, 409, "Idempotency-Key")
        held.gate.set()
        done = await first
        assert done.status_code == 201, done.text
        replay = await api.post("/pipeline/run", {"accountId": acct}, headers=key)
        assert (replay.status_code, replay.json()) == (200, done.json())


# -- the documentation ------------------------------------------------------------------------


async def test_openapi_documents_both_forms(api: Api) -> None:
    """The body needs neither symbol nor timeframe (still listing the allowlists); the 201
    answer is a run or ``{"accountId", "runs"}``; 404 is documented."""
    spec = await api.get("/openapi.json")
    post = spec["paths"]["/pipeline/run"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert not set(body.get("required", [])) & {"symbol", "timeframe"}
    assert "BTCUSDT" in body["properties"]["symbol"]["enum"]
    shapes = post["responses"]["201"]["content"]["application/json"]["schema"]["oneOf"]
    assert any({"accountId", "runs"} <= set(s.get("properties", {})) for s in shapes)
    assert "404" in post["responses"]
