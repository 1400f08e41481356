"""RELIABILITY F2 through the whole orchestrator app (ASGI, in process, the real store):
the admission queue behind the key check, and shedding that costs nothing.

One run is held inside the pipeline (its candle fetch waits for the test); with 1 running
and 2 queued allowed, further runs are shed at once. A shed request is not parsed (a body that
is not JSON still gets 503 ``overloaded``, not 400), fetches nothing and records nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2

from conclave.market.sources import open_source
from conclave.pipeline.runners import RUN_ID
from conclave.services.api import create_app
from conclave.store import RunStore
from conclave.timeframes import Timeframe
from tests.pipeline.helpers import CountingSource
from tests.services.test_api import make_settings

RUN = {"symbol": "BTCUSDT", "timeframe": "1h"}


class HeldSource(CountingSource):
    """A counting sim source that records which runs started a fetch (``runs``, by run id),
    then holds the fetch until ``release``."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.release = asyncio.Event()
        self.runs: set[str | None] = set()

    async def get_candles(
        self, symbol: str, timeframe: Timeframe | str, limit: int, end: int | None = None
    ) -> Any:
        self.runs.add(RUN_ID.get())
        await asyncio.wait_for(self.release.wait(), 30)
        return await super().get_candles(symbol, timeframe, limit, end)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _client(app: Any) -> AsyncIterator[httpx2.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            yield c


async def _until(check: Any, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


async def test_f2_runs_past_the_queue_are_shed_unparsed_and_queued_ones_run_in_order(
    tmp_path: Path,
) -> None:
    """1 run held, 2 queued: 4 more answer 503 ``overloaded`` with Retry-After while the
    first is still held (one with a body that is not JSON), with no candle fetched for them;
    then the three admitted runs are recorded, in the order they came."""
    settings = make_settings(tmp_path, api={"max_runs_in_flight": 3, "max_runs_running": 1})
    store = await RunStore.open(None, data_dir=tmp_path)
    source = HeldSource(open_source("sim", settings, now_ms=_now_ms))
    app = create_app(settings, source=source, store=store)
    order: list[int] = []
    try:
        async for api in _client(app):

            async def admitted(client: httpx2.AsyncClient, n: int) -> httpx2.Response:
                resp = await client.post("/pipeline/run", json=RUN, timeout=60)
                order.append(n)
                return resp

            first = asyncio.create_task(admitted(api, 0))
            await _until(lambda: len(source.runs) > 0, "the first run never fetched")
            queued = []
            for n in (1, 2):
                queued.append(asyncio.create_task(admitted(api, n)))
                await asyncio.sleep(0.05)  # arrival order is the point
            shed = [await api.post("/pipeline/run", json=RUN) for _ in range(3)]
            shed.append(await api.post("/pipeline/run", content=b"{not json",
                                       headers={"content-type": "application/json"}))  # fmt: skip
            assert not first.done()
            assert len(source.runs) == 1  # neither the queued nor the shed runs fetched
            source.release.set()
            answers = [await first, *(await asyncio.gather(*queued))]
            total = (await api.get("/pipeline/runs")).json()["total"]
    finally:
        await store.aclose()
    assert [r.status_code for r in shed] == [503] * 4
    assert all(r.json()["error"]["code"] == "overloaded" for r in shed)
    assert all(r.headers["retry-after"] == "1" for r in shed)
    assert [r.status_code for r in answers] == [201, 201, 201]
    assert order == [0, 1, 2]
    assert total == 3
