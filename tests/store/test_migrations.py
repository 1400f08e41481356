"""Alembic migrations: run to head on an empty database, idempotent, equal to the models."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text

from conclave.store import RunStore
from conclave.store.migrate import current_revision, head_revision
from conclave.store.models import metadata
from tests.store.conftest import Target, fresh

TABLES = {"alembic_version", "runs", "run_steps", "decisions", "idempotency_keys"}
TABLES |= {"accounts", "account_runs", "orders", "positions", "equity_points", "risk_events"}
TABLES |= {"scheduler_jobs", "scheduled_slots", "api_keys"}


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def _diff(conn: Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(conn), metadata))


async def test_open_migrates_an_empty_database_to_head(target: Target) -> None:
    """A database with no tables ends at the package's head revision with every table."""
    store = await target.open()
    try:
        assert head_revision() == "0005"
        assert await current_revision(store.engine) == head_revision()
        async with store.engine.connect() as conn:
            assert await conn.run_sync(_tables) == TABLES
    finally:
        await store.aclose()


async def test_reopening_is_idempotent_and_keeps_the_data(
    target: Target, sim_wire: dict[str, Any]
) -> None:
    """Opening twice more changes neither the revision nor the rows."""
    store = await target.open()
    wire = fresh(sim_wire)
    await store.save_run(wire)
    await store.aclose()
    for _ in range(2):
        store = await target.open()
        try:
            assert await store.get_run(wire["runId"]) == wire
            async with store.engine.connect() as conn:
                versions = await conn.execute(text("SELECT version_num FROM alembic_version"))
                assert versions.scalars().all() == [head_revision()]
        finally:
            await store.aclose()


async def test_the_migrations_create_exactly_the_models(target: Target) -> None:
    """Alembic's autogenerate finds no difference between the migrated DB and models.py."""
    store = await target.open()
    try:
        async with store.engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await store.aclose()


async def test_concurrent_openers_migrate_once(target: Target) -> None:
    """Four stores opening an empty database together all succeed at head."""
    stores: list[RunStore] = await asyncio.gather(*(target.open() for _ in range(4)))
    try:
        for store in stores:
            assert await current_revision(store.engine) == head_revision()
    finally:
        for store in stores:
            await store.aclose()
