"""The agent service app in process (ASGI transport): the wire contract and bad input."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
import structlog

from conclave.agents import REGISTRY, AgentInput
from conclave.market.gateway import MarketGateway
from conclave.pipeline import Pipeline
from conclave.pipeline.wire import encode_input
from conclave.services.agent_app import as_of_input, create_agent_app
from conclave.settings import AgentServiceSettings, MarketSettings, Settings
from conclave.timeframes import HOUR_MS, iso_ms
from tests.pipeline.helpers import CountingSource
from tests.services.helpers import FILE_AS_OF, SIM_NOW, context_at, file_gateway, sim_gateway

JSON = {"content-type": "application/json"}
IDS = {"accountId": "demo", "symbol": "BTCUSDT", "timeframe": "1h"}


def settings(max_body: int = 1_048_576) -> Settings:
    return Settings(
        _env_file=None,
        redis_url=None,
        market=MarketSettings(source="sim"),
        agents=AgentServiceSettings(max_body_bytes=max_body),
    )


@contextlib.asynccontextmanager
async def client(
    name: str,
    cfg: Settings | None = None,
    gateway: MarketGateway | None = None,
    *,
    raise_app_exceptions: bool = True,
) -> AsyncIterator[httpx2.AsyncClient]:
    app = create_agent_app(name, cfg or settings(), now_ms=lambda: SIM_NOW, gateway=gateway)
    transport = httpx2.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=transport, base_url="http://a") as c,
    ):
        yield c


def assert_clean_error(resp: httpx2.Response, status: int, field: str | None = None) -> None:
    """An error in the common shape, naming ``field``, with nothing internal in it."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert err["code"]
    assert err["message"]
    if field is not None:
        assert err["field"] == field, err
    for leak in ("Traceback", 'File "', "postgres://", "sqlite"):
        assert leak not in resp.text


async def test_health_answers_the_documented_shape() -> None:
    """GET /health: exactly status, agent and an ISO timestamp with ms and Z."""
    async with client("market-structure") as c:
        resp = await c.get("/health")
    body = resp.json()
    assert {k: body[k] for k in ("status", "agent", "timestamp")} == {
        "status": "ok",
        "agent": "market-structure",
        "timestamp": iso_ms(SIM_NOW),
    }  # the seed's fields; the detail is tests/services/test_agent_health.py's


async def test_info_describes_needs_parameters_and_schema() -> None:
    """GET /info: name, version, endpoints plus description, timeframes, lookback, parameters."""
    async with client("multi-timeframe") as c:
        info = (await c.get("/info")).json()
    assert info["name"] == "multi-timeframe"
    assert info["version"]
    assert set(info["endpoints"]) == {"health", "info", "run"}
    assert info["description"]
    assert info["timeframes"]
    assert info["lookback"]["1h"] >= info["needs"]["minBars"]
    agent = REGISTRY["multi-timeframe"]()
    assert info["minBars"] == {tf: agent.min_bars(tf) for tf in info["timeframes"]}
    assert info["higherTimeframes"]["1h"] == ["4h", "1d"]
    assert isinstance(info["parameters"], dict)
    assert info["parametersSchema"]["type"] == "object"


@pytest.mark.parametrize("name", list(REGISTRY))
async def test_ids_only_context_is_resolved_by_the_service(name: str) -> None:
    """POST /run with ids only: the service reads its own (sim) data and answers the contract."""
    async with client(name) as c:
        resp = await c.post("/run", json=IDS)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"score", "confidence", "payload", "meta"}
    assert {"agent", "duration_ms", "timestamp", "version", "as_of", "status", "reason"} <= set(
        body["meta"]
    )
    assert body["meta"]["agent"] == name
    assert -1 <= body["score"] <= 1
    assert 0 <= body["confidence"] <= 100
    if name == "risk-manager":  # a named account without an account store is not tradable
        assert body["payload"]["allowed"] is False


