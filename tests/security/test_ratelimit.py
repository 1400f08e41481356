"""Per-key rate limits (E7): exact allowance, shared by processes through Redis, fail open."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aredis
from structlog.testing import capture_logs

from conclave.security.ratelimit import KeyRateLimiter, RateDecision
from conclave.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


async def _attempt(limiter: KeyRateLimiter, n: int, identity: str = "k1") -> list[RateDecision]:
    return [await limiter.check(identity, run=True) for _ in range(n)]


def _assert_exact_allowance(decisions: list[RateDecision]) -> None:
    allowed = [d for d in decisions if d.allowed]
    refused = decisions[60:]
    assert len(allowed) == 60
    assert decisions[:60] == allowed
    assert [d.remaining for d in allowed[:3]] == [59, 58, 57]
    assert allowed[-1].remaining == 0
    for d in refused:
        headers = d.headers()
        assert not d.allowed
        assert d.name == "runs"
        assert 1 <= int(headers["Retry-After"]) <= 60
        assert headers["RateLimit-Limit"] == "60"
        assert headers["RateLimit-Remaining"] == "0"
        assert 0 < int(headers["RateLimit-Reset"]) <= 60
    assert "Retry-After" not in allowed[0].headers()


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    """A Redis key prefix of this test alone; its keys (only those) are deleted afterwards."""
    name = f"conclave-test-ratelimit-{uuid.uuid4().hex[:12]}"
    yield name
    client = aredis.Redis.from_url(redis_url)
    try:
        async for key in client.scan_iter(match=f"{name}*"):
            await client.delete(key)
    finally:
        await client.aclose()


async def test_sixty_runs_a_minute_in_process_then_429_with_retry_after() -> None:
    """Without Redis: runs 1-60 pass, 61-70 are refused with Retry-After and RateLimit-*."""
    limiter = KeyRateLimiter(runs_per_minute=60, requests_per_second=1000)
    assert not limiter.shared
    _assert_exact_allowance(await _attempt(limiter, 70))
    other = await limiter.check("k2", run=True)
    assert other.allowed
    assert other.remaining == 59


async def test_requests_per_second_limit_every_request() -> None:
    """The per-second limit refuses the 6th request of a second with Retry-After 1."""
    limiter = KeyRateLimiter(runs_per_minute=60, requests_per_second=5)
    got = [await limiter.check("k1") for _ in range(6)]
    assert [d.allowed for d in got] == [True] * 5 + [False]
    assert got[-1].name == "requests"
    assert got[-1].headers()["Retry-After"] == "1"
    assert got[0].headers()["RateLimit-Limit"] == "5"


def test_settings_give_the_limits() -> None:
    """from_settings reads CONCLAVE_SECURITY__* and REDIS_URL."""
    settings = Settings(_env_file=None, redis_url=None,
                        security={"runs_per_minute": 7, "requests_per_second": 3})  # fmt: skip
    limiter = KeyRateLimiter.from_settings(settings)
    assert (limiter.run_item.amount, limiter.request_item.amount) == (7, 3)
    assert not limiter.shared


@pytest.mark.redis
async def test_sixty_runs_a_minute_through_redis(redis_url: str, prefix: str) -> None:
    """With Redis the same exact allowance holds, and the limiter reports it shared."""
    limiter = KeyRateLimiter(runs_per_minute=60, requests_per_second=1000, redis_url=redis_url,
                             key_prefix=prefix)  # fmt: skip
    try:
        assert limiter.shared
        assert (await limiter.health())["status"] == "ok"
        decisions = await _attempt(limiter, 70)
        assert not any(d.degraded for d in decisions)
        _assert_exact_allowance(decisions)
    finally:
        await limiter.aclose()


_WORKER = """
import asyncio, json, sys
from conclave.security.ratelimit import KeyRateLimiter

async def main(url, prefix, n):
    limiter = KeyRateLimiter(runs_per_minute=60, requests_per_second=10_000, redis_url=url,
                             key_prefix=prefix, redis_timeout_s=1.0)
    await limiter.health()  # connected before the start
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    allowed = degraded = 0
    for _ in range(n):
        d = await limiter.check("fleet-key", run=True)
        allowed += d.allowed
        degraded += d.degraded
        await asyncio.sleep(0.002)  # let the three interleave
    await limiter.aclose()
    print(json.dumps({"allowed": allowed, "degraded": degraded}), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; each still running afterwards is killed by its PID."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.kill(proc.pid, 9)
            proc.wait(timeout=10)


@pytest.mark.redis
def test_three_processes_share_one_allowance(
    redis_url: str, prefix: str, processes: list[subprocess.Popen[bytes]]
) -> None:
    """E7: three orchestrator processes hammering one key get 60 runs in all (within 10 %)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for _ in range(3):
        processes.append(subprocess.Popen(
            [sys.executable, "-c", _WORKER, redis_url, prefix, "40"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        ))  # fmt: skip
    for proc in processes:  # all three connected, then all three go at once
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
    for proc in processes:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
    results = []
    for proc in processes:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    total = sum(r["allowed"] for r in results)
    assert all(r["degraded"] == 0 for r in results)
    assert all(r["allowed"] > 0 for r in results), results  # all three really competed
    assert 54 <= total <= 66, results
    assert total == 60  # the moving window in Redis is exact, not just within 10 %


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of this test alone on a free port; killed by PID afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url, socket_connect_timeout=0.2).ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield url, proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, 9)
        proc.wait(timeout=10)


async def test_a_redis_outage_fails_open_with_a_warning(
    own_redis: tuple[str, subprocess.Popen[bytes]],
) -> None:
    """Redis killed mid-way: checks still answer, allowed and degraded, within the timeout,
    with one warning; the process's own limit then applies (never zero runs)."""
    url, proc = own_redis
    limiter = KeyRateLimiter(runs_per_minute=60, requests_per_second=1000, redis_url=url,
                             redis_timeout_s=0.2, retry_s=60)  # fmt: skip
    try:
        before = await _attempt(limiter, 10)
        assert all(d.allowed and not d.degraded for d in before)
        os.kill(proc.pid, 9)
        proc.wait(timeout=10)
        with capture_logs() as logs:
            t0 = time.monotonic()
            during = await _attempt(limiter, 20)
            took = time.monotonic() - t0
        assert all(d.allowed and d.degraded for d in during)
        assert took < 2.0
        warnings = [e for e in logs if e["event"] == "ratelimit_store_down"]
        assert len(warnings) == 1
        assert warnings[0]["log_level"] == "warning"
        assert (await limiter.health())["status"] == "degraded"
    finally:
        await limiter.aclose()


async def test_an_unreachable_redis_from_the_start_fails_open_fast() -> None:
    """No server on the port at all: the first check answers allowed (degraded) within 1 s."""
    limiter = KeyRateLimiter(redis_url=f"redis://127.0.0.1:{_free_port()}/0", redis_timeout_s=0.2)
    try:
        t0 = time.monotonic()
        decision = await asyncio.wait_for(limiter.check("k1", run=True), timeout=5)
        assert decision.allowed
        assert decision.degraded
        assert time.monotonic() - t0 < 1.0
    finally:
        await limiter.aclose()
