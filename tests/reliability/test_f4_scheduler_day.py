"""RELIABILITY F4: the scheduler on a 1m job for a simulated 24 hours: every slot runs once.

Pass figure of the row: **1,440/1,440 runs; 0 duplicates.** The scheduler the service builds
(`build_scheduler`: its claims, watchdog and the pipeline executor) runs its own loop
(`Scheduler.serve_forever`) for 24 simulated hours over the sim market, the nine agents in
process and the run store on an SQLite file; the clock is the test's and moves only when the
loop sleeps (the time machine). Afterwards the database is read: 1,440 slot records, every
minute of the day once, each ``ok`` with its run; 1,440 stored runs, one per slot, each as
of its slot's close; 0 duplicated slots, run ids or as-of times.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text

from conclave.market.sources.sim import SimSource
from conclave.scheduler import Job
from conclave.services.execute import build_scheduler
from conclave.services.runtime import Runtime
from conclave.timeframes import iso_ms
from tests.scheduler.conftest import DAY0, FakeClock, FakeSleep
from tests.services.test_api import make_settings

JOB = Job(None, "BTCUSDT", "1m")
MINUTE_MS, DAY_MS = 60_000, 86_400_000
SLOTS = 1_440
#: A bound on liveness, not speed: 1,440 real runs take about a minute on a quiet machine.
LIVENESS_S = 900


@pytest.mark.slow
async def test_f4_a_simulated_day_of_a_1m_job_is_1440_runs_once_each(tmp_path: Path) -> None:
    """F4 (pass figure: 1,440/1,440 runs; 0 duplicates): `serve_forever` from the first
    close of a day to the last, on the test's clock: 1,440 slots claimed, one per minute of
    the day, all ``ok``; 1,440 runs stored, each the run of exactly one slot and as of that
    slot's close; 0 duplicates of any of them."""
    clock = FakeClock(DAY0 + 1000)  # the first close of the day plus the 1 s offset
    settings = make_settings(tmp_path, scheduler={"offset_s": 1.0})
    runtime = await Runtime.open(settings, now_ms=clock, source=SimSource(now_ms=clock))
    stop = asyncio.Event()
    sleep = FakeSleep(clock, DAY0 + DAY_MS, stop)
    try:
        scheduler = build_scheduler(settings, runtime, sleep=sleep, only=JOB)
        sleep.scheduler = scheduler
        await asyncio.wait_for(scheduler.serve_forever(stop), timeout=LIVENESS_S)
        engine = runtime.store.engine  # type: ignore[attr-defined]
        async with engine.connect() as conn:
            slots = (await conn.execute(text(
                "SELECT slot_ms, status, run_id FROM scheduled_slots WHERE job_id = :j"
                " ORDER BY slot_ms"), {"j": JOB.id})).all()  # fmt: skip
            runs = (await conn.execute(text("SELECT run_id FROM runs"))).all()
        stored = {r.run_id: await runtime.store.get_run(r.run_id) for r in runs}
    finally:
        await runtime.aclose()

    expected = [DAY0 - MINUTE_MS + i * MINUTE_MS for i in range(SLOTS)]
    assert [s.slot_ms for s in slots] == expected  # every minute once, in order
    assert {s.status for s in slots} == {"ok"}
    run_ids = [s.run_id for s in slots]
    assert len(set(run_ids)) == SLOTS  # 0 duplicated runs
    assert set(run_ids) == set(stored)  # 1,440 stored, each the run of one slot
    as_of = {s.run_id: iso_ms(s.slot_ms + MINUTE_MS) for s in slots}
    assert all(run is not None and run["asOf"] == as_of[rid] for rid, run in stored.items())
    assert len({run["asOf"] for run in stored.values() if run is not None}) == SLOTS
