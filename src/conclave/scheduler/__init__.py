"""The scheduler: each job once per closed bar, exactly once across processes (H1-H4).

scheduler = build_scheduler(settings, runtime)
await scheduler.run_due_once()      # conclave scheduler --once
await scheduler.serve_forever()     # conclave scheduler
"""

from __future__ import annotations

from conclave.scheduler.claims import JobTable, SlotClaims, SlotRecord
from conclave.scheduler.jobs import Job, Slot, due_slot, missed_between, next_fire_ms
from conclave.scheduler.runner import Outcome, RunExecutor, RunResult, Scheduler
from conclave.scheduler.watchdog import Watchdog, WatchedJob

__all__ = [
    "Job",
    "JobTable",
    "Outcome",
    "RunExecutor",
    "RunResult",
    "Scheduler",
    "Slot",
    "SlotClaims",
    "SlotRecord",
    "Watchdog",
    "WatchedJob",
    "due_slot",
    "missed_between",
    "next_fire_ms",
]
