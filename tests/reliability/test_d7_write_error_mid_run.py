"""RELIABILITY D7: a database write error in the middle of saving a run: a single transaction
per run.

Pass figure of the row: **0 rows half-written (a run row without its agent results, or the
reverse).** Saving one run (with its idempotency key) issues a fixed sequence of SQL
statements; the test counts them on a clean save, then saves a fresh run once per position,
each time failing the statement at that position (the driver raises before it runs, as a
dropped connection or a full disk would), on a real SQLite file and on the real PostgreSQL.
After every failed save the run has no row in any table and its key is not completed; at the
end the whole database holds only complete runs: each run row with its 9 steps and 1
decision, no step or decision without its run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, text

from conclave.store import RunStore
from tests.reliability.conftest import Target
from tests.store.conftest import _sim_run, fresh, rows_of

NONE = {"runs": 0, "run_steps": 0, "decisions": 0, "idempotency_keys": 0}
WHOLE = {"runs": 1, "run_steps": 9, "decisions": 1, "idempotency_keys": 1}


@pytest.fixture(scope="module")
def run_wire() -> dict[str, Any]:
    """The wire form of one real run over the simulated source (all nine agents)."""
    return asyncio.run(_sim_run()).to_wire()


class InjectedWriteError(Exception):
    """What the driver raises for the statement chosen to fail."""


@contextmanager
def failing_statement(store: RunStore, position: int | None) -> Iterator[list[str]]:
    """Count the SQL statements sent on ``store``'s engine (yielded, in order); with
    ``position`` (1-based), the statement there raises `InjectedWriteError` instead."""
    sent: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement.split(None, 1)[0].upper())
        if position is not None and len(sent) == position:
            raise InjectedWriteError(f"injected failure of statement {position}: {statement[:40]}")

    engine = store.write_engine
    event.listen(engine, "before_cursor_execute", before)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", before)


async def half_written(store: RunStore) -> dict[str, int]:
    """Runs missing steps or their decision, and steps or decisions without their run."""
    queries = {
        "runs without 9 steps": "SELECT count(*) FROM runs r WHERE (SELECT count(*) FROM"
        " run_steps s WHERE s.run_id = r.run_id) <> 9",
        "runs without a decision": "SELECT count(*) FROM runs r WHERE NOT EXISTS (SELECT 1"
        " FROM decisions d WHERE d.run_id = r.run_id)",
        "steps without a run": "SELECT count(*) FROM run_steps s WHERE NOT EXISTS (SELECT 1"
        " FROM runs r WHERE r.run_id = s.run_id)",
        "decisions without a run": "SELECT count(*) FROM decisions d WHERE NOT EXISTS (SELECT"
        " 1 FROM runs r WHERE r.run_id = d.run_id)",
    }
    async with store.engine.connect() as conn:
        return {k: int((await conn.execute(text(q))).scalar_one()) for k, q in queries.items()}


async def test_d7_a_write_error_at_any_statement_leaves_no_half_written_run(
    target: Target, run_wire: dict[str, Any]
) -> None:
    """D7 (pass figure: 0 rows half-written): a save failing at each of its statements in
    turn (SQLite and PostgreSQL) leaves 0 rows of that run and its key not completed; then
    a clean save is whole (1 run, 9 steps, 1 decision, the key); over the database 0 runs
    without their 9 steps or decision and 0 steps or decisions without their run."""
    store = await target.open()
    try:
        probe = fresh(run_wire)
        assert (await store.claim_idempotency_key("d7-probe", "h")).kind == "new"
        with failing_statement(store, None) as sent:
            await store.save_run(probe, idempotency_key="d7-probe", request_hash="h")
        inserts = [s for s in sent if s in ("INSERT", "UPDATE")]
        assert len(inserts) >= 4  # run, steps, decision, key: each position gets a failure
        failed = 0
        for position in range(1, len(sent) + 1):
            wire, key = fresh(run_wire), f"d7-{position}"
            assert (await store.claim_idempotency_key(key, "h")).kind == "new"
            with failing_statement(store, position):
                try:
                    await store.save_run(wire, idempotency_key=key, request_hash="h")
                except Exception as exc:  # whatever the store makes of the driver's error
                    print(f"statement {position} ({sent[position - 1]}): {type(exc).__name__}")
                else:
                    pytest.fail(f"the save went through with statement {position} failing")
            failed += 1
            counts = await rows_of(store, wire["runId"])
            assert counts == NONE, (position, sent[position - 1], counts)
            # the key was never completed: the same request is still in progress, not replayed
            assert (await store.claim_idempotency_key(key, "h")).kind == "in_progress"
        assert failed == len(sent)
        after = fresh(run_wire)
        assert (await store.claim_idempotency_key("d7-after", "h")).kind == "new"
        await store.save_run(after, idempotency_key="d7-after", request_hash="h")
        assert await rows_of(store, after["runId"]) == WHOLE
        broken = await half_written(store)
        assert set(broken.values()) == {0}, broken
        total, _ = await store.list_runs()
        assert len(total) == 2  # the probe and the last save: nothing of the failed ones
    finally:
        await store.aclose()
