"""Fixtures of the store tests: the same contract over SQLite (tmp_path) and PostgreSQL.

PostgreSQL is the real server named by ``DATABASE_URL``; each test gets a fresh schema
(``conclave_test_<random>``) that is dropped afterwards, so runs sharing the ``test``
database never see each other's rows.
"""

from __future__ import annotations

import asyncio
import copy
import os
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from conclave.market.gateway import MarketGateway
from conclave.market.sources.sim import SimSource
from conclave.pipeline import ALL_AGENTS, Pipeline
from conclave.pipeline.context import StepResult
from conclave.pipeline.decision import Decision
from conclave.pipeline.orchestrator import PipelineRun
from conclave.store import RunStore
from tests.conftest import need

SIM_AS_OF = 1_700_000_000_000
NOW_ISO = "2023-11-14T22:13:20.000Z"


@dataclass(frozen=True)
class Target:
    """Where a test's store lives; `open` may be called again to re-open it."""

    backend: str
    database_url: str | None
    data_dir: Path
    schema: str | None

    async def open(self, **kwargs: Any) -> RunStore:
        return await RunStore.open(
            self.database_url, data_dir=self.data_dir, schema=self.schema, **kwargs
        )


@pytest.fixture(scope="session")
def pg_url() -> str:
    """DATABASE_URL of a reachable PostgreSQL (skip locally, fail in CI)."""
    url = os.environ.get("DATABASE_URL", "")
    need(url.startswith(("postgres://", "postgresql")), "DATABASE_URL names no PostgreSQL")
    parsed = make_url(url)
    try:
        socket.create_connection((parsed.host or "127.0.0.1", parsed.port or 5432), 1.0).close()
    except OSError as exc:
        need(False, f"PostgreSQL at DATABASE_URL is not reachable: {exc}")
    return url


async def _admin(url: str, sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
async def own_database(pg_url: str) -> AsyncIterator[str]:
    """The URL of a new, empty database on the ``DATABASE_URL`` server; dropped after."""
    name = f"conclave_test_{uuid.uuid4().hex[:12]}"
    await _admin(pg_url, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        await _admin(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def drop_schema(url: str, schema: str) -> None:
    """Drop a test schema and everything in it."""
    import asyncpg  # type: ignore[import-untyped]

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    """An empty database of each backend."""
    if request.param == "sqlite":
        yield Target("sqlite", None, tmp_path, None)
        return
    url = request.getfixturevalue("pg_url")
    schema = f"conclave_test_{uuid.uuid4().hex[:12]}"
    yield Target("postgresql", url, tmp_path, schema)
    await drop_schema(url, schema)


@pytest.fixture
async def store(target: Target) -> AsyncIterator[RunStore]:
    """An open store on ``target``."""
    opened = await target.open()
    yield opened
    await opened.aclose()


async def _sim_run() -> PipelineRun:
    gateway = MarketGateway(SimSource(now_ms=lambda: SIM_AS_OF))
    async with Pipeline(gateway) as pipe:
        return await pipe.run("acct-1", "BTCUSDT", "1h", as_of_ms=SIM_AS_OF, now_iso=NOW_ISO)


@pytest.fixture(scope="session")
def sim_wire() -> dict[str, Any]:
    """The wire form of one real run over the simulated source (all nine agents)."""
    return asyncio.run(_sim_run()).to_wire()


def no_signal_wire() -> dict[str, Any]:
    """A real `PipelineRun` that ended ``no_signal``: nine failed steps, nulls everywhere."""
    reason = "stale_data: newest closed candle is 3 h old"
    steps = {a: StepResult.failed(a, "stale_data", reason, timestamp=NOW_ISO) for a in ALL_AGENTS}
    decision = Decision.no_signal(reason, ALL_AGENTS, quorum=6)
    run = PipelineRun(uuid.uuid4().hex, None, "ETHUSDT", "4h", SIM_AS_OF, True, "sim", steps,
                      decision, 1.25, NOW_ISO)  # fmt: skip
    return run.to_wire()


def fresh(wire: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of ``wire`` with a new run id and top-level ``changes``."""
    out = copy.deepcopy(wire)
    out["runId"] = uuid.uuid4().hex
    out.update(changes)
    return out


async def rows_of(store: RunStore, run_id: str) -> dict[str, int]:
    """How many rows each table holds for ``run_id``."""
    counts = {}
    async with store.engine.connect() as conn:
        for table in ("runs", "run_steps", "decisions", "idempotency_keys"):
            result = await conn.execute(
                text(f"SELECT count(*) FROM {table} WHERE run_id = :r"), {"r": run_id}
            )
            counts[table] = int(result.scalar_one())
    return counts
