"""PostgreSQL writes a run without an idempotency key as ONE statement (no BEGIN/COMMIT).

The run, its nine steps and its decision go in one INSERT with data-modifying CTEs: one
round trip instead of five, atomic on its own (D7). These tests count what reaches the
driver and check that what is read back equals what was saved, and that a refused part
leaves no row (see also test_atomicity.py, which runs the same breaks on both backends).
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import make_url

from conclave.store import RunStore
from tests.store.conftest import fresh, rows_of

pytestmark = pytest.mark.postgres


def _count_statements(store: RunStore) -> list[str]:
    sent: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement.split(None, 1)[0].upper())

    event.listen(store.engine.sync_engine, "before_cursor_execute", before)
    return sent


async def test_a_run_without_a_key_is_one_statement_and_reads_back_equal(
    store: RunStore, sim_wire: dict[str, Any]
) -> None:
    """PostgreSQL: 1 statement for run + 9 steps + decision; get_run returns the same dict."""
    if store.backend != "postgresql":
        pytest.skip("the single statement is PostgreSQL's path; SQLite writes in BEGIN IMMEDIATE")
    wire = fresh(sim_wire)
    await store.save_run(fresh(sim_wire))  # the pool's first connection, warm
    sent = _count_statements(store)
    await store.save_run(wire)
    assert sent == ["WITH"]
    assert await rows_of(store, wire["runId"]) == {
        "runs": 1, "run_steps": 9, "decisions": 1, "idempotency_keys": 0,
    }  # fmt: skip
    assert await store.get_run(wire["runId"]) == wire


async def test_each_step_count_gets_its_own_statement_and_all_rows_land(
    store: RunStore, sim_wire: dict[str, Any]
) -> None:
    """Runs of 9, 1 and 0 steps each store exactly their rows (the statement is cached by
    shape: a cached 9-step statement must never serve a 1-step run)."""
    for keep in (9, 1, 0, 9):
        wire = fresh(sim_wire)
        wire["steps"] = dict(list(wire["steps"].items())[:keep])
        await store.save_run(wire)
        counts = await rows_of(store, wire["runId"])
        assert counts == {"runs": 1, "run_steps": keep, "decisions": 1, "idempotency_keys": 0}
        assert await store.get_run(wire["runId"]) == wire


async def test_pooled_connections_the_server_closed_are_replaced_not_failed(
    store: RunStore, sim_wire: dict[str, Any], pg_url: str
) -> None:
    """The server ends both idle pooled sessions of this store (``pg_terminate_backend``
    from outside the pool, as a restart does): the next saves take fresh connections and
    succeed, where a pool that handed out a dead one would fail the run (503); no pre-ping
    round trip is spent on a live one."""
    if store.backend != "postgresql":
        pytest.skip("PostgreSQL's pool")
    async with store.engine.connect() as one, store.engine.connect() as two:
        pids = [(await c.execute(text("SELECT pg_backend_pid()"))).scalar_one() for c in (one, two)]
    outside = await asyncpg.connect(make_url(pg_url).set(drivername="postgresql").render_as_string(
        hide_password=False))  # fmt: skip
    try:
        ended = await outside.fetchval(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(p) FROM unnest($1::int[]) p) t",
            pids,
        )
    finally:
        await outside.close()
    assert ended == 2
    await asyncio.sleep(0.3)  # the event loop reads the server's goodbyes
    sent = _count_statements(store)
    for _ in range(3):
        wire = fresh(sim_wire)
        await store.save_run(wire)
        assert await store.get_run(wire["runId"]) == wire
    assert sent[0] == "WITH"  # the first statement is the write itself: no ping
    async with store.engine.connect() as conn:
        now = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    assert now not in pids
