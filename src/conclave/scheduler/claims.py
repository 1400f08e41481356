"""Exactly-once slots across processes: a claim row per (job, slot), unique in the database.

`SlotClaims.claim` inserts ``(job_id, slot_ms)`` with ``ON CONFLICT DO NOTHING``: of any
number of scheduler processes sharing the database, exactly one insert succeeds and that
process runs the slot (H1); every loser bumps ``attempts`` and skips. A claimed slot ends
``ok`` (with its run id) or ``failed`` (with the reason); it is never run a second time.

A process that dies mid-run (SIGKILL, power loss) leaves its slot ``pending``. A live run
ends by its deadline, so a slot pending for longer than the staleness limit has no owner:
`SlotClaims.recover` closes it as ``abandoned`` with the reason in ``error`` (G4), never
re-running it, and in the same transaction closes the idempotency claims of API requests
that died the same way (`conclave.store.idempotency.abandon_stale_keys`). The scheduler
calls it on every pass; the watchdog shows each job's newest abandoned slot.

The same store keeps the jobs added through the API (`JobTable`). On SQLite every write
starts with ``BEGIN IMMEDIATE`` (see `conclave.store.engine`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import CursorResult, Insert, Table, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from conclave.scheduler.jobs import Job, Slot
from conclave.store.engine import WRITE, Backend, as_utc, utcnow
from conclave.store.idempotency import abandon_stale_keys
from conclave.store.models import scheduled_slots, scheduler_jobs

SlotStatus = Literal["pending", "ok", "failed", "abandoned"]
_s = scheduled_slots.c
_j = scheduler_jobs.c
#: Longest failure reason kept on a slot row.
MAX_ERROR = 500
#: Why a stale pending slot was closed (stored in its ``error``).
ABANDONED_REASON = (
    "abandoned: the scheduler running this slot stopped before the run finished (no result"
    " within the staleness limit); the slot is not run again"
)


@dataclass(frozen=True, slots=True)
class SlotRecord:
    """One claimed slot as stored."""

    job_id: str
    slot_ms: int
    status: SlotStatus
    missed: int
    attempts: int
    run_id: str | None
    error: str | None


@dataclass(frozen=True, slots=True)
class Recovered:
    """What one `SlotClaims.recover` closed: ``(job_id, slot_ms)`` slots and idempotency keys."""

    slots: list[tuple[str, int]]
    keys: list[str]


def _insert(backend: Backend, table: Table, values: dict[str, Any]) -> Insert:
    if backend == "postgresql":
        return postgresql.insert(table).values(**values).on_conflict_do_nothing()
    return sqlite.insert(table).values(**values).on_conflict_do_nothing()


async def _rowcount(conn: AsyncConnection, statement: Any) -> int:
    result: CursorResult[Any] = await conn.execute(statement)
    return result.rowcount


class _Tables:
    def __init__(self, engine: AsyncEngine, backend: Backend) -> None:
        self.engine = engine
        self.backend: Backend = backend

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            await conn.execution_options(**{WRITE: True})
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn, conn.begin():
            yield conn


class SlotClaims(_Tables):
    """Claims of (job, slot) in the run store's database."""

    async def claim(self, job_id: str, slot: Slot) -> bool:
        """Claim ``slot`` of ``job_id`` for this process; False when another has it."""
        row = {"job_id": job_id, "slot_ms": slot.open_ms, "status": "pending",
               "missed": slot.missed, "attempts": 1, "claimed_at": utcnow()}  # fmt: skip
        async with self._write() as conn:
            if await _rowcount(conn, _insert(self.backend, scheduled_slots, row)) == 1:
                return True
            await conn.execute(
                scheduled_slots.update()
                .where(_s.job_id == job_id, _s.slot_ms == slot.open_ms)
                .values(attempts=_s.attempts + 1)
            )
        return False

    async def finish(
        self, job_id: str, slot_ms: int, status: SlotStatus, *, run_id: str | None = None,
        error: str | None = None,
    ) -> None:  # fmt: skip
        """Record how the claimed slot ended: ``ok`` with its run, or ``failed`` with why."""
        reason = error[:MAX_ERROR] if error else None
        values = {"status": status, "run_id": run_id, "error": reason, "finished_at": utcnow()}
        where = (_s.job_id == job_id, _s.slot_ms == slot_ms)
        async with self._write() as conn:
            await conn.execute(scheduled_slots.update().where(*where).values(**values))

    async def recover(self, *, stale_after_s: float) -> Recovered:
        """Close every slot and idempotency claim pending for ``stale_after_s`` or more
        (database clock) as ``abandoned``, with the reason; see the module docstring.

        Safe to call from every scheduler at once: a row is closed only while still
        ``pending``, so each is closed once. Finishing a slot later (its owner was alive
        after all) still records the real outcome.
        """
        query = select(_s.job_id, _s.slot_ms, _s.claimed_at, utcnow().label("now")).where(
            _s.status == "pending"
        )
        closed: list[tuple[str, int]] = []
        async with self._write() as conn:
            for row in (await conn.execute(query)).all():
                age_s = (as_utc(row.now) - as_utc(row.claimed_at)).total_seconds()
                if age_s < stale_after_s:
                    continue
                close = (
                    scheduled_slots.update()
                    .where(_s.job_id == row.job_id, _s.slot_ms == row.slot_ms,
                           _s.status == "pending")
                    .values(status="abandoned", error=ABANDONED_REASON, finished_at=utcnow())
                )  # fmt: skip
                if await _rowcount(conn, close) == 1:
                    closed.append((str(row.job_id), int(row.slot_ms)))
            keys = await abandon_stale_keys(conn, stale_after_s=stale_after_s)
        return Recovered(closed, keys)

    async def last_abandoned(self, job_ids: Iterable[str]) -> dict[str, SlotRecord]:
        """Each job's newest abandoned slot (jobs without one are left out)."""
        ids = list(job_ids)
        if not ids:
            return {}
        newest = (
            select(_s.job_id, func.max(_s.slot_ms).label("slot_ms"))
            .where(_s.job_id.in_(ids), _s.status == "abandoned")
            .group_by(_s.job_id)
            .subquery()
        )
        query = select(_s.job_id, _s.slot_ms, _s.status, _s.missed, _s.attempts, _s.run_id,
                       _s.error).join(newest, (_s.job_id == newest.c.job_id)
                                      & (_s.slot_ms == newest.c.slot_ms))  # fmt: skip
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        return {str(row[0]): SlotRecord(*row) for row in rows}

    async def last_slot(self, job_id: str) -> int | None:
        """Open time of the newest slot ever claimed for ``job_id`` (any status)."""
        async with self._read() as conn:
            result = await conn.execute(select(func.max(_s.slot_ms)).where(_s.job_id == job_id))
            value = result.scalar_one_or_none()
        return None if value is None else int(value)

    async def last_ok(self, job_ids: Iterable[str]) -> dict[str, int]:
        """Open time of each job's newest successful slot (jobs without one are left out)."""
        ids = list(job_ids)
        if not ids:
            return {}
        query = (
            select(_s.job_id, func.max(_s.slot_ms))
            .where(_s.job_id.in_(ids), _s.status == "ok")
            .group_by(_s.job_id)
        )
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        return {str(job_id): int(slot_ms) for job_id, slot_ms in rows}

    async def records(self, job_id: str) -> list[SlotRecord]:
        """Every claimed slot of ``job_id``, oldest first."""
        query = select(_s.job_id, _s.slot_ms, _s.status, _s.missed, _s.attempts, _s.run_id,
                       _s.error).where(_s.job_id == job_id).order_by(_s.slot_ms)  # fmt: skip
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        return [SlotRecord(*row) for row in rows]


@dataclass(frozen=True, slots=True)
class StoredJob:
    """A job added through the API and when (ms UTC, the caller's clock)."""

    job: Job
    created_ms: int


class JobTable(_Tables):
    """The jobs added through the API."""

    async def add(self, job: Job, *, created_ms: int) -> bool:
        """Store ``job``; False when a job with its id exists already."""
        row = {"job_id": job.id, "account_id": job.account_id, "symbol": job.symbol,
               "timeframe": job.timeframe, "created_ms": created_ms}  # fmt: skip
        async with self._write() as conn:
            return await _rowcount(conn, _insert(self.backend, scheduler_jobs, row)) == 1

    async def remove(self, job_id: str) -> bool:
        """Delete the job ``job_id``; False when there was none (its slots stay recorded)."""
        async with self._write() as conn:
            return await _rowcount(conn, scheduler_jobs.delete().where(_j.job_id == job_id)) == 1

    async def list(self) -> list[StoredJob]:
        """Every stored job, oldest first."""
        query = select(_j.account_id, _j.symbol, _j.timeframe, _j.created_ms).order_by(
            _j.created_ms, _j.job_id
        )
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        return [StoredJob(Job(a, s, t), int(c)) for a, s, t, c in rows]
