"""Real servers fail, ours survive (RELIABILITY D2, D6), on servers of the test's own.

A redis-server and a PostgreSQL started for these tests on free ports in temporary
directories (`tests.services.test_health_outages`), stopped or paused by PID; the machine's
shared servers are never touched.

- **D2**, Redis ``SIGSTOP`` (a blackhole: the socket accepts, nothing answers): every cache
  operation ends within 300 ms, and runs through the API still finish, well inside their
  deadline, with the cache reported degraded.
- **D6**, PostgreSQL stopped for 30 s while runs arrive at 2 a second, each with its own
  ``Idempotency-Key``: a run is either accepted (201, recorded) or refused 503 with
  ``Retry-After``, nothing else; the pool is healthy within 5 s of the restart; and every
  accepted run is recorded exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from conclave.market.cache import RedisCache
from conclave.market.candles import Candles
from conclave.market.sources.sim import SimSource
from tests.services.helpers import SIM_NOW
from tests.services.test_api import make_settings
from tests.services.test_health import _client, _health
from tests.services.test_health_outages import Postgres

#: D2's bound on one cache operation, and the scheduling slack allowed with both cores busy.
CACHE_OP_S = 0.300
TOLERANCE_S = 0.150
#: D6: the outage, the rate, and the recovery bound of the row.
OUTAGE_S = 30.0
RATE_PER_S = 2.0
POOL_HEALTHY_S = 5.0
RUN = {"symbol": "BTCUSDT", "timeframe": "1h"}


async def _candles() -> Candles:
    source = SimSource(now_ms=lambda: SIM_NOW)
    return await source.get_candles("BTCUSDT", "1h", 200, SIM_NOW)


async def test_d2_a_stopped_redis_bounds_every_cache_operation_to_300_ms(
    tmp_path: Path, own_redis: tuple[subprocess.Popen[bytes], str]
) -> None:
    """D2: with our redis-server SIGSTOPped, get and set each return (a miss, a skipped
    write) within 300 ms (+150 ms slack), on a fresh client and after the cooldown."""
    proc, url = own_redis
    candles = await _candles()
    cache = RedisCache(url, timeout_s=0.25, cooldown_s=0.2)
    try:
        await cache.set("k", candles, 60.0)
        assert await cache.get("k") is not None  # it works while Redis runs
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            for _ in range(3):
                await asyncio.sleep(0.25)  # past the cooldown: each call tries Redis again
                for op in (cache.get("k"), cache.set("k", candles, 60.0)):
                    t0 = time.monotonic()
                    got = await op
                    took = time.monotonic() - t0
                    assert took <= CACHE_OP_S + TOLERANCE_S, f"{took:.3f} s"
                    assert got is None
        finally:
            os.kill(proc.pid, signal.SIGCONT)
    finally:
        await cache.aclose()


async def test_d2_runs_finish_inside_their_deadline_with_redis_stopped(
    tmp_path: Path, own_redis: tuple[subprocess.Popen[bytes], str]
) -> None:
    """D2 through the API: Redis SIGSTOPped, five runs in a row are each recorded (201)
    in far less than the 10 s run deadline, and /health shows the cache degraded."""
    proc, url = own_redis
    async for api in _client(make_settings(tmp_path, redis_url=url)):
        assert (await api.post("/pipeline/run", json=RUN)).status_code == 201
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            for _ in range(5):
                t0 = time.monotonic()
                resp = await api.post("/pipeline/run", json=RUN)
                took = time.monotonic() - t0
                assert resp.status_code == 201, resp.text
                assert took < 10.0 / 4, f"{took:.2f} s"  # a few bounded cache misses at most
            _, report = await _health(api)
            assert report["dependencies"]["cache"]["status"] == "degraded"
        finally:
            os.kill(proc.pid, signal.SIGCONT)


async def _rows_of(pg: Postgres, run_ids: list[str]) -> dict[str, int]:
    engine = create_async_engine(pg.url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT run_id, count(*) FROM runs WHERE run_id = ANY(:ids) GROUP BY run_id"),
                {"ids": run_ids},
            )
            return {str(r[0]): int(r[1]) for r in rows}
    finally:
        await engine.dispose()


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_d6_postgresql_stopped_for_30_s_at_2_runs_a_second(
    tmp_path: Path, own_postgres: Postgres
) -> None:
    """D6: runs at 2/s for 5 s, PostgreSQL stopped for 30 s, started, 10 s more. Every
    answer is 201 or 503 with Retry-After; a run is accepted within 5 s of the restart
    (the pool recovered); every accepted run id is in the database exactly once."""
    accepted: list[str] = []
    refused: list[tuple[int, str | None]] = []
    others: list[tuple[int, str]] = []
    async for api in _client(make_settings(tmp_path, database_url=own_postgres.url)):

        async def one(api: httpx2.AsyncClient = api) -> None:
            key = uuid.uuid4().hex
            resp = await api.post("/pipeline/run", json=RUN, headers={"Idempotency-Key": key})
            if resp.status_code == 201:
                accepted.append(resp.json()["runId"])
            elif resp.status_code == 503:
                refused.append((503, resp.headers.get("retry-after")))
            else:
                others.append((resp.status_code, resp.text[:200]))

        async def drive(seconds: float) -> None:
            t0 = time.monotonic()
            tasks = []
            i = 0
            while time.monotonic() - t0 < seconds:
                tasks.append(asyncio.create_task(one()))
                i += 1
                await asyncio.sleep(max(0.0, t0 + i / RATE_PER_S - time.monotonic()))
            await asyncio.gather(*tasks)

        await drive(5.0)
        before = len(accepted)
        await asyncio.to_thread(own_postgres.stop)
        await drive(OUTAGE_S)
        during = len(accepted) - before
        await asyncio.to_thread(own_postgres.start)
        restarted = time.monotonic()
        first_after: float | None = None
        while time.monotonic() - restarted < 10.0:
            n = len(accepted)
            await one()
            if first_after is None and len(accepted) > n:
                first_after = time.monotonic() - restarted
            await asyncio.sleep(1.0 / RATE_PER_S)
    assert others == []
    assert refused, "the outage refused nothing: was the database really stopped?"
    assert all(retry is not None and retry.isdigit() for _, retry in refused)
    assert during == 0  # nothing claims to be recorded while the database is down
    assert first_after is not None
    assert first_after <= POOL_HEALTHY_S
    counts = await _rows_of(own_postgres, accepted)
    assert counts == dict.fromkeys(accepted, 1)
