"""The scheduler wired to the runtime: execute a slot exactly like the API, build a `Scheduler`.

`PipelineExecutor` runs the job's pipeline as of the slot's close (never later, so the
open bar is never read, H4), within the run deadline, with the agents in process or over
HTTP by `Settings.agent_uses_http` - the same `Runtime.pipeline` the API uses, so
``USE_HTTP_AGENTS=true`` means `HttpRunner` here too. The run is saved like an API run;
for a job with an account, ``on_account_run`` (the paper accounts' hook) gets the run next.

A run counts as progress for the watchdog when its decision is ``ok`` or ``blocked`` (the
risk manager vetoing is a healthy answer); ``no_signal`` and ``failed`` do not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from conclave.accounts.hook import process_for_account
from conclave.observability import tracing
from conclave.pipeline import Pipeline, PipelineRun
from conclave.scheduler.claims import JobTable, SlotClaims
from conclave.scheduler.jobs import Job, Slot
from conclave.scheduler.runner import RunResult, Scheduler
from conclave.scheduler.watchdog import Watchdog, WatchedJob
from conclave.services.runtime import Runtime
from conclave.settings import SchedulerSettings, Settings
from conclave.timeframes import iso_ms

log = structlog.get_logger(__name__)

#: Decision statuses that count as progress.
PROGRESS = frozenset({"ok", "blocked"})
#: Called with the run after a run of a job with an account is saved.
AccountHook = Callable[[PipelineRun], Awaitable[Any]]


class PipelineExecutor:
    """Runs one slot of a job through ``runtime`` and stores the run; see the module doc."""

    def __init__(self, runtime: Runtime, *, on_account_run: AccountHook | None = None) -> None:
        self.runtime = runtime
        self.on_account_run = on_account_run

    def pipeline(self) -> Pipeline:
        """The pipeline the settings' agent modes select (the API's default one)."""
        return self.runtime.pipeline(None)

    async def __call__(self, job: Job, slot: Slot) -> RunResult:
        """Run ``job`` as of ``slot.close_ms``, save it, hand it to the account hook."""
        rt = self.runtime
        now = rt.now_ms()
        with tracing.span("scheduler.slot") as span:  # one scheduled run, one trace
            if span.is_recording():
                span.set_attribute("conclave.job_id", job.id)
                span.set_attribute("conclave.slot_open_ms", slot.open_ms)
                span.set_attribute("conclave.missed", slot.missed)
            async with asyncio.timeout(rt.settings.pipeline.run_deadline_s):
                run = await self.pipeline().run(
                    job.account_id, job.symbol, job.timeframe,
                    as_of_ms=slot.close_ms, now_iso=iso_ms(now),
                )  # fmt: skip
            rt.count(run)
            await rt.store.save_run(run.to_wire())
        if job.account_id is not None and self.on_account_run is not None:
            try:
                await self.on_account_run(run)
            except Exception as exc:  # the run stands; the account reports its own state
                log.warning("account_hook_failed", job=job.id, error=type(exc).__name__)
        status = run.decision.status
        ok = status in PROGRESS
        return RunResult(run.run_id, ok, "" if ok else f"{status}: {run.decision.reason}"[:300])


def account_hook(runtime: Runtime) -> AccountHook | None:
    """The paper accounts' after-run step over ``runtime`` (None without an account service):
    the same step the API takes after a run (settle the pending order at the next bar's
    open, record equity, place the new order)."""
    service = runtime.accounts
    if service is None:
        return None

    async def hook(run: PipelineRun) -> Any:
        return await process_for_account(service, runtime.gateway, run)

    return hook


def settings_jobs(settings: SchedulerSettings) -> list[Job]:
    """The jobs configured in settings."""
    return [Job(j.account, j.symbol, j.timeframe) for j in settings.jobs]


def claims_of(runtime: Runtime) -> tuple[SlotClaims, JobTable] | None:
    """Slot claims and the job table over the runtime's store (None for a store without SQL)."""
    engine = getattr(runtime.store, "engine", None)
    backend = getattr(runtime.store, "backend", None)
    if engine is None or backend not in ("sqlite", "postgresql"):
        return None
    return SlotClaims(engine, backend), JobTable(engine, backend)


def job_source(
    settings: SchedulerSettings, table: JobTable | None, started_ms: int, only: Job | None = None
) -> Callable[[], Awaitable[Sequence[WatchedJob]]]:
    """The jobs to run: ``only`` if given, else settings' (watched since ``started_ms``)
    followed by the API's (watched since they were added)."""

    async def jobs() -> Sequence[WatchedJob]:
        if only is not None:
            return [WatchedJob(only, started_ms)]
        out = [WatchedJob(job, started_ms) for job in settings_jobs(settings)]
        if table is not None:
            out += [WatchedJob(s.job, max(s.created_ms, started_ms)) for s in await table.list()]
        return out

    return jobs


def build_scheduler(
    settings: Settings,
    runtime: Runtime,
    *,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    only: Job | None = None,
    on_account_run: AccountHook | None = None,
) -> Scheduler:
    """A scheduler over ``runtime`` (its store, clock and pipelines) and ``settings``."""
    found = claims_of(runtime)
    if found is None:
        raise TypeError("the scheduler needs the SQL run store (RunStore)")
    claims, table = found
    cfg = settings.scheduler
    watchdog = Watchdog(claims, now_ms=runtime.now_ms, intervals=cfg.watchdog_intervals,
                        offset_ms=round(cfg.offset_s * 1000))  # fmt: skip
    return Scheduler(
        claims,
        PipelineExecutor(runtime, on_account_run=on_account_run or account_hook(runtime)),
        jobs=job_source(cfg, table, watchdog.started_ms, only),
        now_ms=runtime.now_ms,
        sleep=sleep,
        offset_s=cfg.offset_s,
        poll_s=cfg.poll_s,
        watchdog=watchdog,
        stale_after_s=settings.pipeline.run_deadline_s + 25.0,  # a live run ends by then
    )
