"""Shared fixtures: the real data in ../shared/data and the real services of this machine.

Outside CI a missing resource skips the test with the reason; in CI (``CI=true``) it fails,
because there the suite must run everything.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def need(condition: bool, reason: str) -> None:
    """Skip (locally) or fail (in CI) when a resource the test needs is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A CLI runner in an empty directory (no stray .env), with neither REDIS_URL nor
    DATABASE_URL: the embedded defaults (in-process cache, SQLite under ./data)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    return CliRunner()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real market data set in ../shared/data."""
    need(SHARED_DATA.is_dir(), f"real market data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def candles_dir(shared_data: Path) -> Path:
    return shared_data / "candles"


@pytest.fixture
def redis_url() -> str:
    """REDIS_URL of a reachable Redis (a real server; tests flush only their own keys)."""
    url = os.environ.get("REDIS_URL", "")
    need(bool(url), "REDIS_URL is not set")
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
    except redis.RedisError as exc:
        need(False, f"Redis at REDIS_URL is not reachable: {exc}")
    return url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[object]:
    import redis.asyncio as aredis

    client = aredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()
