"""SQLite writers of one process take turns on the store's lock before SQLite's own.

Without the turn, concurrent writers of one process met in SQLite's busy handler, whose
sleeps grow to 100 ms a retry: eight runs written at once had a p99 near 1 s
(`benchmarks/api.py`). These tests hold the behaviour, not the speed: every concurrent
write lands, a writer waits its turn in arrival order, a turn not given within the busy
timeout fails like SQLite's lock would, and a failed write gives the turn back.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from conclave.errors import StoreUnavailableError
from conclave.store import RunStore
from tests.store.conftest import fresh

#: Scheduling slack allowed around the busy timeout with both cores busy (seconds).
TOLERANCE_S = 0.5


async def test_a_writer_waits_for_the_turn_and_gives_up_at_the_busy_timeout(
    tmp_path: Path, sim_wire: dict[str, Any]
) -> None:
    """While a write transaction is open, a second save waits; past the busy timeout
    (0.4 s here) it fails with StoreUnavailableError naming the lock, and the
    database never saw it."""
    store = await RunStore.open(None, data_dir=tmp_path, busy_timeout_s=0.4)
    try:
        async with store._write():
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="locked"):
                await store.save_run(fresh(sim_wire))
            waited = time.monotonic() - t0
        assert 0.4 <= waited < 0.4 + TOLERANCE_S
        _, total = await store.list_runs()
        assert total == 0
        await store.save_run(fresh(sim_wire))  # the turn came back after the holder left
        _, total = await store.list_runs()
        assert total == 1
    finally:
        await store.aclose()


async def test_writers_take_turns_in_arrival_order(
    tmp_path: Path, sim_wire: dict[str, Any]
) -> None:
    """Five saves queued behind an open write land in the order they arrived."""
    store = await RunStore.open(None, data_dir=tmp_path)
    wires = [fresh(sim_wire) for _ in range(5)]
    try:
        async with store._write():
            tasks = []
            for wire in wires:
                tasks.append(asyncio.create_task(store.save_run(wire)))
                await asyncio.sleep(0.01)  # each one reaches the queue before the next
            await asyncio.sleep(0.05)
            assert not any(t.done() for t in tasks)  # all wait for the open transaction
        await asyncio.gather(*tasks)
        async with store.engine.connect() as conn:
            order = (await conn.exec_driver_sql("SELECT run_id FROM runs ORDER BY rowid")).scalars()
            assert list(order) == [w["runId"] for w in wires]
    finally:
        await store.aclose()


async def test_a_failed_write_gives_the_turn_back(tmp_path: Path, sim_wire: dict[str, Any]) -> None:
    """A save the database refuses (a duplicate run id) releases the turn: the next
    save lands at once, not after the busy timeout."""
    store = await RunStore.open(None, data_dir=tmp_path, busy_timeout_s=30.0)
    wire = fresh(sim_wire)
    try:
        await store.save_run(wire)
        with pytest.raises(Exception, match="refused"):
            await store.save_run(wire)
        async with asyncio.timeout(5.0):  # far below the 30 s a held turn would cost
            await store.save_run(fresh(sim_wire))
        _, total = await store.list_runs()
        assert total == 2
    finally:
        await store.aclose()


async def test_postgresql_writers_do_not_queue_in_the_process(tmp_path: Path) -> None:
    """The turn exists for SQLite only: PostgreSQL locks rows, not the database."""
    sqlite = await RunStore.open(None, data_dir=tmp_path)
    try:
        assert sqlite._sqlite is not None
    finally:
        await sqlite.aclose()
    pg = RunStore(sqlite.engine, "postgresql")
    assert pg._sqlite is None