async def test_ids_only_outside_the_allowlist_is_refused_before_any_io() -> None:
    """E4: a symbol not in the allowlist is 422 naming it, and the source is never called."""
    from conclave.market.sources.sim import SimSource

    source = CountingSource(SimSource(now_ms=lambda: SIM_NOW))
    async with client("momentum", gateway=MarketGateway(source)) as c:
        resp = await c.post("/run", json={**IDS, "symbol": "SHIBUSDT"})
        resp_tf = await c.post("/run", json={**IDS, "timeframe": "1M"})
    assert_clean_error(resp, 422, "symbol")
    assert_clean_error(resp_tf, 422, "timeframe")
    assert not source.calls


@pytest.mark.shared_data
@pytest.mark.parametrize("name", list(REGISTRY))
async def test_inline_context_is_used_as_given(name: str, shared_data: Path) -> None:
    """An inline context gives exactly what the agent computes on that input in process."""
    async with Pipeline(file_gateway(shared_data)) as pipe:
        ctx = await context_at(pipe, FILE_AS_OF[0], account_id=None)
    agent_input = ctx.input_for(pipe.agents[name])
    local = REGISTRY[name]().run(agent_input, now_iso="x")
    async with client(name) as c:
        resp = await c.post("/run", content=encode_input(agent_input), headers=JSON)
    body = resp.json()
    assert (body["score"], body["confidence"]) == (local.score, local.confidence)
    assert body["payload"] == orjson.loads(orjson.dumps(local.payload))
    assert body["meta"]["as_of"] == local.as_of


@pytest.mark.shared_data
async def test_run_route_reads_a_chunked_body_and_leaves_other_methods_to_fastapi(
    shared_data: Path,
) -> None:
    """The pure ASGI POST /run: a body streamed in chunks answers like the whole body;
    other methods and paths still reach FastAPI (405, 404 in the common shape, /docs)."""
    async with Pipeline(file_gateway(shared_data)) as pipe:
        ctx = await context_at(pipe, FILE_AS_OF[0], account_id=None)
    raw = encode_input(ctx.input_for(pipe.agents["momentum"]))

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(raw), 4096):
            yield raw[i : i + 4096]

    async with client("momentum") as c:
        whole = await c.post("/run", content=raw, headers=JSON)
        streamed = await c.post("/run", content=chunks(), headers=JSON)
        assert_clean_error(await c.put("/run", content=raw, headers=JSON), 405)
        assert_clean_error(await c.post("/run/x", content=raw, headers=JSON), 404)
        docs = await c.get("/openapi.json")
    assert "content-length" not in streamed.request.headers
    assert whole.status_code == streamed.status_code == 200
    assert whole.headers["content-type"] == "application/json"
    one, two = whole.json(), streamed.json()
    one["meta"].pop("duration_ms"), two["meta"].pop("duration_ms")
    assert one == two
    assert "/run" in docs.json()["paths"]


def _inline(**override: Any) -> dict[str, Any]:
    cols = {"openTime": [0, 3_600_000], "open": [1.0, 2.0], "high": [1.0, 2.0],
            "low": [1.0, 2.0], "close": [1.0, 2.0], "volume": [1.0, 2.0]}  # fmt: skip
    body: dict[str, Any] = {**IDS, "asOf": 7_200_000, "candles": {"1h": cols}}
    for key, value in override.items():
        if key.startswith("col_"):
            cols[key[4:]] = value
        else:
            body[key] = value
    return body


