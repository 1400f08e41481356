"""The orchestrator API in process (ASGI transport), over SQLite in tmp_path and the sim source."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from sqlalchemy.exc import OperationalError

from conclave.agents import REGISTRY
from conclave.errors import StoreUnavailableError
from conclave.market.candles import Candles
from conclave.market.sources import open_source
from conclave.services.api import create_app
from conclave.services.runtime import agent_endpoints, open_store
from conclave.settings import Settings
from conclave.timeframes import Timeframe
from tests.conftest import need
from tests.pipeline.helpers import CountingSource

RUN = {"symbol": "BTCUSDT", "timeframe": "1h"}
LEAKS = ("Traceback", 'File "', "postgres://", "postgresql", "SELECT ", "INSERT ", "sqlite3")


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Embedded defaults in tmp_path whatever the environment says (no .env file read)."""
    base: dict[str, Any] = {
        "data_dir": tmp_path,
        "logs_dir": tmp_path / "logs",
        "database_url": None,
        "redis_url": None,
        "use_http_agents": False,
    }
    return Settings(_env_file=None, **(base | overrides))  # type: ignore[call-arg]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GatedSource(CountingSource):
    """A counting source whose fetches wait until ``gate`` is set."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def get_candles(
        self, symbol: str, timeframe: Timeframe | str, limit: int, end: int | None = None
    ) -> Candles:
        self.entered.set()
        await self.gate.wait()
        return await super().get_candles(symbol, timeframe, limit, end)


class FlakyStore:
    """Delegates to a real store; ``fail`` maps a method name to the exception it raises."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.fail: dict[str, BaseException] = {}

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if name in self.fail:
                raise self.fail[name]
            return await method(*args, **kwargs)

        return call


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def source(settings: Settings) -> CountingSource:
    return CountingSource(open_source("sim", settings, now_ms=_now_ms))


def _now_ms() -> int:
    import time

    return time.time_ns() // 1_000_000


Client = Callable[..., Any]


async def _client(settings: Settings, **kwargs: Any) -> AsyncIterator[httpx2.AsyncClient]:
    app = create_app(settings, **kwargs)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            yield c


@pytest.fixture
async def api(settings: Settings, source: CountingSource) -> AsyncIterator[httpx2.AsyncClient]:
    async for c in _client(settings, source=source):
        yield c


def calls(source: CountingSource) -> int:
    return sum(source.calls.values())


