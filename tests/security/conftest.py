"""Fixtures of the security tests: key stores on a real SQLite file and a real PostgreSQL.

PostgreSQL is the server named by ``DATABASE_URL``; each test gets a fresh schema that is
dropped afterwards, so nothing else in that database is touched.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conclave.store import RunStore
from conclave.store.keys_repo import KeyRepo
from tests.store.conftest import drop_schema, pg_url  # noqa: F401 - pg_url is a fixture

SECRET = "k" * 8 + "-a-test-key-hashing-secret-of-48-chars-xx"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def key_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunStore]:
    """An open, empty store on a real SQLite file (``tmp_path``) or a PostgreSQL schema."""
    if request.param == "sqlite":
        store = await RunStore.open(None, data_dir=tmp_path)
        yield store
        await store.aclose()
        return
    url = request.getfixturevalue("pg_url")
    schema = f"conclave_keys_{uuid.uuid4().hex[:12]}"
    store = await RunStore.open(url, data_dir=tmp_path, schema=schema)
    try:
        yield store
    finally:
        await store.aclose()
        await drop_schema(url, schema)


@pytest.fixture
def repo(key_store: RunStore) -> KeyRepo:
    return KeyRepo(key_store)
