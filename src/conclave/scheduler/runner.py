"""`Scheduler`: run every job once per closed bar, exactly once across processes.

Why a clock-driven loop rather than APScheduler: the whole schedule is "each bar close plus
an offset", which `conclave.scheduler.jobs` computes in three lines, and the exactly-once
guarantee has to live in the database anyway (H1). A loop over an injected clock and sleep
is what makes 24 simulated hours run in seconds in the tests (F4); APScheduler reads the
real clock inside its triggers and would need patching to do the same.

One pass over a job (`Scheduler.run_job`):

1. if the job is already running in this process, skip it (never overlap; the next pass
   picks up what it missed);
2. compute the due slot (the bar that closed at least ``offset`` ago, H4) and the newest
   slot ever claimed for the job; nothing newer is due -> done;
3. coalesce: the slots in between are not run one by one; this one run stands for them and
   records ``missed`` = how many (H3);
4. claim (job, slot) in the database; another process holding it -> skip (H1);
5. execute the run as of the slot's close and record ``ok`` (with the run id) or ``failed``.

`Scheduler.run_due_once` does one pass over every job (``conclave scheduler --once``);
`Scheduler.serve_forever` repeats passes, sleeping until the next slot of any job (at most
``poll_s``).

Crash recovery (G4): every pass first closes the slots and idempotency claims left
``pending`` for ``stale_after_s`` by a process that died (`SlotClaims.recover`) as
``abandoned``, with the reason; they are never run again (the slot stays claimed, so step
2 never finds it due); `serve_forever` sweeps at most once a second. With the limit
`conclave.services.execute` sets (the run deadline plus 25 s) and passes at least every
``poll_s`` = 30 s, a crashed slot or request is closed within the run deadline plus 56 s.

Metrics: each claimed slot's lag (its close to the start of its run), and slots by outcome
(``ok``, ``failed``, ``error``, ``claimed_elsewhere``, ``abandoned``; ``missed`` counts the
coalesced ones).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import structlog

from conclave.observability.metrics import SCHEDULER_SLOT_LAG, SCHEDULER_SLOTS
from conclave.scheduler.claims import Recovered, SlotClaims
from conclave.scheduler.jobs import Job, Slot, due_slot, missed_between, next_fire_ms
from conclave.scheduler.watchdog import Watchdog, WatchedJob

log = structlog.get_logger(__name__)

OutcomeStatus = Literal["ok", "failed", "not_due", "claimed_elsewhere", "busy", "error"]
#: Default staleness limit: the default run deadline (10 s) plus a margin for saving.
STALE_AFTER_S = 35.0
#: `serve_forever` sweeps stale claims at most this often (seconds, monotonic clock).
RECOVER_EVERY_S = 1.0


@dataclass(frozen=True, slots=True)
class RunResult:
    """What executing one slot produced: the stored run's id and whether it made progress."""

    run_id: str
    ok: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one pass did for one job (``slot`` None when nothing was due or it was busy)."""

    job_id: str
    status: OutcomeStatus
    slot: Slot | None = None
    run_id: str | None = None
    reason: str = ""


#: Runs ``job`` as of ``slot.close_ms``, stores the run and says how it went.
RunExecutor = Callable[[Job, Slot], Awaitable[RunResult]]
#: The jobs to schedule now (settings plus those added through the API).
JobSource = Callable[[], Awaitable[Sequence[Job | WatchedJob]]]


class Scheduler:
    """Runs due jobs through ``execute``; claims slots through ``claims``.

    ``now_ms`` is the clock (ms UTC) and ``sleep`` the way to wait (seconds); both are
    injected so tests can drive simulated days. ``offset_s`` is the wait after each close;
    ``poll_s`` the longest sleep, so jobs added through the API are seen promptly.
    ``stale_after_s`` is how long a claim may stay pending before it is closed as
    abandoned; it must exceed the longest a live run can take (the run deadline).
    """

    def __init__(
        self,
        claims: SlotClaims,
        execute: RunExecutor,
        *,
        jobs: JobSource,
        now_ms: Callable[[], int],
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        offset_s: float = 1.0,
        poll_s: float = 30.0,
        watchdog: Watchdog | None = None,
        stale_after_s: float = STALE_AFTER_S,
    ) -> None:
        self.claims = claims
        self.stale_after_s = stale_after_s
        self.execute = execute
        self.job_source = jobs
        self.now_ms = now_ms
        self.sleep = sleep
        self.offset_ms = round(offset_s * 1000)
        self.poll_s = poll_s
        self.watchdog = watchdog
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: dict[str, asyncio.Task[Outcome]] = {}
        self._recovered_at = -RECOVER_EVERY_S

    async def jobs(self) -> list[Job]:
        """The current jobs, each once."""
        seen: dict[str, Job] = {}
        for item in await self.job_source():
            job = item.job if isinstance(item, WatchedJob) else item
            seen.setdefault(job.id, job)
        return list(seen.values())

    async def run_job(self, job: Job, now_ms: int | None = None) -> Outcome:
        """One pass over ``job`` at ``now_ms`` (default: the clock now); see the module
        docstring. Never raises for a failed run."""
        lock = self._locks.setdefault(job.id, asyncio.Lock())
        if lock.locked():
            return Outcome(job.id, "busy")
        async with lock:
            try:
                return await self._run_locked(job, self.now_ms() if now_ms is None else now_ms)
            except Exception as exc:  # the store being down must not stop the scheduler
                log.warning("scheduler_pass_failed", job=job.id, error=type(exc).__name__)
                SCHEDULER_SLOTS.labels("error").inc()
                return Outcome(job.id, "error", reason=f"{type(exc).__name__}: {exc}"[:300])

    async def _run_locked(self, job: Job, now_ms: int) -> Outcome:
        tf = job.tf
        due = due_slot(tf, now_ms, self.offset_ms)
        last = await self.claims.last_slot(job.id)
        if last is not None and last >= due.open_ms:
            return Outcome(job.id, "not_due")
        slot = Slot(due.open_ms, due.close_ms, missed_between(tf, last, due.open_ms))
        if not await self.claims.claim(job.id, slot):
            SCHEDULER_SLOTS.labels("claimed_elsewhere").inc()
            return Outcome(job.id, "claimed_elsewhere", slot)
        if slot.missed:
            SCHEDULER_SLOTS.labels("missed").inc(slot.missed)
        SCHEDULER_SLOT_LAG.observe(max(0.0, (now_ms - slot.close_ms) / 1000.0))
        try:
            result = await self.execute(job, slot)
        except Exception as exc:  # recorded on the slot; the next slot runs as usual
            reason = f"{type(exc).__name__}: {exc}"[:300]
            await self.claims.finish(job.id, slot.open_ms, "failed", error=reason)
            log.warning("scheduled_run_failed", job=job.id, slot=slot.open_ms, reason=reason)
            SCHEDULER_SLOTS.labels("failed").inc()
            return Outcome(job.id, "failed", slot, reason=reason)
        status: Literal["ok", "failed"] = "ok" if result.ok else "failed"
        SCHEDULER_SLOTS.labels(status).inc()
        await self.claims.finish(
            job.id, slot.open_ms, status, run_id=result.run_id, error=result.reason or None
        )
        log.info("scheduled_run", job=job.id, slot=slot.open_ms, missed=slot.missed,
                 run_id=result.run_id, status=status)  # fmt: skip
        return Outcome(job.id, status, slot, result.run_id, result.reason)

    async def recover(self) -> Recovered | None:
        """Close stale pending slots and idempotency claims as abandoned (see the module
        docstring); None when the store could not be used (the next pass tries again)."""
        try:
            found = await self.claims.recover(stale_after_s=self.stale_after_s)
        except Exception as exc:  # the store being down must not stop the scheduler
            log.warning("scheduler_recover_failed", error=type(exc).__name__)
            return None
        if found.slots:
            SCHEDULER_SLOTS.labels("abandoned").inc(len(found.slots))
        if found.slots or found.keys:
            log.warning("abandoned_after_crash", slots=found.slots, keys=len(found.keys))
        return found

    async def run_due_once(self) -> list[Outcome]:
        """Recover, then one pass over every job, concurrently; what each did."""
        await self.recover()
        jobs = await self.jobs()
        now = self.now_ms()
        return list(await asyncio.gather(*(self.run_job(job, now) for job in jobs)))

    def start_due(self, jobs: Sequence[Job]) -> None:
        """Start a pass for each job not already running here (as background tasks)."""
        now = self.now_ms()
        for job in jobs:
            running = self._tasks.get(job.id)
            if running is None or running.done():
                self._tasks[job.id] = asyncio.create_task(self.run_job(job, now))

    async def wait_idle(self) -> None:
        """Wait until every pass started by `start_due` has finished."""
        pending = [t for t in self._tasks.values() if not t.done()]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def seconds_to_next(self, jobs: Sequence[Job]) -> float:
        """Seconds until the next slot of any job becomes due (at most ``poll_s``)."""
        now = self.now_ms()
        wake = min((next_fire_ms(j.tf, now, self.offset_ms) for j in jobs), default=None)
        if wake is None:
            return self.poll_s
        return min(max((wake - now) / 1000.0, 0.0), self.poll_s)

    async def serve_forever(self, stop: asyncio.Event | None = None) -> None:
        """Run passes at every slot close plus the offset until ``stop`` is set.

        In-flight runs are awaited on the way out (each is bounded by the run deadline).
        """
        stop = stop if stop is not None else asyncio.Event()
        try:
            while not stop.is_set():
                try:
                    jobs = await self.jobs()
                except Exception as exc:  # e.g. the store is down: retry at the next poll
                    log.warning("scheduler_jobs_unavailable", error=type(exc).__name__)
                    jobs = []
                if time.monotonic() - self._recovered_at >= RECOVER_EVERY_S:
                    self._recovered_at = time.monotonic()
                    await self.recover()
                self.start_due(jobs)
                await self._report(jobs)
                await self._sleep_or_stop(self.seconds_to_next(jobs), stop)
        finally:
            await self.wait_idle()

    async def _report(self, jobs: Sequence[Job]) -> None:
        if self.watchdog is None or not jobs:
            return
        try:
            report = await self.watchdog.health(await self.job_source())
        except Exception as exc:  # health is advisory here; the API reports it too
            log.warning("scheduler_watchdog_failed", error=type(exc).__name__)
            return
        if report["stalled"]:
            log.error("scheduler_stalled", jobs=report["stalled"])

    async def _sleep_or_stop(self, seconds: float, stop: asyncio.Event) -> None:
        sleeper = asyncio.ensure_future(self.sleep(seconds))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, stopper):
                task.cancel()
            await asyncio.gather(sleeper, stopper, return_exceptions=True)
