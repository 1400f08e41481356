"""G4 in process: stale pending slots and keys are closed as abandoned, never run again."""

from __future__ import annotations

import asyncio

from conclave.scheduler import Job, Scheduler, SlotClaims
from conclave.scheduler.claims import ABANDONED_REASON
from conclave.scheduler.watchdog import Watchdog
from conclave.store import IdempotencyClaim, RunStore
from tests.scheduler.conftest import DAY0, FakeClock, Recorder, jobs_of
from tests.store.conftest import Target

JOB = Job("paper-1", "BTCUSDT", "1m")
SLOT_MS = DAY0 - 60_000


async def _crashed_slot(store: RunStore, clock: FakeClock) -> SlotClaims:
    """A slot claimed by a 'process' that never finished it (what SIGKILL leaves)."""
    claims = SlotClaims(store.engine, store.backend)
    gate = asyncio.Event()
    recorder = Recorder(clock, gate=gate)
    crashed = Scheduler(claims, recorder, jobs=jobs_of(JOB), now_ms=clock)
    task = asyncio.create_task(crashed.run_due_once())
    await asyncio.wait_for(recorder.called.wait(), 10)
    task.cancel()  # dies mid-run: the slot stays pending
    await asyncio.gather(task, return_exceptions=True)
    [record] = await claims.records(JOB.id)
    assert record.status == "pending"
    return claims


async def test_g4_a_stale_pending_slot_is_abandoned_with_its_reason_and_never_rerun(
    target: Target,
) -> None:
    """G4 (final state, never re-executed): the next scheduler's pass closes the crashed
    slot as ``abandoned`` (reason in ``error``), runs it 0 times, and the watchdog shows it;
    a slot younger than the limit is left pending."""
    store = await target.open()
    try:
        clock = FakeClock(DAY0 + 1000)
        claims = await _crashed_slot(store, clock)
        recorder = Recorder(clock)
        young = Scheduler(claims, recorder, jobs=jobs_of(JOB), now_ms=clock, stale_after_s=60)
        assert [o.status for o in await young.run_due_once()] == ["not_due"]
        assert [r.status for r in await claims.records(JOB.id)] == ["pending"]

        restarted = Scheduler(claims, recorder, jobs=jobs_of(JOB), now_ms=clock,
                              stale_after_s=0.0)  # fmt: skip
        assert [o.status for o in await restarted.run_due_once()] == ["not_due"]
        [record] = await claims.records(JOB.id)
        assert (record.slot_ms, record.status, record.error) == (
            SLOT_MS,
            "abandoned",
            ABANDONED_REASON,
        )
        assert recorder.calls == []  # never re-executed
        found = await restarted.recover()
        assert found is not None
        assert found.slots == []  # closed once

        report = await Watchdog(claims, now_ms=clock).health([JOB])
        assert report["jobs"][0]["lastAbandoned"] == {
            "slotOpenAt": "2023-11-13T23:59:00.000Z",
            "reason": ABANDONED_REASON,
        }
        clock.advance(60)  # the next slot runs as usual
        assert [o.status for o in await restarted.run_due_once()] == ["ok"]
        statuses = [(r.slot_ms, r.status) for r in await claims.records(JOB.id)]
        assert statuses == [(SLOT_MS, "abandoned"), (SLOT_MS + 60_000, "ok")]
    finally:
        await store.aclose()


async def test_g4_the_scheduler_pass_also_abandons_crashed_api_requests(target: Target) -> None:
    """G4: a pending Idempotency-Key claim past the limit is closed by the scheduler's pass
    (with no retry of the request needed); the key then answers ``abandoned``."""
    store = await target.open()
    try:
        assert (await store.claim_idempotency_key("crashed", "h")).kind == "new"
        claims = SlotClaims(store.engine, store.backend)
        clock = FakeClock(DAY0 + 1000)
        sched = Scheduler(claims, Recorder(clock), jobs=jobs_of(), now_ms=clock,
                          stale_after_s=0.0)  # fmt: skip
        found = await sched.recover()
        assert found is not None
        assert found.keys == ["crashed"]
        claim = await store.claim_idempotency_key("crashed", "h")
        assert claim == IdempotencyClaim("abandoned")
    finally:
        await store.aclose()


async def test_g4_a_store_down_during_recovery_does_not_stop_the_scheduler(
    sqlite_store: RunStore,
) -> None:
    """The sweep failing (store closed) is logged and skipped; the pass still answers."""
    claims = SlotClaims(sqlite_store.engine, sqlite_store.backend)
    clock = FakeClock(DAY0 + 1000)

    class Broken(SlotClaims):
        async def recover(self, *, stale_after_s: float) -> object:  # type: ignore[override]
            raise OSError("store down")

    broken = Broken(claims.engine, claims.backend)
    sched = Scheduler(broken, Recorder(clock), jobs=jobs_of(JOB), now_ms=clock)
    assert await sched.recover() is None
    assert [o.status for o in await sched.run_due_once()] == ["ok"]