def assert_error(resp: httpx2.Response, status: int, field: str | None = None) -> dict[str, Any]:
    """``resp`` is a JSON error of ``status`` naming ``field``, leaking nothing (E11)."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    for leak in LEAKS:
        assert leak not in resp.text
    body: dict[str, Any] = resp.json()["error"]
    assert body["code"]
    assert body["message"]
    if field is not None:
        assert body["field"] == field
    return body


# -- the run and reading it back ------------------------------------------------------------


async def test_post_run_records_nine_steps_and_a_decision(api: httpx2.AsyncClient) -> None:
    """POST answers 201 with nine steps and a decision; GET by id returns it unchanged."""
    resp = await api.post("/pipeline/run", json=RUN)
    assert resp.status_code == 201, resp.text
    run = resp.json()
    assert set(run["steps"]) == set(REGISTRY)
    assert run["decision"]["status"] in ("ok", "blocked", "failed", "no_signal")
    assert run["simulated"] is True
    back = await api.get(f"/pipeline/runs/{run['runId']}")
    assert back.status_code == 200
    assert back.json() == run


async def test_list_filters_paginates_and_counts(api: httpx2.AsyncClient) -> None:
    """The list filters by account, symbol and status, pages with limit/offset, counts all."""
    ids = []
    new = {"name": "a", "balance": 10_000, "quote": "USDT"}
    acct = (await api.post("/accounts", json=new)).json()["id"]  # an unknown account is 404
    for body in (RUN, RUN, {"symbol": "ETHUSDT", "timeframe": "4h", "accountId": acct}):
        resp = await api.post("/pipeline/run", json=body)
        assert resp.status_code == 201, resp.text
        ids.append(resp.json()["runId"])
    page = (await api.get("/pipeline/runs", params={"symbol": "BTCUSDT", "limit": 1})).json()
    assert (page["total"], page["limit"], page["offset"], len(page["items"])) == (2, 1, 0, 1)
    second = await api.get("/pipeline/runs", params={"symbol": "BTCUSDT", "limit": 1, "offset": 1})
    both = {page["items"][0]["runId"], second.json()["items"][0]["runId"]}
    assert both == set(ids[:2])
    by_account = (await api.get("/pipeline/runs", params={"accountId": acct})).json()
    assert [r["runId"] for r in by_account["items"]] == [ids[2]]
    status = by_account["items"][0]["status"]
    by_status = (await api.get("/pipeline/runs", params={"status": status})).json()
    assert ids[2] in {r["runId"] for r in by_status["items"]}
    assert all(r["status"] == status for r in by_status["items"])
    assert (await api.get("/pipeline/runs")).json()["total"] == 3


async def test_unknown_run_is_404_and_a_malformed_id_422(api: httpx2.AsyncClient) -> None:
    """An id of the right form that was never recorded is 404; any other form is 422."""
    assert_error(await api.get("/pipeline/runs/" + "a" * 32), 404)
    assert_error(await api.get("/pipeline/runs/..%2F..%2Fetc"), 404)  # no such route
    assert_error(await api.get("/pipeline/runs/'1'%20OR%201=1"), 422, "run_id")
    assert_error(await api.get("/pipeline/runs/" + "z" * 32), 422, "run_id")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": -1}, "offset"),
        ({"status": "won"}, "status"),
        ({"symbol": "btcusdt"}, "symbol"),
        ({"accountId": "../x"}, "accountId"),
    ],
)
async def test_bad_list_query_is_422_naming_it(
    api: httpx2.AsyncClient, params: dict[str, Any], field: str
) -> None:
    """Every list filter is checked and a bad one is named."""
    assert_error(await api.get("/pipeline/runs", params=params), 422, field)


# -- bad input (E2, E3, E4, E11) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"symbol": "btcusdt", "timeframe": "1h"}, "symbol"),
        ({"symbol": "BTCUSDT", "timeframe": "1H"}, "timeframe"),
        ({"symbol": "BTCUSDT", "timeframe": "1M"}, "timeframe"),
        ({"symbol": "../", "timeframe": "1h"}, "symbol"),
        ({"symbol": "B" * 10_240, "timeframe": "1h"}, "symbol"),
        ({"symbol": "PEPEUSDT", "timeframe": "1h"}, "symbol"),
        ({"symbol": "BTC\u0000USDT", "timeframe": "1h"}, "symbol"),
        ({"symbol": "BTCUSDT", "timeframe": "../1h"}, "timeframe"),
        ({"symbol": "BTCUSDT", "timeframe": "1h", "accountId": "../../etc"}, "accountId"),
        ({"symbol": 5, "timeframe": "1h"}, "symbol"),
        ({"symbol": "BTCUSDT", "timeframe": "1h", "useHttpAgents": "yes"}, "useHttpAgents"),
        ({"symbol": "BTCUSDT", "timeframe": "1h", "extra": 1}, "extra"),
        ({"timeframe": "1h"}, "symbol"),
        ([RUN], "body"),
    ],
)
async def test_bad_run_body_is_422_before_any_io(
    api: httpx2.AsyncClient, source: CountingSource, body: Any, field: str
) -> None:
    """E4/E2: a bad field is 422 naming it, and the source is never called."""
    assert_error(await api.post("/pipeline/run", json=body), 422, field)
    assert calls(source) == 0
    assert (await api.get("/pipeline/runs")).json()["total"] == 0


async def test_malformed_json_is_400_and_other_media_415(
    api: httpx2.AsyncClient, source: CountingSource
) -> None:
    """E2: bad JSON (also 10k-deep nesting) is 400, a non-JSON content type 415."""
    json_ct = {"content-type": "application/json"}
    assert_error(await api.post("/pipeline/run", content=b'{"symbol":', headers=json_ct), 400)
    deep = b"[" * 10_000 + b"]" * 10_000
    assert_error(await api.post("/pipeline/run", content=deep, headers=json_ct), 400)
    form = {"content-type": "application/x-www-form-urlencoded"}
    assert_error(await api.post("/pipeline/run", content=b"symbol=BTCUSDT", headers=form), 415)
    assert calls(source) == 0


async def test_body_over_the_limit_is_413_with_or_without_length(
    api: httpx2.AsyncClient, settings: Settings, source: CountingSource
) -> None:
    """E3: a body over api.max_body_bytes is 413, declared or chunked without a length."""
    big = json.dumps(RUN | {"pad": "x" * (settings.api.max_body_bytes + 1)}).encode()
    json_ct = {"content-type": "application/json"}
    assert_error(await api.post("/pipeline/run", content=big, headers=json_ct), 413)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096]

    resp = await api.post("/pipeline/run", content=chunks(), headers=json_ct)
    assert "content-length" not in resp.request.headers
    assert_error(resp, 413)
    assert calls(source) == 0


async def test_unexpected_failure_is_a_bare_500(tmp_path: Path, settings: Settings) -> None:
    """E11: an unexpected exception answers 500 with a fixed message, no traceback."""
    store = FlakyStore(await open_store(settings))
    store.fail["list_runs"] = RuntimeError("boom at /srv/conclave/store.py line 12")
    async for api in _client(settings, store=store):
        body = assert_error(await api.get("/pipeline/runs"), 500)
        assert "boom" not in body["message"]


# -- the database down ----------------------------------------------------------------------


def _db_down() -> OperationalError:
    return OperationalError(
        "INSERT INTO runs VALUES (?)", {}, Exception("postgres://u:pw@db.internal down")
    )


async def test_database_down_is_503_with_retry_after(settings: Settings) -> None:
    """D6: the database unreachable answers 503 + Retry-After, no SQL or host (E11); the
    idempotency key is released, so the same request succeeds once the database is back."""
    store = FlakyStore(await open_store(settings))
    async for api in _client(settings, store=store):
        store.fail["save_run"] = StoreUnavailableError("the run store is unavailable")
        key = {"Idempotency-Key": "db-down-1"}
        resp = await api.post("/pipeline/run", json=RUN, headers=key)
        assert_error(resp, 503)
        assert int(resp.headers["retry-after"]) > 0
        store.fail["list_runs"] = _db_down()
        assert_error(await api.get("/pipeline/runs"), 503)
        store.fail["health"] = _db_down()
        health = await api.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "degraded"
        assert "pw@" not in health.text
        store.fail.clear()
        again = await api.post("/pipeline/run", json=RUN, headers=key)
        assert again.status_code == 201, again.text
        assert (await api.get("/health")).status_code == 200


async def test_run_past_its_deadline_is_503_and_frees_the_key(tmp_path: Path) -> None:
    """A run that cannot finish within pipeline.run_deadline_s is 503, not a hung request."""
    settings = make_settings(tmp_path, pipeline={"run_deadline_s": 0.2})
    gated = GatedSource(open_source("sim", settings, now_ms=_now_ms))
    async for api in _client(settings, source=gated):
        key = {"Idempotency-Key": "slow-1"}
        resp = await api.post("/pipeline/run", json=RUN, headers=key)
        assert_error(resp, 503)
        gated.gate.set()
        assert (await api.post("/pipeline/run", json=RUN, headers=key)).status_code == 201


# -- idempotency (G2, G3) -------------------------------------------------------------------


async def test_same_key_replays_the_stored_run(
    api: httpx2.AsyncClient, source: CountingSource
) -> None:
    """G2: the same key and body answer the same run (200, replayed) without running again."""
    key = {"Idempotency-Key": "order-7f3a"}
    first = await api.post("/pipeline/run", json=RUN, headers=key)
    assert first.status_code == 201
    fetched = calls(source)
    second = await api.post("/pipeline/run", json=dict(reversed(RUN.items())), headers=key)
    assert second.status_code == 200
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()
    assert calls(source) == fetched
    assert (await api.get("/pipeline/runs")).json()["total"] == 1


async def test_same_key_other_body_is_422(api: httpx2.AsyncClient) -> None:
    """G3: a key reused with a different body is refused, and nothing runs."""
    key = {"Idempotency-Key": "k-1"}
    assert (await api.post("/pipeline/run", json=RUN, headers=key)).status_code == 201
    other = RUN | {"symbol": "ETHUSDT"}
    assert_error(await api.post("/pipeline/run", json=other, headers=key), 422, "Idempotency-Key")
    assert (await api.get("/pipeline/runs")).json()["total"] == 1


async def test_bad_idempotency_key_is_422(api: httpx2.AsyncClient) -> None:
    """A key of control characters or over 255 characters is refused, naming the header."""
    for bad in ("x" * 256, "has space"):
        resp = await api.post("/pipeline/run", json=RUN, headers={"Idempotency-Key": bad})
        assert_error(resp, 422, "Idempotency-Key")


async def test_same_key_while_running_is_409(settings: Settings) -> None:
    """G3: the same key while its first request still runs is 409; the first then ends 201."""
    gated = GatedSource(open_source("sim", settings, now_ms=_now_ms))
    async for api in _client(settings, source=gated):
        key = {"Idempotency-Key": "in-flight"}
        first = asyncio.create_task(api.post("/pipeline/run", json=RUN, headers=key))
        await asyncio.wait_for(gated.entered.wait(), 10)
        assert_error(await api.post("/pipeline/run", json=RUN, headers=key), 409)
        gated.gate.set()
        assert (await first).status_code == 201
        replay = await api.post("/pipeline/run", json=RUN, headers=key)
        assert replay.status_code == 200
        assert replay.json()["runId"] == (await first).json()["runId"]


async def test_concurrent_same_key_runs_once(
    api: httpx2.AsyncClient, source: CountingSource
) -> None:
    """G1/G3: concurrent requests with one key give one 201; the rest 409 or a replay."""
    key = {"Idempotency-Key": "race-1"}
    answers = await asyncio.gather(
        *(api.post("/pipeline/run", json=RUN, headers=key) for _ in range(5))
    )
    codes = sorted(a.status_code for a in answers)
    assert codes.count(201) == 1
    assert set(codes) <= {200, 201, 409}
    assert (await api.get("/pipeline/runs")).json()["total"] == 1


# -- modes ----------------------------------------------------------------------------------


def test_modes_follow_request_then_agent_then_global(tmp_path: Path) -> None:
    """Item 4: request override beats the per-agent setting, which beats USE_HTTP_AGENTS;
    the URL is the per-agent one, else the base URL plus the agent's port."""
    s = make_settings(
        tmp_path,
        agent_services_base_url="http://10.0.0.5",
        agents={"http": {"momentum": True}, "urls": {"order-flow": "http://flow:80/"}},
    )
    modes = {e.name: e for e in agent_endpoints(s, REGISTRY)}
    assert modes["momentum"].mode == "http"
    assert modes["market-structure"].mode == "local"
    assert modes["market-structure"].url == "http://10.0.0.5:5001"
    assert modes["order-flow"].url == "http://flow:80"
    assert {e.mode for e in agent_endpoints(s, REGISTRY, False)} == {"local"}
    assert {e.mode for e in agent_endpoints(s, REGISTRY, True)} == {"http"}
    everything = make_settings(tmp_path, use_http_agents=True, agents={"http": {"momentum": False}})
    modes = {e.name: e.mode for e in agent_endpoints(everything, REGISTRY)}
    assert modes.pop("momentum") == "local"
    assert set(modes.values()) == {"http"}


