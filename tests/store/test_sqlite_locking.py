"""SQLite under contention: WAL + BEGIN IMMEDIATE + busy timeout (RELIABILITY.md D4, D5)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conclave.errors import StoreUnavailableError
from conclave.store import RunStore
from tests.security.procs import started
from tests.store.conftest import fresh, rows_of

DB_FILE = "conclave.db"
ROOT = Path(__file__).resolve().parents[2]
#: Seconds a group of writer processes may take: liveness, not speed.
LIVENESS_S = 120.0


async def test_the_default_database_is_a_wal_file_under_data_dir(tmp_path: Path) -> None:
    """No URL: data_dir/conclave.db in WAL mode with the 5 s busy timeout."""
    store = await RunStore.open(None, data_dir=tmp_path / "data")
    try:
        async with store.engine.connect() as conn:
            mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar_one()
            busy = (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar_one()
    finally:
        await store.aclose()
    assert (tmp_path / "data" / DB_FILE).is_file()
    assert (mode, busy) == ("wal", 5000)


async def test_fifty_concurrent_saves_all_land(tmp_path: Path, sim_wire: dict[str, Any]) -> None:
    """D5: 50 save_run tasks at once: 50 runs with 9 steps each, no 'database is locked'."""
    store = await RunStore.open(None, data_dir=tmp_path)
    wires = [fresh(sim_wire) for _ in range(50)]
    try:
        results = await asyncio.gather(*(store.save_run(w) for w in wires), return_exceptions=True)
        assert [r for r in results if r is not None] == []
        items, total = await store.list_runs(limit=100)
        assert total == 50
        assert {i["runId"] for i in items} == {w["runId"] for w in wires}
        async with store.engine.connect() as conn:
            steps = (await conn.exec_driver_sql("SELECT count(*) FROM run_steps")).scalar_one()
        assert steps == 450
    finally:
        await store.aclose()


_WRITER = """
import asyncio, json, sys, uuid
from pathlib import Path
from conclave.store import RunStore

async def main() -> None:
    data_dir, wire_file, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    wire = json.loads(wire_file.read_text())
    store = await RunStore.open(None, data_dir=data_dir)
    runs = [dict(wire, runId=uuid.uuid4().hex) for _ in range(n)]
    await asyncio.gather(*(store.save_run(r) for r in runs))
    await store.aclose()

asyncio.run(main())
"""


def _run_all(args: list[str], n: int, log_dir: Path) -> tuple[list[int], list[str]]:
    """Run ``n`` copies of ``args`` at once, each owned by `started` (stopped by its PID
    also when the test fails); their exit codes and output. They must all exit within
    `LIVENESS_S`, a bound on liveness, not speed."""
    logs = [log_dir / f"proc-{i}.log" for i in range(n)]
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(started(args, os.environ.copy(), ROOT, log)) for log in logs]
        deadline = time.monotonic() + LIVENESS_S
        codes = [p.wait(timeout=max(0.1, deadline - time.monotonic())) for p in procs]
    return codes, [log.read_text()[-2000:] for log in logs]


def test_two_processes_saving_concurrently_all_land(
    tmp_path: Path, sim_wire: dict[str, Any]
) -> None:
    """D5 across processes: 2 processes x 25 concurrent saves on one file: 50 runs."""
    wire_file = tmp_path / "wire.json"
    wire_file.write_text(json.dumps(sim_wire))
    args = [sys.executable, "-c", _WRITER, str(tmp_path), str(wire_file), "25"]
    codes, errors = _run_all(args, 2, tmp_path)
    assert codes == [0, 0], errors
    with sqlite3.connect(tmp_path / DB_FILE) as conn:
        runs = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
        steps = conn.execute("SELECT count(*) FROM run_steps").fetchone()[0]
    assert (runs, steps) == (50, 450)


_OPENER = """
import asyncio, sys
from pathlib import Path
from conclave.store import RunStore

async def main() -> None:
    store = await RunStore.open(None, data_dir=Path(sys.argv[1]))
    await store.aclose()

asyncio.run(main())
"""


def test_processes_opening_one_new_file_together_all_start(tmp_path: Path) -> None:
    """Four processes open (switch to WAL, migrate) one new file at once, three times over.

    SQLite answers the WAL switch with "database is locked" at once, without waiting, while
    another process converts the same new file; before the retry one of two processes died
    of that about once in twenty starts.
    """
    for round_ in range(3):
        data_dir = tmp_path / f"round{round_}"
        data_dir.mkdir()
        args = [sys.executable, "-c", _OPENER, str(data_dir)]
        codes, errors = _run_all(args, 4, data_dir)
        assert codes == [0, 0, 0, 0], errors
        with sqlite3.connect(data_dir / DB_FILE) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 1


def _hold_exclusive(path: Path, seconds: float, locked: threading.Event) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
    finally:
        conn.close()


async def _with_lock_held(path: Path, seconds: float) -> threading.Thread:
    locked = threading.Event()
    holder = threading.Thread(target=_hold_exclusive, args=(path, seconds, locked))
    holder.start()
    assert await asyncio.to_thread(locked.wait, 5.0)
    return holder


async def test_a_save_waits_for_an_exclusive_lock_and_commits(
    tmp_path: Path, sim_wire: dict[str, Any]
) -> None:
    """D4: another connection holds BEGIN EXCLUSIVE for 1.5 s; save_run waits, then commits
    the whole run."""
    store = await RunStore.open(None, data_dir=tmp_path)
    try:
        holder = await _with_lock_held(tmp_path / DB_FILE, 1.5)
        wire = fresh(sim_wire)
        t0 = time.perf_counter()
        await store.save_run(wire)
        waited = time.perf_counter() - t0
        await asyncio.to_thread(holder.join)
        assert 1.0 < waited < 5.0
        assert await rows_of(store, wire["runId"]) == {
            "runs": 1, "run_steps": 9, "decisions": 1, "idempotency_keys": 0,
        }  # fmt: skip
    finally:
        await store.aclose()


async def test_a_lock_held_past_the_busy_timeout_is_unavailable_not_partial(
    tmp_path: Path, sim_wire: dict[str, Any]
) -> None:
    """D4: past the busy timeout save_run raises StoreUnavailableError (503), with no SQL or
    path in its message, writes nothing, and works again once the lock is gone."""
    store = await RunStore.open(None, data_dir=tmp_path, busy_timeout_s=0.3)
    try:
        holder = await _with_lock_held(tmp_path / DB_FILE, 1.2)
        wire = fresh(sim_wire)
        t0 = time.perf_counter()
        with pytest.raises(StoreUnavailableError) as info:
            await store.save_run(wire)
        assert time.perf_counter() - t0 < 1.0
        message = str(info.value)
        assert "locked" not in message
        assert str(tmp_path) not in message
        assert "INSERT" not in message
        await asyncio.to_thread(holder.join)
        assert (await rows_of(store, wire["runId"]))["runs"] == 0
        await store.save_run(wire)
        assert await store.get_run(wire["runId"]) == wire
    finally:
        await store.aclose()