BAD_BODIES: list[tuple[str, bytes, int, str | None]] = [
    ("malformed", b'{"symbol": "BTCUSDT",', 400, "body"),
    ("deep nesting", b"[" * 10_000 + b"]" * 10_000, 400, "body"),
    ("lone surrogate", b'{"symbol": "\\ud800"}', 400, "body"),
    ("not an object", b"[1, 2]", 422, "body"),
    ("symbol a number", orjson.dumps({**IDS, "symbol": 5}), 422, "symbol"),
    ("lower-case symbol", orjson.dumps({**IDS, "symbol": "btcusdt"}), 422, "symbol"),
    ("path symbol", orjson.dumps({**IDS, "symbol": "../etc"}), 422, "symbol"),
    ("NUL symbol", orjson.dumps({**IDS, "symbol": "BTC\x00USDT"}), 422, "symbol"),
    ("1 MB symbol", orjson.dumps({**IDS, "symbol": "A" * 1_000_000}), 422, "symbol"),
    ("timeframe case", orjson.dumps({**IDS, "timeframe": "1H"}), 422, "timeframe"),
    ("account id object", orjson.dumps({**IDS, "accountId": {"x": 1}}), 422, "accountId"),
    ("inline without asOf", orjson.dumps(_inline(asOf=None)), 422, "asOf"),
    (
        "strings for numbers",
        orjson.dumps(_inline(col_close=["1", "2"])),
        422,
        "candles.1h.close[0]",
    ),
    ("extra nesting", orjson.dumps(_inline(col_close=[[1.0], [2.0]])), 422, "candles.1h.close[0]"),
    ("short column", orjson.dumps(_inline(col_volume=[1.0])), 422, "candles.1h.volume"),
    ("float times", orjson.dumps(_inline(col_openTime=[0.5, 1.5])), 422, "candles.1h.openTime[0]"),
    (
        "unsorted times",
        orjson.dumps(_inline(col_openTime=[3_600_000, 0])),
        422,
        "candles.1h.openTime[1]",
    ),
    ("repeated time", orjson.dumps(_inline(col_openTime=[0, 0])), 422, "candles.1h.openTime[1]"),
    ("null price", orjson.dumps(_inline(col_close=[1.0, None])), 422, "candles.1h.close[1]"),
    ("NaN as text", orjson.dumps(_inline(col_high=[1.0, "NaN"])), 422, "candles.1h.high[1]"),
    ("NaN literal", b'{"symbol":"BTCUSDT","candles":{"1h":{"open":[NaN]}}}', 400, "body"),
    ("high below low", orjson.dumps(_inline(col_high=[1.0, 1.5])), 422, "candles.1h.high[1]"),
    ("negative price", orjson.dumps(_inline(col_low=[-1.0, 2.0])), 422, "candles.1h.low[0]"),
    ("zero open", orjson.dumps(_inline(col_open=[1.0, 0.0])), 422, "candles.1h.open[1]"),
    ("negative volume", orjson.dumps(_inline(col_volume=[1.0, -2.0])), 422, "candles.1h.volume[1]"),
    (
        "taker above volume",
        orjson.dumps(_inline(col_takerBuyVolume=[2.0, 1.0])),
        422,
        "candles.1h.takerBuyVolume[0]",
    ),
    ("unknown column", orjson.dumps(_inline(col_vwap=[1.0, 2.0])), 422, "candles.1h.vwap"),
    ("missing base", orjson.dumps(_inline(timeframe="4h")), 422, "candles.4h"),
    ("news not a list", orjson.dumps(_inline(news="x")), 422, "news"),
    ("account equity", orjson.dumps(_inline(account={"equity": [1.0]})), 422, "account.equity"),
    ("ragged column", orjson.dumps(_inline(col_open=[1.0, [2.0]])), 422, "candles.1h.open[1]"),
    ("asOf before 1970", orjson.dumps({**IDS, "asOf": "1900-01-01"}), 422, "asOf"),
    ("asOf far future", orjson.dumps({**IDS, "asOf": "9999-12-31T23:59:59-14:00"}), 422, "asOf"),
]


@pytest.mark.parametrize(
    ("label", "raw", "status", "field"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES]
)
async def test_bad_input_is_a_clean_4xx_naming_the_field(
    label: str, raw: bytes, status: int, field: str | None
) -> None:
    """E2/E11: malformed or mistyped input is 400/422 naming the field, nothing internal."""
    async with client("momentum") as c:
        resp = await c.post("/run", content=raw, headers=JSON)
    assert_clean_error(resp, status, field)


async def test_wrong_content_type_unknown_route_and_method_are_clean_errors() -> None:
    """415 for a non-JSON content type, 404 and 405 in the same error shape."""
    async with client("momentum") as c:
        assert_clean_error(
            await c.post("/run", content=b"{}", headers={"content-type": "text/plain"}), 415
        )
        assert_clean_error(await c.get("/nope"), 404)
        assert_clean_error(await c.get("/run"), 405)


async def test_declared_length_over_the_limit_is_413() -> None:
    """E3: a Content-Length over the limit is refused with 413."""
    async with client("momentum", settings(max_body=65_536)) as c:
        resp = await c.post("/run", content=b" " * 70_000, headers=JSON)
    assert_clean_error(resp, 413, "body")