async def test_http_agents_down_fail_every_step_and_are_recorded(
    tmp_path: Path, source: CountingSource
) -> None:
    """useHttpAgents with no service listening: every step fails (connection refused), the
    decision is failed (never a 500), and the run is recorded."""
    ports = {name: closed_port() for name in REGISTRY}
    settings = make_settings(tmp_path, agents={"ports": ports, "timeout_s": 1.0})
    async for api in _client(settings, source=source):
        resp = await api.post("/pipeline/run", json=RUN | {"useHttpAgents": True})
        assert resp.status_code == 201, resp.text
        run = resp.json()
        for step in run["steps"].values():
            assert step["meta"]["status"] == "error"
            assert step["meta"]["reason"].startswith("connection_refused")
        assert run["decision"]["status"] == "failed"
        assert run["decision"]["reason"].startswith("insufficient_agents")
        assert sorted(run["missingAgents"]) == sorted(REGISTRY)
        assert (await api.get(f"/pipeline/runs/{run['runId']}")).json() == run
        agents = {a["name"]: a for a in (await api.get("/agents")).json()}
        assert {a["mode"] for a in agents.values()} == {"local"}
        checked = (await api.get("/agents", params={"useHttpAgents": "true"})).json()
        assert {(a["mode"], a["status"]) for a in checked} == {("http", "down")}


