"""Fixtures of the scheduler tests: a controllable clock, a recording executor, databases.

The clock never moves by itself: tests advance it (or `FakeSleep` does, after the
scheduler's in-flight passes finish), so a simulated day runs in seconds. Claims live in a
real database: an SQLite file in tmp_path, or a fresh schema of the real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conclave.scheduler import Job, RunResult, Scheduler, Slot, SlotClaims
from conclave.store import RunStore
from tests.store.conftest import Target, pg_url, target  # noqa: F401 - fixtures

#: 2023-11-14 00:00 UTC: a day boundary, so every timeframe up to 1d closes here.
DAY0 = 1_699_920_000_000


@dataclass
class FakeClock:
    """Milliseconds since the epoch that move only when told."""

    now: int = DAY0

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += round(seconds * 1000)


@dataclass
class FakeSleep:
    """A sleep that lets the scheduler's passes finish, then moves the clock; stops at ``end``."""

    clock: FakeClock
    end_ms: int
    stop: asyncio.Event
    scheduler: Scheduler | None = None
    sleeps: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        if self.scheduler is not None:
            await self.scheduler.wait_idle()
        self.sleeps.append(seconds)
        self.clock.advance(max(seconds, 0.001))
        if self.clock.now >= self.end_ms:
            self.stop.set()
        await asyncio.sleep(0)


@dataclass
class Recorder:
    """An executor that records each (job, slot, now) it is asked to run; ``ok`` decides.

    With ``gate``, runs (of job ``gated`` only, when set) wait until the gate opens.
    """

    clock: FakeClock
    ok: bool = True
    delay_s: float = 0.0
    gate: asyncio.Event | None = None
    gated: str | None = None
    calls: list[tuple[str, Slot, int]] = field(default_factory=list)
    called: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, job: Job, slot: Slot) -> RunResult:
        self.calls.append((job.id, slot, self.clock.now))
        self.called.set()
        if self.gate is not None and self.gated in (None, job.id):
            await self.gate.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if not self.ok:
            raise TimeoutError("exchange hangs")
        return RunResult(uuid.uuid4().hex, True)


def jobs_of(*jobs: Job):  # type: ignore[no-untyped-def]
    """A job source answering ``jobs``."""

    async def source() -> list[Job]:
        return list(jobs)

    return source


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[RunStore]:
    """A run store on an SQLite file in tmp_path."""
    store = await RunStore.open(None, data_dir=tmp_path)
    yield store
    await store.aclose()


def claims_of(store: RunStore) -> SlotClaims:
    """Slot claims over ``store``'s database."""
    return SlotClaims(store.engine, store.backend)
