"""SQLite writes go to the store's writer thread as one transaction each (`SqliteWriter`).

A run's inserts and its COMMIT run on one thread in one ``BEGIN IMMEDIATE`` transaction
(one hop from the event loop instead of one per statement). These tests hold what that
must keep: a failure in the middle leaves no row and the writer usable, concurrent saves
are all durable (read by a plain ``sqlite3`` connection after the store is closed), and a
caller cancelled mid-save neither leaves a partial run nor lets the next writer in before
the thread is done.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from conclave.errors import StoreUnavailableError
from conclave.store import RunStore, run_writes
from conclave.store import repository as repository_module
from tests.store.conftest import fresh, rows_of

DB_FILE = "conclave.db"
ALL = {"runs": 1, "run_steps": 9, "decisions": 1, "idempotency_keys": 0}
NONE = {"runs": 0, "run_steps": 0, "decisions": 0, "idempotency_keys": 0}


async def test_a_save_is_one_immediate_transaction_on_the_writer_thread(
    tmp_path: Path, sim_wire: dict[str, Any]
) -> None:
    """BEGIN IMMEDIATE, the run, the steps (one executemany), the decision and COMMIT all
    run on one thread that is not the event loop's; the async engine sends nothing."""
    store = await RunStore.open(None, data_dir=tmp_path)
    sent: list[tuple[str, int]] = []
    committed: list[int] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append((statement.split(None, 2)[1 if statement.startswith("BEGIN") else 0],
                     threading.get_ident()))  # fmt: skip

    assert store._sqlite is not None
    writer_engine = store.write_engine
    event.listen(writer_engine, "before_cursor_execute", before)
    event.listen(writer_engine, "commit", lambda conn: committed.append(threading.get_ident()))
    event.listen(store.engine.sync_engine, "before_cursor_execute", before)
    try:
        await store.save_run(fresh(sim_wire))
    finally:
        await store.aclose()
    assert [s for s, _ in sent] == ["IMMEDIATE", "INSERT", "INSERT", "INSERT"]
    threads = {t for _, t in sent} | set(committed)
    assert len(threads) == 1
    assert threading.get_ident() not in threads


async def test_the_writer_connection_has_the_store_pragmas(tmp_path: Path) -> None:
    """The writer thread's connection runs WAL, synchronous=NORMAL (1), foreign keys on
    and the store's busy timeout (here 2.5 s)."""
    store = await RunStore.open(None, data_dir=tmp_path, busy_timeout_s=2.5)
    assert store._sqlite is not None

    def pragmas(conn: Any) -> list[Any]:
        names = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        return [conn.exec_driver_sql(f"PRAGMA {name}").scalar_one() for name in names]

    try:
        assert await store._sqlite.transaction(pragmas) == ["wal", 1, 1, 2500]
    finally:
        await store.aclose()


async def test_a_failure_between_inserts_leaves_no_row_and_the_writer_usable(
    tmp_path: Path, sim_wire: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error raised on the writer thread after the run and its steps are inserted rolls
    all of them back; the next save on the same store lands whole at once."""
    store = await RunStore.open(None, data_dir=tmp_path)
    real_insert = run_writes._INSERT_DECISION

    class Broken:
        def __getattr__(self, name: str) -> Any:
            raise RuntimeError("injected failure before the decision")

    monkeypatch.setattr(run_writes, "_INSERT_DECISION", Broken())
    wire = fresh(sim_wire)
    try:
        with pytest.raises(RuntimeError, match="injected"):
            await store.save_run(wire)
        assert await rows_of(store, wire["runId"]) == NONE
        monkeypatch.setattr(run_writes, "_INSERT_DECISION", real_insert)
        again = fresh(sim_wire)
        async with asyncio.timeout(5.0):
            await store.save_run(again)
        assert await rows_of(store, again["runId"]) == ALL
    finally:
        await store.aclose()


async def test_concurrent_saves_and_claims_are_all_durable(
    tmp_path: Path, sim_wire: dict[str, Any]
) -> None:
    """40 saves (half of them completing a claimed key) at once: after the store is closed,
    a plain sqlite3 connection finds every run whole and every key completed."""
    store = await RunStore.open(None, data_dir=tmp_path)
    wires = [fresh(sim_wire) for _ in range(40)]

    async def save(i: int, wire: dict[str, Any]) -> None:
        if i % 2:
            await store.save_run(wire)
            return
        assert (await store.claim_idempotency_key(f"k{i}", "h")).kind == "new"
        await store.save_run(wire, idempotency_key=f"k{i}", request_hash="h")

    try:
        await asyncio.gather(*(save(i, w) for i, w in enumerate(wires)))
    finally:
        await store.aclose()
    conn = sqlite3.connect(tmp_path / DB_FILE)
    try:
        runs = {r for (r,) in conn.execute("SELECT run_id FROM runs")}
        steps = dict(conn.execute("SELECT run_id, count(*) FROM run_steps GROUP BY run_id"))
        decisions = {r for (r,) in conn.execute("SELECT run_id FROM decisions")}
        keys = dict(conn.execute("SELECT idem_key, state FROM idempotency_keys"))
    finally:
        conn.close()
    assert runs == decisions == {w["runId"] for w in wires}
    assert steps == dict.fromkeys(runs, 9)
    assert keys == {f"k{i}": "completed" for i in range(0, 40, 2)}


async def test_a_cancelled_caller_keeps_the_turn_until_its_transaction_ends(
    tmp_path: Path, sim_wire: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save whose caller is cancelled while the thread writes (held 0.3 s there) commits
    whole on its own; the next writer's turn comes only after that commit, and the
    release of its key (what the API does then) leaves the key completed."""
    store = await RunStore.open(None, data_dir=tmp_path)
    real = run_writes.insert_run
    finished: list[float] = []

    def slow(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        time.sleep(0.3)  # on the writer thread, inside the transaction
        finished.append(time.monotonic())

    monkeypatch.setattr(repository_module, "insert_run", slow)
    wire = fresh(sim_wire)
    try:
        assert (await store.claim_idempotency_key("k-cancel", "h")).kind == "new"
        task = asyncio.create_task(
            store.save_run(wire, idempotency_key="k-cancel", request_hash="h")
        )
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert store._sqlite is not None
        async with store._sqlite.turn():  # what accounts_repo's writes wait for
            turn_at = time.monotonic()
        assert finished
        assert finished[0] <= turn_at
        await store.release_idempotency_key("k-cancel")  # what the API does on failure
        assert await rows_of(store, wire["runId"]) == ALL | {"idempotency_keys": 1}
        claim = await store.claim_idempotency_key("k-cancel", "h")
        assert (claim.kind, claim.run_id) == ("replay", wire["runId"])
    finally:
        await store.aclose()


async def test_a_closed_store_refuses_writes_as_unavailable(
    tmp_path: Path, sim_wire: dict[str, Any]
) -> None:
    """After aclose a save raises StoreUnavailableError; closing twice is harmless."""
    store = await RunStore.open(None, data_dir=tmp_path)
    await store.aclose()
    await store.aclose()
    with pytest.raises(StoreUnavailableError, match="closed"):
        await store.save_run(fresh(sim_wire))
