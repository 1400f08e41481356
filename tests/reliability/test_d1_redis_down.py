"""D1: Redis stopped during the runs. A redis-server of the test's own, killed by its PID
(`tests.services.test_health_outages.redis_server`; the shared server is never touched)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import httpx2

from conclave.services.api import create_app
from tests.services.test_api import make_settings

RUN = {"symbol": "BTCUSDT", "timeframe": "1h"}
RUNS_EACH = 50


async def test_d1_redis_killed_mid_runs_all_100_recorded_and_health_degraded(
    tmp_path: Path, own_redis: tuple[subprocess.Popen[bytes], str]
) -> None:
    """D1 (pass figure: 100/100 recorded; 0 5xx; health degraded): 50 runs with our
    redis-server up (``/health`` cache ``ok``), then it is killed and 50 more run: all
    100 answer 201 and are listed, the cache is reported ``degraded`` with its reason and
    the report as a whole is ``degraded`` (still 200: runs work)."""
    proc, url = own_redis
    # admission (F2) sheds past 32 runs in flight; this row is about Redis
    app = create_app(make_settings(tmp_path, redis_url=url, api={"max_runs_in_flight": 100}))
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as api:
            before = await asyncio.gather(*(api.post("/pipeline/run", json=RUN)
                                            for _ in range(RUNS_EACH)))  # fmt: skip
            health = (await api.get("/health")).json()
            assert health["dependencies"]["cache"]["status"] == "ok"
            proc.kill()
            proc.wait(timeout=10)
            after = await asyncio.gather(*(api.post("/pipeline/run", json=RUN)
                                           for _ in range(RUNS_EACH)))  # fmt: skip
            resp = await api.get("/health")
            listed = (await api.get("/pipeline/runs", params={"limit": 1})).json()
    codes = [r.status_code for r in [*before, *after]]
    assert codes == [201] * (2 * RUNS_EACH)
    assert listed["total"] == 2 * RUNS_EACH
    report = resp.json()
    cache = report["dependencies"]["cache"]
    assert (cache["backend"], cache["status"]) == ("redis", "degraded")
    assert cache["error"]
    assert (resp.status_code, report["status"]) == (200, "degraded")
