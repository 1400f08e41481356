"""G4 for the scheduler: a real scheduler process SIGKILLed mid-slot, then restarted.

The scheduler here is the real `Scheduler` over the real store (SQLite file or PostgreSQL
schema) in its own process; only its executor is a stand-in that announces the slot and
then hangs, so the kill lands mid-run every time. The restarted process serves with a
short staleness limit (scaled down from the run deadline plus 25 s of production, so the
test takes seconds) and must close the slot as ``abandoned`` without running it again.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text

from conclave.scheduler import Job, SlotClaims, SlotRecord
from conclave.scheduler.claims import ABANDONED_REASON
from conclave.scheduler.watchdog import Watchdog
from conclave.store.engine import as_utc
from tests.scheduler.conftest import DAY0
from tests.security.procs import started
from tests.store.conftest import Target

ROOT = Path(__file__).resolve().parents[2]
JOB = Job("paper-1", "BTCUSDT", "1m")
#: The restarted scheduler's staleness limit and pass interval (seconds).
STALE_S, POLL_S = 2.0, 0.25
#: Slack on "closed within the limit plus one pass": process start, a loaded machine.
CLOSE_TOLERANCE_S = 3.0

_SCHEDULER = """
import asyncio, json, signal, sys, uuid
from pathlib import Path
from conclave.scheduler import Job, RunResult, Scheduler, SlotClaims
from conclave.store import RunStore

url, data_dir, schema, now_ms, mode, stale_s, poll_s = sys.argv[1:]

async def main():
    store = await RunStore.open(url or None, data_dir=Path(data_dir), schema=schema or None)
    job = Job("paper-1", "BTCUSDT", "1m")

    async def execute(job, slot):
        print(json.dumps({"running": slot.open_ms}), flush=True)
        if mode == "hang":
            await asyncio.Event().wait()  # SIGKILL lands here
        return RunResult(uuid.uuid4().hex, True)

    async def jobs():
        return [job]

    sched = Scheduler(SlotClaims(store.engine, store.backend), execute, jobs=jobs,
                      now_ms=lambda: int(now_ms), stale_after_s=float(stale_s),
                      poll_s=float(poll_s))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(json.dumps({"serving": True}), flush=True)
    await sched.serve_forever(stop)
    await store.aclose()

asyncio.run(main())
"""


def _cmd(target: Target, now_ms: int, mode: str) -> list[str]:
    return [sys.executable, "-c", _SCHEDULER, target.database_url or "", str(target.data_dir),
            target.schema or "", str(now_ms), mode, str(STALE_S), str(POLL_S)]  # fmt: skip


def _wait_for_line(
    log: Path, key: str, proc: subprocess.Popen[bytes], timeout_s: float
) -> dict[str, Any]:
    """The first JSON line of ``log`` holding ``key`` (the process must print it in time)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("{") and key in (found := json.loads(line)):
                return dict(found)
        assert proc.poll() is None, log.read_text()[-2000:]
        time.sleep(0.05)
    raise AssertionError(f"no {key!r} line within {timeout_s} s: {log.read_text()[-2000:]}")


def _seconds(start: datetime | str, end: datetime | str) -> float:
    """``end - start`` in seconds (SQLite hands the timestamps back as text)."""

    def parse(value: datetime | str) -> datetime:
        return as_utc(datetime.fromisoformat(value) if isinstance(value, str) else value)

    return (parse(end) - parse(start)).total_seconds()


def _runs(log: Path) -> list[int]:
    return [json.loads(x)["running"] for x in log.read_text().splitlines() if '"running"' in x]


async def _records(
    target: Target,
) -> tuple[list[SlotRecord], dict[str, Any], dict[int, float]]:
    """The job's slot records, the watchdog's report and each slot's claimed-to-finished s."""
    store = await target.open()
    try:
        claims = SlotClaims(store.engine, store.backend)
        records = await claims.records(JOB.id)
        report = await Watchdog(claims, now_ms=lambda: DAY0 + 1000).health([JOB])
        ages = {}
        async with store.engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT slot_ms, claimed_at, finished_at FROM scheduled_slots"
                     " WHERE job_id = :j"), {"j": JOB.id},
            )  # fmt: skip
            for slot_ms, claimed, finished in rows:
                if finished is not None:
                    ages[int(slot_ms)] = _seconds(claimed, finished)
        return records, report, ages
    finally:
        await store.aclose()


def test_g4_scheduler_sigkill_mid_slot_then_restart_abandons_the_slot_never_reruns(
    target: Target, tmp_path: Path
) -> None:
    """G4 (pass figure: 100 % of runs reach a final state <= deadline + 60 s, never
    silently re-executed): a scheduler process SIGKILLed while its slot runs leaves the
    slot ``pending``; the restarted scheduler closes it as ``abandoned`` with the reason
    within its staleness limit plus one pass (+3 s tolerance; production: the run deadline
    plus 25 s, passes every 30 s, so deadline + 56 s), runs it 0 more times, the watchdog
    shows it, and the next slot runs normally."""
    asyncio.run(_migrate(target))
    now = DAY0 + 1000  # slot DAY0 - 1 min is due
    slot_ms = DAY0 - 60_000
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    with started(_cmd(target, now, "hang"), os.environ.copy(), ROOT, first_log) as first:
        assert _wait_for_line(first_log, "running", first, 60)["running"] == slot_ms
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=10) == -signal.SIGKILL
    [record], _, _ = asyncio.run(_records(target))
    assert (record.slot_ms, record.status) == (slot_ms, "pending")  # what the crash left

    with started(_cmd(target, now, "ok"), os.environ.copy(), ROOT, second_log) as second:
        _wait_for_line(second_log, "serving", second, 60)
        deadline = time.monotonic() + STALE_S + POLL_S + CLOSE_TOLERANCE_S + 5
        while time.monotonic() < deadline:
            [record], _, _ = asyncio.run(_records(target))
            if record.status != "pending":
                break
            time.sleep(0.1)
    records, report, ages = asyncio.run(_records(target))
    assert [(r.slot_ms, r.status, r.error) for r in records] == [
        (slot_ms, "abandoned", ABANDONED_REASON)
    ]
    assert records[0].run_id is None
    assert ages[slot_ms] <= STALE_S + POLL_S + CLOSE_TOLERANCE_S
    assert _runs(second_log) == []  # never re-executed
    [entry] = report["jobs"]
    assert entry["lastAbandoned"]["reason"] == ABANDONED_REASON
    assert entry["lastAbandoned"]["slotOpenAt"] == "2023-11-13T23:59:00.000Z"

    third_log = tmp_path / "third.log"  # the next slot runs as usual
    with started(_cmd(target, now + 60_000, "ok"), os.environ.copy(), ROOT, third_log) as third:
        assert _wait_for_line(third_log, "running", third, 60)["running"] == slot_ms + 60_000
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            records, _, _ = asyncio.run(_records(target))
            if len(records) == 2 and records[1].status == "ok":
                break
            time.sleep(0.1)
    assert [(r.slot_ms, r.status) for r in records] == [
        (slot_ms, "abandoned"),
        (slot_ms + 60_000, "ok"),
    ]


async def _migrate(target: Target) -> None:
    await (await target.open()).aclose()
