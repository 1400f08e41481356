"""Fixtures for the market tests: Stub-BX, the fake Binance server on loopback, and a Redis
key prefix of a test's own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.fakes import FakeBinance


@pytest.fixture
def stub(shared_data: Path) -> Iterator[FakeBinance]:
    """A running Stub-BX serving the real recorded responses; it must end with no errors."""
    with FakeBinance(shared_data).running() as fake:
        yield fake
    assert fake.server_errors == []


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"conclave-test:{uuid.uuid4().hex}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()