async def test_chunked_body_over_the_limit_is_413_before_it_is_read_whole() -> None:
    """E3: a chunked body without Content-Length is cut off as soon as it passes the limit."""
    pulled = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(200):  # 12.8 MB if read whole
            pulled += 1
            yield b" " * 65_536

    async with client("momentum", settings(max_body=65_536)) as c:
        resp = await c.post("/run", content=chunks(), headers=JSON)
    assert "content-length" not in resp.request.headers
    assert_clean_error(resp, 413, "body")
    assert pulled <= 3


class _Broken(MarketGateway):
    def __init__(self) -> None:  # no source: every snapshot fails unexpectedly
        pass

    async def snapshot(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("db.internal.example:5432 exploded")


async def test_unexpected_failure_is_a_bare_500() -> None:
    """E11: an unexpected exception answers 500 'internal error', nothing of the cause."""
    async with client("momentum", gateway=_Broken(), raise_app_exceptions=False) as c:
        resp = await c.post("/run", json=IDS)
    assert_clean_error(resp, 500)
    assert resp.json() == {"error": {"code": "internal", "message": "internal error"}}
    assert "db.internal" not in resp.text


async def test_run_passes_through_every_middleware_of_the_app() -> None:
    """POST /run goes around FastAPI's router, not around the app's middleware: one added
    after the app was made sees it (as it sees any other request), with the answer."""
    app = create_agent_app("momentum", settings(), now_ms=lambda: SIM_NOW)
    seen: list[tuple[str, str, int]] = []

    class Recorder:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            async def record(message: Any) -> None:
                if message["type"] == "http.response.start":
                    seen.append((scope["method"], scope["path"], message["status"]))
                await send(message)

            await self.inner(scope, receive, record)

    app.add_middleware(Recorder)
    transport = httpx2.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=transport, base_url="http://a") as c,
    ):
        assert (await c.post("/run", json=IDS)).status_code == 200
        assert (await c.post("/run", content=b"{", headers=JSON)).status_code == 400
        assert (await c.get("/health/live")).status_code == 200
    assert seen == [("POST", "/run", 200), ("POST", "/run", 400), ("GET", "/health/live", 200)]


async def test_an_input_closed_at_its_as_of_is_used_as_it_is() -> None:
    """What the orchestrator sends (bars closed and fresh at asOf) comes back unchanged;
    the same input one bar earlier loses exactly its newest bar of the run's timeframe."""
    async with Pipeline(sim_gateway()) as pipe:
        ctx = await context_at(pipe, SIM_NOW)
    agent = pipe.agents["multi-timeframe"]
    given = ctx.input_for(agent)
    assert as_of_input(given, agent.min_bars("1h")) is given
    newest = int(given.candles.open_time[-1])
    earlier = as_of_input(replace(given, as_of_ms=newest + 1), agent.min_bars("1h"))
    assert isinstance(earlier, AgentInput)
    assert earlier.candles.equals(given.candles.take(slice(0, -1)))


async def test_a_repeated_no_data_reason_is_logged_once() -> None:
    """news-sentiment without news answers no_data every run: the info line comes at the
    first answer and again only when the reason changes (no source, no headlines, ...)."""
    body = _inline(candles={"1h": {"openTime": [0], "open": [1.0], "high": [1.0],
                                   "low": [1.0], "close": [1.0], "volume": [1.0]}},
                   asOf=HOUR_MS)  # fmt: skip
    answered = []
    async with client("news-sentiment") as c:
        with structlog.testing.capture_logs() as logs:
            for news in (None, None, [], [], None):
                meta = (await c.post("/run", json={**body, "news": news})).json()["meta"]
                assert meta["status"] == "no_data"
                answered.append(meta["reason"])
    logged = [e["reason"] for e in logs if e["event"] == "agent_no_signal"]
    assert logged == [answered[0], answered[2], answered[4]]
    assert answered[0] == answered[1] != answered[2] == answered[3] != answered[4]


def test_unknown_agent_name_is_refused_with_a_suggestion() -> None:
    """The factory refuses an unknown agent and suggests the nearest name."""
    from conclave.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="did you mean momentum"):
        create_agent_app("momentun", settings())


@pytest.fixture(autouse=True)
def _no_env_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
