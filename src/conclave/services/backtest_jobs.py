"""Backtests as background jobs of the orchestrator (issue 14: started from the dashboard).

A `BacktestJobs` keeps the jobs of one process in memory: a job is queued, run by the one
worker task (one backtest at a time: the vectorized engine is CPU bound, and a second one
would only slow the first and the live runs), and kept with its report until
`KEEP_JOBS` newer ones push it out. Waiting jobs are at most `MAX_WAITING`: a newer one
displaces the oldest waiting one, which ends ``cancelled`` with the reason (never a silent
drop). Jobs do not survive a restart: the list says so by being empty, not by pretending.

The backtest itself is `conclave.backtest`'s, exactly as ``conclave backtest`` runs it
(`conclave.cli.backtest`): the history is loaded from the source, the engine runs in a
worker thread (the event loop keeps serving), its progress callback updates the job, and
the report is the CLI's JSON summary plus the per-bar series the dashboard draws.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import structlog

from conclave.settings import Settings

log = structlog.get_logger(__name__)

JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]
#: Finished jobs kept in memory (with their reports), newest first.
KEEP_JOBS = 30
#: Jobs waiting at once; a newer one displaces the oldest waiting.
MAX_WAITING = 4
#: Most points of a per-bar series sent to the browser (evenly thinned beyond it).
MAX_POINTS = 2000


@dataclass
class Job:
    """One backtest: what was asked, where it is, and what it produced."""

    id: str
    request: dict[str, Any]
    created_ms: int
    status: JobStatus = "queued"
    phase: str = "queued"
    done: int = 0
    total: int = 0
    finished_ms: int | None = None
    error: str | None = None
    summary: dict[str, Any] | None = None
    series: dict[str, Any] | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def progress(self) -> float:
        """Fraction done in [0, 1]: loading counts 10 %, the agents 60 %, the account 30 %."""
        if self.status == "done":
            return 1.0
        part = self.done / self.total if self.total > 0 else 0.0
        base, width = {"agents": (0.1, 0.6), "account": (0.7, 0.3)}.get(self.phase, (0.0, 0.1))
        return round(min(1.0, base + width * part), 4)

    def brief(self) -> dict[str, Any]:
        """The job without its report: for the list."""
        perf = (self.summary or {}).get("performance") or {}
        return {
            "id": self.id,
            "status": self.status,
            "phase": self.phase,
            "progress": self.progress(),
            "request": self.request,
            "createdAt": self.created_ms,
            "finishedAt": self.finished_ms,
            "error": self.error,
            "totalReturn": perf.get("totalReturn"),
            "buyAndHoldReturn": (perf.get("buyAndHold") or {}).get("totalReturn"),
            "maxDrawdown": perf.get("maxDrawdown"),
            "trades": perf.get("trades"),
        }

    def full(self) -> dict[str, Any]:
        """The job with its report (summary and series) once done."""
        return self.brief() | {"summary": self.summary, "series": self.series}


def _thin(n: int) -> np.ndarray[Any, np.dtype[np.intp]]:
    """Indices of at most `MAX_POINTS` bars, evenly spread, always the first and last."""
    if n <= MAX_POINTS:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, MAX_POINTS).round().astype(np.intp))


def series_of(result: Any) -> dict[str, Any]:
    """Per-bar series to draw: close, equity, buy-and-hold equity, drawdown, fills."""
    n = len(result)
    if n == 0:
        return {
            "time": [],
            "close": [],
            "equity": [],
            "buyAndHold": [],
            "drawdown": [],
            "fills": [],
        }
    idx = _thin(n)
    equity = np.asarray(result.equity, dtype=float)
    close = np.asarray(result.close, dtype=float)
    hold = result.starting_balance * close / close[0] if close[0] > 0 else np.zeros(n)
    peak = np.maximum.accumulate(equity)
    drawdown = np.divide(equity, peak, out=np.ones(n), where=peak > 0) - 1.0
    return {
        "time": np.asarray(result.open_time)[idx].tolist(),
        "close": close[idx].tolist(),
        "equity": equity[idx].tolist(),
        "buyAndHold": np.asarray(hold)[idx].tolist(),
        "drawdown": drawdown[idx].tolist(),
        "fills": [
            {"time": f.time_ms, "side": f.side, "price": f.price, "qty": f.qty}
            for f in result.fills
        ],
    }


class BacktestJobs:
    """The jobs of one orchestrator process (see the module docstring)."""

    def __init__(self, settings: Settings, now_ms: Callable[[], int]) -> None:
        self.settings = settings
        self.now_ms = now_ms
        self._jobs: OrderedDict[str, Job] = OrderedDict()  # oldest first
        self._queue: asyncio.Queue[Job] | None = None
        self._worker: asyncio.Task[None] | None = None

    def submit(self, request: dict[str, Any]) -> Job:
        """Queue a backtest of ``request`` (already validated); the job, status ``queued``."""
        job = Job(secrets.token_hex(16), request, self.now_ms())
        waiting = [j for j in self._jobs.values() if j.status == "queued"]
        for old in waiting[: max(0, len(waiting) - MAX_WAITING + 1)]:
            self._finish(old, "cancelled", f"displaced: at most {MAX_WAITING} jobs wait")
        self._jobs[job.id] = job
        self._trim()
        if self._queue is None:
            self._queue = asyncio.Queue()
        self._queue.put_nowait(job)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(self._queue))
        return job

    def get(self, job_id: str) -> Job | None:
        """The job ``job_id``, if still kept."""
        return self._jobs.get(job_id)

    def items(self) -> list[Job]:
        """Every kept job, newest first."""
        return list(reversed(self._jobs.values()))

    async def aclose(self) -> None:
        """Stop the worker; a running backtest's thread finishes on its own."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker

    def _trim(self) -> None:
        finished = [j for j in self._jobs.values() if j.status in ("done", "failed", "cancelled")]
        for old in finished[: max(0, len(self._jobs) - KEEP_JOBS)]:
            del self._jobs[old.id]

    def _finish(self, job: Job, status: JobStatus, error: str | None = None) -> None:
        job.status, job.error, job.finished_ms = status, error, self.now_ms()
        job.phase = status

    async def _work(self, queue: asyncio.Queue[Job]) -> None:
        while True:
            job = await queue.get()
            if job.status != "queued":
                continue  # displaced while waiting
            job.status, job.phase = "running", "loading"
            try:
                await self._run(job)
            except asyncio.CancelledError:
                self._finish(job, "cancelled", "the orchestrator stopped")
                raise
            except Exception as exc:  # the job fails, with the reason; the worker goes on
                log.info("backtest_failed", job=job.id, error=type(exc).__name__)
                self._finish(job, "failed", str(exc) or type(exc).__name__)
            self._trim()

    async def _run(self, job: Job) -> None:
        from conclave.agents import REGISTRY
        from conclave.backtest.engine import run_backtest
        from conclave.backtest.history import load_history
        from conclave.backtest.settings import BacktestSettings
        from conclave.backtest.summary import summary as make_summary
        from conclave.market.sources import open_source
        from conclave.pipeline.decision import ANALYSIS_AGENTS, DecisionConfig
        from conclave.timeframes import Timeframe

        r = job.request
        names = tuple(a for a in REGISTRY.names if a in set(r["agents"]) | {REGISTRY.risk})
        analysis = sum(1 for a in names if a in ANALYSIS_AGENTS)
        config = DecisionConfig(weights=dict(r["weights"]), quorum=min(6, analysis))
        settings = BacktestSettings(
            starting_balance=r["balance"],
            fee_rate=r["fee"],
            slippage=r["slippage"],
            decision=config,
        )
        tf = Timeframe.parse(r["timeframe"])
        now = self.now_ms()
        end = min(now, r["end"]) if r.get("end") is not None else now
        start = tf.floor(end) - r["bars"] * tf.ms
        agents = {n: REGISTRY[n]() for n in names}
        source = open_source(r["source"], self.settings, now_ms=self.now_ms)
        try:
            history = await load_history(
                source, r["symbol"], tf.name, agents, start_ms=start, end_ms=end, now_ms=now
            )
        finally:
            await source.aclose()

        def progress(phase: str, done: int, total: int) -> None:
            job.phase, job.done, job.total = phase, done, total  # read by the event loop

        result = await asyncio.to_thread(run_backtest, history, agents, settings, progress=progress)
        validation = None if history.validation is None else history.validation.to_json()
        job.summary = make_summary(result, validation=validation)
        job.series = series_of(result)
        self._finish(job, "done")
        log.info("backtest_done", job=job.id, bars=len(result))


__all__ = ["BacktestJobs", "Job", "series_of"]
