"""RELIABILITY H1: three replicas with the scheduler on, 10 slots: one run per slot.

Pass figure of the row: **exactly 10 runs.** Three scheduler processes share one database
(an SQLite file, or a fresh schema of the real PostgreSQL named by ``DATABASE_URL``) and
step through the same ten 1m slots, three passes a slot each; before each slot they wait for
one another (a file barrier), so all three race on every claim. Each
process prints the slots it ran; together they must be the ten slots exactly once, and the
database must hold ten claims, each ``ok`` with its own run, each tried by at most the three
replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conclave.scheduler import SlotClaims
from conclave.store import RunStore
from tests.scheduler.conftest import DAY0
from tests.security.procs import started
from tests.store.conftest import drop_schema

JOB_ID = "paper-1@BTCUSDT@1m"
REPLICAS, SLOTS = 3, 10
#: Seconds the processes may take in all: liveness, not speed (a loaded machine takes a few
#: times the quiet 15 s).
LIVENESS_S = 180.0

_REPLICA = """
import asyncio, json, sys, time
from pathlib import Path
from conclave.scheduler import Job, Scheduler, SlotClaims
from conclave.store import RunStore
from tests.scheduler.conftest import FakeClock, Recorder, jobs_of

def barrier(where, name, me, n):
    # every replica waits here until all n arrived, so all n race on the slot together
    Path(where, f"{name}.{me}").touch()
    while len(list(Path(where).glob(f"{name}.*"))) < n:
        time.sleep(0.0002)

async def main(url, data_dir, schema, start, me):
    store = await RunStore.open(url or None, data_dir=Path(data_dir), schema=schema or None)
    clock = FakeClock(start)
    recorder = Recorder(clock)
    sched = Scheduler(SlotClaims(store.engine, store.backend), recorder,
                      jobs=jobs_of(Job("paper-1", "BTCUSDT", "1m")), now_ms=clock)
    await sched.claims.last_slot("warm-up")  # connect before the first race
    for slot in range(10):
        barrier(data_dir, f"slot{slot}", me, 3)
        for _ in range(3):
            await sched.run_due_once()
        clock.advance(60)
    await store.aclose()
    print(json.dumps([slot.open_ms for _, slot, _ in recorder.calls]))

asyncio.run(main(*sys.argv[1:4], int(sys.argv[4]), sys.argv[5]))
"""


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(url, schema) of an empty database: an SQLite file in tmp_path ("", ""), or a fresh
    PostgreSQL schema, dropped afterwards."""
    if request.param == "sqlite":
        yield "", ""
        return
    url = request.getfixturevalue("pg_url")
    schema = f"conclave_h1_{uuid.uuid4().hex[:12]}"
    yield url, schema
    asyncio.run(drop_schema(url, schema))


def test_h1_three_scheduler_replicas_over_10_slots_run_exactly_10(
    database: tuple[str, str], tmp_path: Path
) -> None:
    """H1 (pass figure: exactly 10 runs): three scheduler processes (each owned by
    `started`, stopped by its PID) on one database, three passes per slot over ten slots:
    10 runs in all, the ten slots once each; 10 claims ``ok`` with distinct runs."""
    url, schema = database

    async def open_store() -> RunStore:
        return await RunStore.open(url or None, data_dir=tmp_path, schema=schema or None)

    async def migrate() -> None:
        await (await open_store()).aclose()

    asyncio.run(migrate())  # once up front, so the processes race on slots only
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-c", _REPLICA, url, str(tmp_path), schema, str(DAY0 + 1000)]
    logs = [tmp_path / f"replica-{i}.log" for i in range(REPLICAS)]
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(started([*cmd, str(i)], os.environ.copy(), root, log))
                 for i, log in enumerate(logs)]  # fmt: skip
        deadline = time.monotonic() + LIVENESS_S
        for proc, log in zip(procs, logs, strict=True):
            code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            assert code == 0, log.read_text()[-2000:]
    ran = [s for log in logs for s in json.loads(log.read_text().strip().splitlines()[-1])]
    assert len(ran) == SLOTS
    assert sorted(ran) == [DAY0 - 60_000 + i * 60_000 for i in range(SLOTS)]

    async def records() -> list[tuple[str, str | None, int]]:
        store = await open_store()
        try:
            found = await SlotClaims(store.engine, store.backend).records(JOB_ID)
            return [(r.status, r.run_id, r.attempts) for r in found]
        finally:
            await store.aclose()

    claims = asyncio.run(records())
    assert [status for status, _, _ in claims] == ["ok"] * SLOTS
    assert len({run_id for _, run_id, _ in claims}) == SLOTS
    attempts = [a for _, _, a in claims]
    print(f"H1: {len(ran)} runs, {sum(attempts)} claim attempts over {SLOTS} slots")
    assert all(1 <= a <= REPLICAS for a in attempts)  # a loser saw it taken, or lost the insert
