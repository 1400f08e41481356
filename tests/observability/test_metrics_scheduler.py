"""The scheduler's and the database's metrics, and the scheduler process's own ``/metrics``.

The scheduler runs on a fake clock over a real SQLite claims table; the database error is a
real refused connection; the scheduler process is started for real on a free port and
stopped by its PID.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from conclave.scheduler import Job, Scheduler, SlotClaims
from conclave.store import RunStore, StoreUnavailableError
from tests.scheduler.conftest import DAY0, FakeClock, Recorder, claims_of, jobs_of
from tests.scheduler.conftest import sqlite_store as sqlite_store  # the fixture
from tests.services.helpers import free_port
from tests.services.test_api import closed_port

JOB = Job("paper-1", "ETHUSDT", "1h")


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class StaleClaims(SlotClaims):
    """Claims whose read of the newest slot comes before another process's claim commits:
    the race the claims table settles (H1)."""

    async def last_slot(self, job_id: str) -> int | None:
        return None


async def test_slots_by_outcome_missed_and_lag(sqlite_store: RunStore) -> None:
    """ok, a catch-up with 2 missed, a failed run, a slot another process holds; the lag."""
    slots = "conclave_scheduler_slots_total"
    lag = "conclave_scheduler_slot_lag_seconds"
    outcomes = ("ok", "missed", "claimed_elsewhere", "failed")
    before = {o: sample(slots, outcome=o) for o in outcomes}
    lag_n, lag_sum = sample(f"{lag}_count"), sample(f"{lag}_sum")

    clock = FakeClock(DAY0 + 1500)  # 1.5 s after the close of the 23:00 bar
    claims = claims_of(sqlite_store)
    recorder = Recorder(clock)
    scheduler = Scheduler(claims, recorder, jobs=jobs_of(JOB), now_ms=clock)
    assert [o.status for o in await scheduler.run_due_once()] == ["ok"]
    clock.advance(3 * 3600)  # down for three slots: one catch-up run, missed 2
    assert [o.status for o in await scheduler.run_due_once()] == ["ok"]
    clock.advance(3600)
    recorder.ok = False
    assert [o.status for o in await scheduler.run_due_once()] == ["failed"]
    late = Scheduler(StaleClaims(sqlite_store.engine, sqlite_store.backend), Recorder(clock),
                     jobs=jobs_of(JOB), now_ms=clock)  # fmt: skip
    assert [o.status for o in await late.run_due_once()] == ["claimed_elsewhere"]

    got = {o: sample(slots, outcome=o) - before[o] for o in outcomes}
    assert got == {"ok": 2, "missed": 2, "claimed_elsewhere": 1, "failed": 1}
    assert sample(f"{lag}_count") - lag_n == 3  # only slots this process ran
    # each run started 1.5 s after its close (the fake clock does not move during a run)
    assert sample(f"{lag}_sum") - lag_sum == pytest.approx(3 * 1.5)


async def test_a_refused_database_connection_counts_as_a_connection_error(
    tmp_path: Path,
) -> None:
    before = sample("conclave_db_errors_total", kind="connection")
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/test"
    with pytest.raises(StoreUnavailableError, match="ConnectionRefused"):
        await RunStore.open(url, data_dir=tmp_path)
    assert sample("conclave_db_errors_total", kind="connection") - before >= 1


@pytest.fixture
def scheduler_process(tmp_path: Path) -> Iterator[str]:
    """``conclave scheduler`` with one 1m job on the sim market, its metrics on a free port."""
    port = free_port()
    env = os.environ | {
        "CONCLAVE_DATA_DIR": str(tmp_path),
        "CONCLAVE_LOGS_DIR": str(tmp_path / "logs"),
        "CONCLAVE_MARKET__SOURCE": "sim",
        "CONCLAVE_SCHEDULER__METRICS_PORT": str(port),
        "CONCLAVE_SCHEDULER__JOBS": json.dumps([{"symbol": "BTCUSDT", "timeframe": "1m"}]),
        "CONCLAVE_SCHEDULER__OFFSET_S": "0",
        "USE_HTTP_AGENTS": "false",
    }
    for name in ("DATABASE_URL", "REDIS_URL", "CONCLAVE_DATABASE_URL", "CONCLAVE_REDIS_URL"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "conclave", "scheduler"]
    quiet = subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=quiet, stderr=quiet)
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_the_scheduler_process_serves_its_metrics(scheduler_process: str) -> None:
    """Its first slot runs at start: counted ok, its lag observed, the run counted."""
    deadline = time.monotonic() + 60
    found: dict[str, float] = {}
    with httpx2.Client(timeout=1.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            try:
                text = client.get(scheduler_process).text
            except httpx2.HTTPError:
                time.sleep(0.2)
                continue
            found = {
                s.name + json.dumps(s.labels, sort_keys=True): s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
            }
            if found.get('conclave_scheduler_slots_total{"outcome": "ok"}', 0) >= 1:
                break
            time.sleep(0.2)
    assert found.get('conclave_scheduler_slots_total{"outcome": "ok"}', 0) >= 1, sorted(found)
    assert found["conclave_scheduler_slot_lag_seconds_count{}"] >= 1
    assert sum(v for k, v in found.items() if k.startswith("conclave_runs_total{")) >= 1
    assert found["process_resident_memory_bytes{}"] > 0
