"""G1 and D5 through the API with requests that provably overlap.

The orchestrator app runs in process (ASGI) over the real store: an SQLite file or a
fresh schema of the real PostgreSQL. Overlap is forced, not hoped for: for G1 every
request waits at a barrier just before claiming its key, so all of them are inside the
handler at once, and the one run that wins is held until every other answer is back; for
D5 every run waits at a barrier before fetching candles, so all 50 are in flight, and then
all save at once. Recorded timestamps prove it: the last request started before the first
one ended.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2

from conclave.market.sources import open_source
from conclave.services.api import create_app
from conclave.store import IdempotencyClaim, RunStore
from conclave.timeframes import Timeframe
from tests.pipeline.helpers import CountingSource
from tests.services.test_api import make_settings
from tests.store.conftest import Target

RUN = {"symbol": "BTCUSDT", "timeframe": "1h"}
N_SAME_KEY = 20
N_POSTS = 50


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class BarrierStore:
    """The real store; every ``claim_idempotency_key`` waits until ``n`` callers are inside,
    and records when it entered and what it got."""

    def __init__(self, inner: RunStore, n: int) -> None:
        self.inner = inner
        self.barrier = asyncio.Barrier(n)
        self.claims: list[tuple[float, float, str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def claim_idempotency_key(self, key: str, request_hash: str) -> IdempotencyClaim:
        entered = time.monotonic()
        await asyncio.wait_for(self.barrier.wait(), 30)
        claim = await self.inner.claim_idempotency_key(key, request_hash)
        self.claims.append((entered, time.monotonic(), claim.kind))
        return claim


class HeldSource(CountingSource):
    """A counting sim source whose fetches wait for ``release``."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.release = asyncio.Event()

    async def get_candles(
        self, symbol: str, timeframe: Timeframe | str, limit: int, end: int | None = None
    ) -> Any:
        await asyncio.wait_for(self.release.wait(), 30)
        return await super().get_candles(symbol, timeframe, limit, end)


class SaveBarrierStore:
    """The real store; every ``save_run`` waits until ``n`` runs are ready to save."""

    def __init__(self, inner: RunStore, n: int) -> None:
        self.inner = inner
        self.barrier = asyncio.Barrier(n)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def save_run(self, run_wire: dict[str, Any], **kwargs: Any) -> None:
        await asyncio.wait_for(self.barrier.wait(), 60)
        await self.inner.save_run(run_wire, **kwargs)


async def _client(app: Any) -> AsyncIterator[httpx2.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            yield c


async def _timed_post(
    api: httpx2.AsyncClient, headers: dict[str, str]
) -> tuple[float, float, httpx2.Response]:
    start = time.monotonic()
    resp = await api.post("/pipeline/run", json=RUN, headers=headers, timeout=60)
    return start, time.monotonic(), resp


async def test_g1_twenty_overlapping_requests_with_one_key_run_exactly_once(
    target: Target, tmp_path: Path
) -> None:
    """G1 (pass figure: every accepted request has exactly one run, 0 duplicates): 20
    requests with one Idempotency-Key, all inside the handler at once (a barrier before
    the claim; timestamps show every claim entered before any returned and the last
    request started before the first ended): exactly one 201, nineteen 409
    ``idempotency_key_in_progress``, one run recorded, candles fetched for one run only."""
    store = await target.open()
    held = BarrierStore(store, N_SAME_KEY)
    settings = make_settings(tmp_path, api={"max_runs_running": N_SAME_KEY})
    source = HeldSource(open_source("sim", settings, now_ms=_now_ms))
    app = create_app(settings, source=source, store=held)
    try:
        async for api in _client(app):
            headers = {"Idempotency-Key": f"g1-{time.time_ns()}"}
            tasks = [asyncio.create_task(_timed_post(api, headers)) for _ in range(N_SAME_KEY)]
            # the winner's run is held until all nineteen others have answered
            deadline = time.monotonic() + 60
            while sum(t.done() for t in tasks) < N_SAME_KEY - 1:
                assert time.monotonic() < deadline, "the nineteen 409s did not come back"
                await asyncio.sleep(0.01)
            source.release.set()
            answers = await asyncio.gather(*tasks)
            total = (await api.get("/pipeline/runs")).json()["total"]
    finally:
        await store.aclose()

    entered = [e for e, _, _ in held.claims]
    returned = [r for _, r, _ in held.claims]
    assert len(held.claims) == N_SAME_KEY
    assert max(entered) < min(returned)  # all 20 claims in flight at once
    starts = [s for s, _, _ in answers]
    ends = [e for _, e, _ in answers]
    assert max(starts) < min(ends)  # all 20 requests in flight at once
    codes = Counter(r.status_code for _, _, r in answers)
    assert codes == {201: 1, 409: N_SAME_KEY - 1}
    busy = {r.json()["error"]["code"] for _, _, r in answers if r.status_code == 409}
    assert busy == {"idempotency_key_in_progress"}
    assert Counter(kind for _, _, kind in held.claims) == {"new": 1, "in_progress": 19}
    assert total == 1
    one_run_fetches = sum(source.calls.values())
    assert 0 < one_run_fetches <= 4  # the candles of one run (the run's timeframes), not 20


async def test_d5_fifty_concurrent_posts_on_sqlite_all_recorded(tmp_path: Path) -> None:
    """D5 (pass figure: 50/50 rows; 0 ``database is locked`` reach the client): 50
    ``POST /pipeline/run`` through the API on SQLite (WAL, ``BEGIN IMMEDIATE``), all in
    flight at once and all saving together (a barrier before the save): 50 answers 201,
    50 distinct runs recorded, no error body at all."""
    # admission (F2) would shed the runs past 32 in flight: this row is about SQLite
    settings = make_settings(
        tmp_path, api={"max_runs_in_flight": 2 * N_POSTS, "max_runs_running": N_POSTS}
    )
    store = await RunStore.open(None, data_dir=tmp_path)
    held = SaveBarrierStore(store, N_POSTS)
    source = CountingSource(open_source("sim", settings, now_ms=_now_ms))
    app = create_app(settings, source=source, store=held)
    try:
        async for api in _client(app):
            answers = await asyncio.gather(*(_timed_post(api, {}) for _ in range(N_POSTS)))
            listed = (await api.get("/pipeline/runs", params={"limit": 100})).json()
    finally:
        await store.aclose()
    bodies = [r.text for _, _, r in answers if r.status_code != 201]
    assert bodies == []
    starts = [s for s, _, _ in answers]
    ends = [e for _, e, _ in answers]
    assert max(starts) < min(ends)  # all 50 in flight at once
    assert all("locked" not in r.text for _, _, r in answers)
    run_ids = {r.json()["runId"] for _, _, r in answers}
    assert len(run_ids) == N_POSTS
    assert listed["total"] == N_POSTS
    assert {item["runId"] for item in listed["items"]} == run_ids
