"""Several schedulers on one database: exactly one run per job and slot (H1)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from conclave.scheduler import Job, Scheduler, SlotClaims
from conclave.store import RunStore
from tests.scheduler.conftest import DAY0, FakeClock, Recorder, jobs_of
from tests.security.procs import started
from tests.store.conftest import Target

JOB = Job("paper-1", "BTCUSDT", "1m")
#: Seconds the three scheduler processes may take in all: liveness, not speed (a loaded
#: machine, e.g. both cores busy, takes a few times the quiet 15 s).
LIVENESS_S = 120.0


async def test_three_schedulers_over_ten_slots_run_exactly_ten_times(target: Target) -> None:
    """Three instances, each with its own engine, racing on every slot: 10 runs in all."""
    stores: list[RunStore] = [await target.open() for _ in range(3)]
    try:
        clock = FakeClock(DAY0 + 1000)
        recorders = [Recorder(clock) for _ in stores]
        schedulers = [
            Scheduler(SlotClaims(s.engine, s.backend), r, jobs=jobs_of(JOB), now_ms=clock)
            for s, r in zip(stores, recorders, strict=True)
        ]
        async with asyncio.timeout(LIVENESS_S):
            for _ in range(10):
                for _ in range(2):  # a second pass finds nothing due
                    await asyncio.gather(*(s.run_due_once() for s in schedulers))
                clock.advance(60)
        slots = [slot.open_ms for r in recorders for _, slot, _ in r.calls]
        assert len(slots) == 10
        assert sorted(slots) == [DAY0 - 60_000 + i * 60_000 for i in range(10)]
        records = await SlotClaims(stores[0].engine, stores[0].backend).records(JOB.id)
        assert [r.status for r in records] == ["ok"] * 10
        # losers either saw the slot taken (not due) or lost the insert (attempts + 1)
        assert all(1 <= r.attempts <= 3 for r in records)
    finally:
        for s in stores:
            await s.aclose()


_PROCESS = """
import asyncio, json, sys
from pathlib import Path
from conclave.scheduler import Job, Scheduler, SlotClaims
from conclave.store import RunStore
from tests.scheduler.conftest import FakeClock, Recorder, jobs_of

async def main(data_dir, start):
    store = await RunStore.open(None, data_dir=Path(data_dir))
    clock = FakeClock(start)
    recorder = Recorder(clock)
    job = Job("paper-1", "BTCUSDT", "1m")
    sched = Scheduler(SlotClaims(store.engine, store.backend), recorder,
                      jobs=jobs_of(job), now_ms=clock)
    for _ in range(10):
        for _ in range(3):
            await sched.run_due_once()
        clock.advance(60)
    await store.aclose()
    print(json.dumps([slot.open_ms for _, slot, _ in recorder.calls]))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def test_three_scheduler_processes_over_ten_slots_run_exactly_ten_times(tmp_path: Path) -> None:
    """H1 (pass figure: exactly 10 runs): three real processes on one SQLite file, stepping
    through the same ten slots. Each process is owned by `started` (stopped by its PID,
    also when the test fails); they must finish within `LIVENESS_S`, a bound on liveness,
    not speed (about 15 s on a quiet two-core machine)."""

    async def migrate() -> None:
        await (await RunStore.open(None, data_dir=tmp_path)).aclose()

    asyncio.run(migrate())  # once up front, so the processes race on slots only
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-c", _PROCESS, str(tmp_path), str(DAY0 + 1000)]
    logs = [tmp_path / f"scheduler-{i}.log" for i in range(3)]
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(started(cmd, os.environ.copy(), root, log)) for log in logs]
        deadline = time.monotonic() + LIVENESS_S
        for proc, log in zip(procs, logs, strict=True):
            code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            assert code == 0, log.read_text()[-2000:]
    outs = [json.loads(log.read_text().strip().splitlines()[-1]) for log in logs]
    slots = [s for out in outs for s in out]
    assert sorted(slots) == [DAY0 - 60_000 + i * 60_000 for i in range(10)]
