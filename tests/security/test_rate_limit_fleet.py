"""E7 across a fleet: three real orchestrator processes share one key's allowance via Redis.

Three ``python -m conclave serve`` processes on loopback over one SQLite file (the keys) and
one Redis database (``REDIS_URL``, the limiter's counters), runs on the sim market. Only
this test's Redis keys are deleted afterwards (its key ids, its cache prefix).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import redis

from conclave.security.keys import Scope
from tests.security.conftest import SECRET
from tests.security.procs import clean_env, conclave, free_port, started, wait_live
from tests.security.test_api_auth import create_keys

RUN = {"symbol": "BTCUSDT", "timeframe": "1h"}
LIMIT = 60
TOLERANCE = 0.10  # the issue's +/-10 %: 54 to 66 allowed of 70


@contextlib.contextmanager
def fleet(tmp_path: Path, redis_url: str, prefix: str, n: int = 3) -> Iterator[list[str]]:
    """``n`` orchestrators on loopback sharing ``tmp_path``'s database and ``redis_url``."""
    env = clean_env(tmp_path, REDIS_URL=redis_url, CONCLAVE_SECURITY__KEY_SECRET=SECRET,
                    CONCLAVE_SECURITY__REQUESTS_PER_SECOND="1000",
                    CONCLAVE_MARKET__CACHE__KEY_PREFIX=prefix)  # fmt: skip
    with contextlib.ExitStack() as stack:
        urls = []
        procs = []
        for i in range(n):
            port = free_port()
            cmd = conclave("serve", "--host", "127.0.0.1", "--port", str(port))
            procs.append(stack.enter_context(started(cmd, env, tmp_path, tmp_path / f"api{i}.log")))
            urls.append(f"http://127.0.0.1:{port}")
        for url, proc in zip(urls, procs, strict=True):
            wait_live(url, proc)
        yield urls


def _forget(redis_url: str, patterns: list[str]) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        for pattern in patterns:
            for key in client.scan_iter(match=pattern):
                client.delete(key)
    finally:
        client.close()


def assert_refusal(resp: httpx2.Response) -> None:
    assert resp.status_code == 429, resp.text
    assert resp.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(resp.headers["retry-after"]) <= 60
    assert resp.headers["ratelimit-limit"] == str(LIMIT)
    assert resp.headers["ratelimit-remaining"] == "0"
    assert 0 <= int(resp.headers["ratelimit-reset"]) <= 60


@pytest.mark.redis
@pytest.mark.timeout(120)
async def test_three_replicas_share_sixty_runs_a_minute_per_key(
    tmp_path: Path, redis_url: str
) -> None:
    """70 runs with one key spread round-robin over 3 processes: runs 1-60 are 201, 61-70
    are 429 with Retry-After and RateLimit-*; then 70 concurrent runs with a second key:
    the fleet allows 60 +/- 10 % (exactly 60 expected: one atomic window in Redis)."""
    prefix = f"conclave-test-fleet-{uuid.uuid4().hex[:10]}"
    keys = await create_keys(tmp_path / "data", ("seq", Scope.RUN), ("burst", Scope.RUN))
    try:
        with fleet(tmp_path, redis_url, prefix) as urls:
            async with httpx2.AsyncClient(timeout=30.0, trust_env=False) as client:
                seq = {"Authorization": f"Bearer {keys['seq'][1]}"}
                answers = []
                for i in range(70):
                    url = urls[i % len(urls)]
                    answers.append(await client.post(f"{url}/pipeline/run", json=RUN, headers=seq))
                statuses = [r.status_code for r in answers]
                assert statuses[:LIMIT] == [201] * LIMIT, statuses
                for resp in answers[LIMIT:]:
                    assert_refusal(resp)
                assert answers[0].headers["ratelimit-remaining"] == str(LIMIT - 1)

                burst = {"X-API-Key": keys["burst"][1]}
                gate = asyncio.Semaphore(12)

                async def one(i: int) -> httpx2.Response:
                    async with gate:
                        url = urls[i % len(urls)]
                        return await client.post(f"{url}/pipeline/run", json=RUN, headers=burst)

                got = await asyncio.gather(*(one(i) for i in range(70)))
                allowed = sum(r.status_code == 201 for r in got)
                assert {r.status_code for r in got} <= {201, 429}
                assert abs(allowed - LIMIT) <= TOLERANCE * LIMIT, allowed
                assert allowed == LIMIT  # the figure: Redis's moving window is exact
                for resp in got:
                    if resp.status_code == 429:
                        assert_refusal(resp)
    finally:
        _forget(redis_url, [f"*{keys['seq'][0]}*", f"*{keys['burst'][0]}*", f"{prefix}*"])