async def test_mixed_deployment_calls_only_the_http_agent(
    tmp_path: Path, source: CountingSource
) -> None:
    """A per-agent HTTP setting: only that agent goes over HTTP; it down, the run is
    degraded naming it (C1) and the other eight answer in process."""
    port = closed_port()
    agents = {"http": {"momentum": True}, "ports": {"momentum": port}}
    settings = make_settings(tmp_path, agents=agents)
    async for api in _client(settings, source=source):
        run = (await api.post("/pipeline/run", json=RUN)).json()
        assert run["degraded"] is True
        assert run["missingAgents"] == ["momentum"]
        assert run["steps"]["momentum"]["meta"]["reason"].startswith("connection_refused")
        agents = {a["name"]: a for a in (await api.get("/agents")).json()}
        assert agents["momentum"]["mode"] == "http"
        assert agents["momentum"]["status"] == "down"
        assert agents["momentum"]["url"] == f"http://127.0.0.1:{port}"
        assert all(a["status"] == "ok" for n, a in agents.items() if n != "momentum")
        health = (await api.get("/health")).json()
        assert health["mode"] == "mixed"


# -- health and docs ------------------------------------------------------------------------


async def test_health_reports_dependencies_without_secrets(tmp_path: Path) -> None:
    """/health names the database, cache and source state and never a password."""
    settings = make_settings(tmp_path, redis_url="redis://:s3cret-pw@127.0.0.1:1/0")
    async for api in _client(settings):
        resp = await api.get("/health")
        report = resp.json()
        assert report["mode"] == "monolithic"
        deps = report["dependencies"]
        assert deps["database"]["status"] == "ok"
        assert deps["cache"]["backend"] == "redis"
        assert deps["exchange"]["simulated"] is True
        assert "s3cret" not in resp.text


