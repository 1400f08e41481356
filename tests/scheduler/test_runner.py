"""The scheduler loop over a controllable clock: every slot once, catch-up, no overlap (F4, H3)."""

from __future__ import annotations

import asyncio

from conclave.scheduler import Job, Scheduler, Watchdog
from conclave.store import RunStore
from tests.scheduler.conftest import DAY0, FakeClock, FakeSleep, Recorder, claims_of, jobs_of

MINUTE_JOB = Job(None, "BTCUSDT", "1m")
HOUR_JOB = Job("paper-1", "ETHUSDT", "1h")
DAY_MS = 86_400_000


async def test_a_simulated_day_of_a_1m_job_runs_1440_slots_once_each(
    sqlite_store: RunStore,
) -> None:
    """serve_forever over 24 simulated hours: 1,440 runs, no duplicates, none missed (F4)."""
    clock = FakeClock(DAY0 + 1000)  # the first close plus the offset
    stop = asyncio.Event()
    sleep = FakeSleep(clock, DAY0 + DAY_MS, stop)
    recorder = Recorder(clock)
    claims = claims_of(sqlite_store)
    scheduler = Scheduler(claims, recorder, jobs=jobs_of(MINUTE_JOB), now_ms=clock,
                          sleep=sleep, offset_s=1.0, poll_s=60.0)  # fmt: skip
    sleep.scheduler = scheduler
    # a bound on liveness, not speed: a loaded machine takes a few times the quiet ~5 s
    await asyncio.wait_for(scheduler.serve_forever(stop), timeout=120)

    slots = [slot.open_ms for _, slot, _ in recorder.calls]
    assert len(slots) == 1440
    assert len(set(slots)) == 1440
    assert slots == [DAY0 - 60_000 + i * 60_000 for i in range(1440)]
    for _, slot, now in recorder.calls:  # each run is as of the bar that just closed (H4)
        assert slot.close_ms == now - 1000
        assert slot.missed == 0
    records = await claims.records(MINUTE_JOB.id)
    assert len(records) == 1440
    assert {r.status for r in records} == {"ok"}
    assert all(s == 60.0 for s in sleep.sleeps)  # it sleeps to the next close, never polls


async def test_three_slots_down_gives_one_catch_up_run_with_missed_2(
    sqlite_store: RunStore,
) -> None:
    """After three slots without a scheduler, one run for the newest with missed=2 (H3)."""
    clock = FakeClock(DAY0 + 1000)
    recorder = Recorder(clock)
    claims = claims_of(sqlite_store)
    scheduler = Scheduler(claims, recorder, jobs=jobs_of(HOUR_JOB), now_ms=clock)
    [first] = await scheduler.run_due_once()
    assert first.status == "ok"
    assert first.slot is not None
    assert first.slot.missed == 0

    clock.advance(3 * 3600)  # down for the next three slots
    [catch_up] = await scheduler.run_due_once()
    [again] = await scheduler.run_due_once()

    assert catch_up.status == "ok"
    assert catch_up.slot is not None
    assert catch_up.slot.missed == 2
    assert catch_up.slot.close_ms == DAY0 + 3 * 3_600_000
    assert again.status == "not_due"
    assert len(recorder.calls) == 2
    assert [(r.slot_ms, r.missed) for r in await claims.records(HOUR_JOB.id)] == [
        (DAY0 - 3_600_000, 0),
        (DAY0 + 2 * 3_600_000, 2),
    ]


async def test_a_slow_run_never_overlaps_the_next_pass_of_the_same_job(
    sqlite_store: RunStore,
) -> None:
    """While a run of a job is in flight, further passes of it skip as busy."""
    clock = FakeClock(DAY0 + 1000)
    gate = asyncio.Event()
    recorder = Recorder(clock, gate=gate, gated=MINUTE_JOB.id)
    other = Job(None, "BTCUSDT", "5m")
    scheduler = Scheduler(claims_of(sqlite_store), recorder, jobs=jobs_of(MINUTE_JOB, other),
                          now_ms=clock)  # fmt: skip
    scheduler.start_due([MINUTE_JOB])
    await asyncio.wait_for(recorder.called.wait(), timeout=10)
    clock.advance(120)  # two more slots close while the first run hangs
    busy = await scheduler.run_due_once()
    scheduler.start_due([MINUTE_JOB])  # the loop's path: still running -> not started again
    assert {o.job_id: o.status for o in busy} == {MINUTE_JOB.id: "busy", other.id: "ok"}
    assert [c[0] for c in recorder.calls].count(MINUTE_JOB.id) == 1

    gate.set()
    await scheduler.wait_idle()
    [after, _] = await scheduler.run_due_once()  # then it catches up once
    assert after.status == "ok"
    assert after.slot is not None
    assert after.slot.missed == 1
    assert [c[0] for c in recorder.calls].count(MINUTE_JOB.id) == 2


async def test_a_failing_run_is_recorded_failed_and_not_retried_for_that_slot(
    sqlite_store: RunStore,
) -> None:
    """An exception ends the slot ``failed`` with the reason; the next pass does not rerun it."""
    clock = FakeClock(DAY0 + 1000)
    recorder = Recorder(clock, ok=False)
    claims = claims_of(sqlite_store)
    scheduler = Scheduler(claims, recorder, jobs=jobs_of(MINUTE_JOB), now_ms=clock)
    [failed] = await scheduler.run_due_once()
    [again] = await scheduler.run_due_once()
    assert (failed.status, again.status) == ("failed", "not_due")
    [record] = await claims.records(MINUTE_JOB.id)
    assert record.status == "failed"
    assert record.error == "TimeoutError: exchange hangs"


async def test_the_watchdog_degrades_after_two_intervals_without_success(
    sqlite_store: RunStore,
) -> None:
    """A job failing for more than 2 intervals is named stalled; a success clears it (H2)."""
    clock = FakeClock(DAY0 + 1000)
    recorder = Recorder(clock)
    claims = claims_of(sqlite_store)
    dog = Watchdog(claims, now_ms=clock, intervals=2.0, offset_ms=1000)
    scheduler = Scheduler(claims, recorder, jobs=jobs_of(MINUTE_JOB), now_ms=clock,
                          watchdog=dog)  # fmt: skip
    await scheduler.run_due_once()
    assert (await dog.health([MINUTE_JOB]))["status"] == "ok"

    recorder.ok = False  # the exchange hangs from now on
    for _ in range(2):
        clock.advance(60)
        await scheduler.run_due_once()
        assert (await dog.health([MINUTE_JOB]))["status"] == "ok"
    clock.advance(1)  # just past 2 intervals + offset after the last successful close
    report = await dog.health([MINUTE_JOB])
    assert report["status"] == "degraded"
    assert report["stalled"] == [MINUTE_JOB.id]
    assert report["jobs"][0]["lastSuccessAt"] == "2023-11-14T00:00:00.000Z"

    recorder.ok = True
    clock.advance(59)
    await scheduler.run_due_once()
    assert (await dog.health([MINUTE_JOB]))["status"] == "ok"


async def test_a_job_that_never_succeeded_is_stalled_two_intervals_after_watching_began(
    sqlite_store: RunStore,
) -> None:
    """No success at all: degraded once 2 intervals + offset passed since the start."""
    clock = FakeClock(DAY0 + 1000)
    dog = Watchdog(claims_of(sqlite_store), now_ms=clock, offset_ms=1000)
    clock.advance(121)
    assert (await dog.health([MINUTE_JOB]))["status"] == "ok"
    clock.advance(0.001)
    assert (await dog.health([MINUTE_JOB]))["stalled"] == [MINUTE_JOB.id]
