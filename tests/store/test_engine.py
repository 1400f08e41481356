"""Which database a URL names, and failing cleanly when it cannot be reached."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conclave.errors import ConfigurationError, StoreUnavailableError
from conclave.store import RunStore
from conclave.store.engine import create_engine, resolve_url

SECRET = "s3cr3t-pw"


@pytest.mark.parametrize(
    ("given", "driver", "backend"),
    [
        ("postgres://u:p@h:5432/db", "postgresql+asyncpg", "postgresql"),
        ("postgresql://u:p@h/db", "postgresql+asyncpg", "postgresql"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg", "postgresql"),
        ("sqlite:////tmp/x/c.db", "sqlite+aiosqlite", "sqlite"),
        ("sqlite+aiosqlite:///rel/c.db", "sqlite+aiosqlite", "sqlite"),
    ],
)
def test_urls_are_rewritten_to_the_async_drivers(given: str, driver: str, backend: str) -> None:
    """postgres://, postgresql:// and sqlite:/// use asyncpg and aiosqlite."""
    url, found = resolve_url(given, Path("data"))
    assert (url.drivername, found) == (driver, backend)


def test_no_url_is_sqlite_under_data_dir() -> None:
    """DATABASE_URL unset: SQLite file data_dir/conclave.db."""
    url, backend = resolve_url(None, Path("/srv/conclave/data"))
    assert (backend, url.database) == ("sqlite", "/srv/conclave/data/conclave.db")


@pytest.mark.parametrize(
    "given", [f"mysql://u:{SECRET}@h/db", "not a url", "sqlite://", "sqlite:///:memory:"]
)
def test_other_databases_are_a_configuration_error_without_the_password(given: str) -> None:
    """Another scheme, garbage or an in-memory SQLite is refused; the message hides secrets."""
    with pytest.raises(ConfigurationError) as info:
        resolve_url(given, Path("data"))
    assert SECRET not in str(info.value)


async def test_an_unreachable_postgresql_is_unavailable_without_leaking_the_url() -> None:
    """Nothing listens on port 1: open raises StoreUnavailableError quickly, health says
    down; neither names the host or the password."""
    given = f"postgresql://conclave:{SECRET}@127.0.0.1:1/nowhere"
    t0 = time.perf_counter()
    with pytest.raises(StoreUnavailableError) as info:
        await RunStore.open(given)
    assert time.perf_counter() - t0 < 5.0
    assert SECRET not in str(info.value)
    assert "127.0.0.1" not in str(info.value)
    url, backend = resolve_url(given, Path("data"))
    store = RunStore(create_engine(url, backend), backend)
    try:
        report = await store.health(timeout_s=1.0)
    finally:
        await store.aclose()
    assert report["status"] == "down"
    assert report["backend"] == "postgresql"
    assert SECRET not in str(report)
    assert "127.0.0.1" not in str(report)
    with pytest.raises(StoreUnavailableError):
        await store.list_runs()