async def test_health_ok_on_embedded_defaults(api: httpx2.AsyncClient) -> None:
    """SQLite, the memory cache and the sim source: status ok."""
    report = (await api.get("/health")).json()
    assert report["status"] == "ok"
    assert report["dependencies"]["cache"] == {"backend": "memory", "status": "ok"}


async def test_openapi_documents_every_endpoint(api: httpx2.AsyncClient) -> None:
    """/openapi.json lists the five endpoints with the run body's allowlists; /docs serves."""
    spec = (await api.get("/openapi.json")).json()
    paths = {"/health", "/pipeline/run", "/pipeline/runs", "/pipeline/runs/{run_id}", "/agents"}
    assert paths <= set(spec["paths"])
    body = spec["paths"]["/pipeline/run"]["post"]["requestBody"]["content"]["application/json"]
    assert "BTCUSDT" in body["schema"]["properties"]["symbol"]["enum"]
    assert (await api.get("/docs")).status_code == 200


# -- PostgreSQL ------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_round_trip_on_postgresql(tmp_path: Path) -> None:
    """With DATABASE_URL set: POST, read back identical, listed, replayed by key."""
    url = os.environ.get("DATABASE_URL", "")
    need(bool(url), "DATABASE_URL is not set")
    settings = make_settings(tmp_path, database_url=url)
    async for api in _client(settings):
        key = {"Idempotency-Key": f"pg-{os.getpid()}-{_now_ms()}"}
        run = await api.post("/pipeline/run", json=RUN, headers=key)
        assert run.status_code == 201, run.text
        run_id = run.json()["runId"]
        assert (await api.get(f"/pipeline/runs/{run_id}")).json() == run.json()
        replay = await api.post("/pipeline/run", json=RUN, headers=key)
        assert replay.json()["runId"] == run_id
        assert (await api.get("/health")).json()["dependencies"]["database"]["status"] == "ok"
