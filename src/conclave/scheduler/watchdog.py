"""The progress watchdog (H2): a job without a successful run for two intervals is stalled.

Liveness of the process is not progress: an exchange that hangs leaves the scheduler up and
every run failing. The watchdog therefore reads the claim records, not a heartbeat. A job
is ``stalled`` when its newest successful slot closed more than ``intervals`` bars (plus
the offset) before now, or, when it never succeeded, when that long has passed since it
was added (or since the watchdog started watching, for jobs from settings). Any stalled job
makes the report ``degraded`` and names it. Times come from the injected clock.

Each job also shows its newest ``abandoned`` slot (G4: a scheduler died mid-run; the slot
is closed, not re-run) so the user sees what a crash cost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from conclave.scheduler.claims import SlotClaims, SlotRecord
from conclave.scheduler.jobs import Job
from conclave.timeframes import iso_ms


@dataclass(frozen=True, slots=True)
class WatchedJob:
    """A job and since when (ms UTC) it should have been making progress."""

    job: Job
    since_ms: int


class Watchdog:
    """Reports each job's last success and whether it is overdue; see the module docstring.

    ``started_ms`` (default: now) is when watching began, for jobs given without a start.
    """

    def __init__(
        self,
        claims: SlotClaims,
        *,
        now_ms: Callable[[], int],
        intervals: float = 2.0,
        offset_ms: int = 1000,
        started_ms: int | None = None,
    ) -> None:
        self.claims = claims
        self.now_ms = now_ms
        self.intervals = intervals
        self.offset_ms = offset_ms
        self.started_ms = now_ms() if started_ms is None else started_ms

    async def health(self, jobs: Sequence[Job | WatchedJob]) -> dict[str, Any]:
        """``{"status": "ok"|"degraded", "stalled": [ids], "jobs": [...]}`` for ``jobs``.

        Each job entry has ``id``, ``status`` (``ok`` or ``stalled``), ``lastSuccessAt``
        (the close of its newest successful slot, ISO UTC, or None), ``overdueSince`` and
        ``lastAbandoned`` (``{"slotOpenAt", "reason"}`` of its newest abandoned slot, or None).
        Raises whatever the store raises; the caller reports that as its own dependency.
        """
        watched = [w if isinstance(w, WatchedJob) else WatchedJob(w, self.started_ms) for w in jobs]
        last_ok = await self.claims.last_ok(w.job.id for w in watched)
        abandoned = await self.claims.last_abandoned(w.job.id for w in watched)
        now = self.now_ms()
        entries: list[dict[str, Any]] = []
        stalled: list[str] = []
        for w in watched:
            tf = w.job.tf
            ok_open = last_ok.get(w.job.id)
            reference = tf.close_time(ok_open) if ok_open is not None else w.since_ms
            deadline = reference + round(self.intervals * tf.ms) + self.offset_ms
            late = now > deadline
            if late:
                stalled.append(w.job.id)
            entries.append(
                {
                    "id": w.job.id,
                    "status": "stalled" if late else "ok",
                    "lastSuccessAt": None if ok_open is None else iso_ms(tf.close_time(ok_open)),
                    "overdueSince": iso_ms(deadline) if late else None,
                    "lastAbandoned": _abandoned(abandoned.get(w.job.id)),
                }
            )
        return {"status": "degraded" if stalled else "ok", "stalled": stalled, "jobs": entries}


def _abandoned(record: SlotRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {"slotOpenAt": iso_ms(record.slot_ms), "reason": record.error}
