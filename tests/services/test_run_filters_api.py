"""``GET /pipeline/runs?timeframe=&degraded=`` (issue 14, the Runs page's filters) in process
over a real store on SQLite and PostgreSQL (a fresh schema, dropped afterwards): the filters
reach the store, combine with the others, and a timeframe outside the allowlist or a
``degraded`` that is not a boolean is a 422 naming the field."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from conclave.services.api import create_app
from conclave.store import RunStore
from tests.services.test_api import make_settings
from tests.store.conftest import Target, drop_schema, fresh, pg_url

__all__ = ["pg_url"]  # the store tests' fixture: PostgreSQL of DATABASE_URL, or skip


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunStore]:
    if request.param == "sqlite":
        target = Target("sqlite", None, tmp_path, None)
    else:
        url = request.getfixturevalue("pg_url")
        target = Target("postgresql", url, tmp_path, f"conclave_test_{uuid.uuid4().hex[:12]}")
    opened = await target.open()
    try:
        yield opened
    finally:
        await opened.aclose()
        if target.schema is not None:
            assert target.database_url is not None
            await drop_schema(target.database_url, target.schema)


@pytest.fixture
async def api(store: RunStore, tmp_path: Path) -> AsyncIterator[httpx2.AsyncClient]:
    app = create_app(make_settings(tmp_path), store=store)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            yield c


async def _ids(api: httpx2.AsyncClient, **params: Any) -> tuple[list[str], int]:
    answer = await api.get("/pipeline/runs", params=params)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return [i["runId"] for i in body["items"]], body["total"]


async def test_runs_are_filtered_by_timeframe_and_degraded(
    api: httpx2.AsyncClient, store: RunStore
) -> None:
    made = await api.post("/pipeline/run", json={"symbol": "BTCUSDT", "timeframe": "1h"})
    assert made.status_code == 201, made.text
    real = made.json()  # a real run of the nine agents on the simulated market
    saved = [real]
    for timeframe, degraded in (("4h", False), ("1h", True), ("4h", True), ("1d", False)):
        wire = fresh(real, timeframe=timeframe, degraded=degraded,
                     missingAgents=["news-sentiment"] if degraded else [])  # fmt: skip
        await store.save_run(wire)
        saved.append(wire)

    def want(**match: Any) -> list[str]:
        return [w["runId"] for w in reversed(saved) if all(w[k] == v for k, v in match.items())]

    assert await _ids(api, timeframe="4h") == (want(timeframe="4h"), 2)
    assert await _ids(api, degraded="true") == (want(degraded=True), len(want(degraded=True)))
    assert await _ids(api, degraded="false") == (want(degraded=False), len(want(degraded=False)))
    assert await _ids(api, timeframe="4h", degraded="true") == ([saved[3]["runId"]], 1)
    assert await _ids(api, timeframe="1h", degraded="true", symbol="BTCUSDT") == (
        [saved[2]["runId"]],
        1,
    )
    assert await _ids(api, timeframe="15m") == ([], 0)  # allowed, nothing recorded
    ids, total = await _ids(api, timeframe="4h", limit=1, offset=1)
    assert (ids, total) == (want(timeframe="4h")[1:], 2)

    for params, field in (
        ({"timeframe": "2h"}, "timeframe"),  # a Binance interval, not in the allowlist
        ({"timeframe": "1hour"}, "timeframe"),
        ({"degraded": "maybe"}, "degraded"),
    ):
        answer = await api.get("/pipeline/runs", params=params)
        assert answer.status_code == 422, (params, answer.text)
        assert field in answer.text, (params, answer.text)


async def test_the_filters_are_documented(api: httpx2.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    params = {p["name"]: p for p in spec["paths"]["/pipeline/runs"]["get"]["parameters"]}
    assert params["timeframe"]["schema"]["enum"] == list(make_settings(Path(".")).market.timeframes)
    assert params["degraded"]["schema"]["anyOf"][0]["type"] == "boolean"
