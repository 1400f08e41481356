"""RELIABILITY H3: the orchestrator down for 3 slots catches up once, without a stampede.

Pass figure of the row: **1 catch-up run, ``missed=2`` recorded.** A scheduler as the service
builds it (`build_scheduler` over the sim market, the nine agents in process, the run store
on an SQLite file) runs its loop for a 1m job and is stopped after its first run; for the
next three closes no scheduler runs; then a new one (a new runtime on the same database, as
after a restart) runs its loop for five more simulated minutes. On restart exactly one run
is made for the three slots, for the newest of them, recorded with ``missed=2``; from then on
one run a slot, each ``missed=0``; the two slots the catch-up stands for are never claimed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from conclave.market.sources.sim import SimSource
from conclave.scheduler import Job
from conclave.services.execute import build_scheduler
from conclave.services.runtime import Runtime
from conclave.settings import Settings
from tests.scheduler.conftest import DAY0, FakeClock, FakeSleep
from tests.services.test_api import make_settings

JOB = Job("paper-1", "BTCUSDT", "1m")
MINUTE_MS = 60_000


async def _serve(settings: Settings, clock: FakeClock, until_ms: int) -> list[tuple[int, int]]:
    """A fresh runtime and scheduler looping until ``until_ms``; (slot open, missed) it ran."""
    runtime = await Runtime.open(settings, now_ms=clock, source=SimSource(now_ms=clock))
    stop = asyncio.Event()
    sleep = FakeSleep(clock, until_ms, stop)
    try:
        scheduler = build_scheduler(settings, runtime, sleep=sleep, only=JOB)
        sleep.scheduler = scheduler
        before = {r.slot_ms for r in await scheduler.claims.records(JOB.id)}
        await asyncio.wait_for(scheduler.serve_forever(stop), timeout=300)
        after = await scheduler.claims.records(JOB.id)
    finally:
        await runtime.aclose()
    return [(r.slot_ms, r.missed) for r in after if r.slot_ms not in before]


async def test_h3_three_slots_down_one_catch_up_run_with_missed_2(tmp_path: Path) -> None:
    """H3 (pass figure: 1 catch-up run, missed=2 recorded): one run before the outage
    (the slot closing at DAY0); down over the closes at +1, +2, +3 min; on restart at
    +3 min + 1 s one run for the slot closing at +3 min with missed=2 (the two before it
    never run), then the slots closing at +4 to +8 min once each with missed=0."""
    settings = make_settings(tmp_path, scheduler={"offset_s": 1.0})
    clock = FakeClock(DAY0 + 1000)
    before = await _serve(settings, clock, until_ms=DAY0 + 2000)  # one pass, then stopped
    assert before == [(DAY0 - MINUTE_MS, 0)]
    clock.now = DAY0 + 3 * MINUTE_MS + 1000  # three closes later, a new process starts
    after = await _serve(settings, clock, until_ms=DAY0 + 8 * MINUTE_MS + 2000)
    catch_up, *regular = after
    assert catch_up == (DAY0 + 2 * MINUTE_MS, 2)  # the newest missed slot, for all three
    assert regular == [(DAY0 + k * MINUTE_MS, 0) for k in range(3, 8)]
    assert {DAY0, DAY0 + MINUTE_MS}.isdisjoint(slot for slot, _ in after)  # never run
