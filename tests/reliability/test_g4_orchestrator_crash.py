"""G4 for the orchestrator: ``conclave serve`` SIGKILLed mid-run, restarted, then swept.

Real processes on loopback: the orchestrator (``conclave serve``, HTTP agents on the sim
source) whose nine agents all point at a `Blackhole` that records each request and never
answers, so a run is reliably in flight when the kill lands; the restarted orchestrator;
and ``conclave scheduler`` (no jobs), whose passes close stale claims. The database is
the real SQLite file or the real PostgreSQL of ``DATABASE_URL``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest
from sqlalchemy import text

from conclave.agents import REGISTRY
from conclave.store import RunStore
from conclave.store.engine import as_utc
from conclave.store.idempotency import ABANDONED_REASON
from tests.reliability.conftest import Blackhole
from tests.security.procs import clean_env, conclave, free_port, started, wait_live

RUN = {"symbol": "BTCUSDT", "timeframe": "1h"}
#: The orchestrator's run deadline: long, so the kill always lands mid-run.
RUN_DEADLINE_S = 30.0
#: The sweeping scheduler's run deadline; its staleness limit is this plus 25 s.
SWEEP_DEADLINE_S = 0.1
SWEEP_POLL_S = 0.5
#: Slack on "closed within the limit plus one pass": process start-up, a loaded machine.
CLOSE_TOLERANCE_S = 5.0


def _env(tmp_path: Path, hole: Blackhole, database_url: str, **extra: str) -> dict[str, str]:
    urls = {name: f"http://127.0.0.1:{hole.port}" for name in REGISTRY}
    return clean_env(
        tmp_path,
        USE_HTTP_AGENTS="true",
        CONCLAVE_AGENTS__URLS=json.dumps(urls),
        CONCLAVE_AGENTS__TIMEOUT_S=str(RUN_DEADLINE_S),
        CONCLAVE_PIPELINE__RUN_DEADLINE_S=str(RUN_DEADLINE_S),
        CONCLAVE_MARKET__SOURCE="sim",
        CONCLAVE_LOG_LEVEL="WARNING",
        DATABASE_URL=database_url,
        **extra,
    )


async def _key_row(url: str, data_dir: Path, key: str) -> Any:
    store = await RunStore.open(url or None, data_dir=data_dir)
    try:
        async with store.engine.connect() as conn:
            found = await conn.execute(
                text("SELECT state, reason, run_id, claimed_at, completed_at"
                     " FROM idempotency_keys WHERE idem_key = :k"), {"k": key},
            )  # fmt: skip
            return found.first()
    finally:
        await store.aclose()


def _poll_key(url: str, data_dir: Path, key: str, state: str, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    row = None
    while time.monotonic() < deadline:
        row = asyncio.run(_key_row(url, data_dir, key))
        if row is not None and row.state == state:
            return row
        time.sleep(0.1)
    raise AssertionError(f"key {key} not {state} within {timeout_s} s: {row}")


def _seconds(start: datetime | str, end: datetime | str) -> float:
    """``end - start`` in seconds (SQLite hands the timestamps back as text)."""

    def parse(value: datetime | str) -> datetime:
        return as_utc(datetime.fromisoformat(value) if isinstance(value, str) else value)

    return (parse(end) - parse(start)).total_seconds()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_g4_orchestrator_sigkill_mid_run_restart_closes_the_claim_never_reruns(
    backend: str, tmp_path: Path, blackhole: Blackhole, request: pytest.FixtureRequest
) -> None:
    """G4 (pass figure: 100 % of runs reach a final state <= deadline + 60 s; stuck runs
    closed as ``abandoned``, never silently re-executed): ``conclave serve`` is SIGKILLed
    while its run waits on the agents; after the restart the same Idempotency-Key answers
    409 ``in_progress`` (not a second run), the scheduler's pass closes the claim as
    ``abandoned`` with its reason within its staleness limit (run deadline + 25 s) plus
    one pass (+5 s tolerance), and then the key answers 409 ``idempotency_key_abandoned``.
    Agent calls stay at the eight of the first attempt; no run row is written."""
    # a database of its own: the run count below must see no other test's runs
    url = request.getfixturevalue("own_database") if backend == "postgresql" else ""
    data_dir = tmp_path / "data"
    env = _env(tmp_path, blackhole, url)
    key = f"g4-{uuid.uuid4().hex}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve = conclave("serve", "--host", "127.0.0.1", "--port", str(port))
    answers: list[Any] = []

    def post() -> None:
        try:
            with httpx2.Client(timeout=60, trust_env=False) as client:
                answers.append(client.post(f"{base}/pipeline/run", json=RUN,
                                           headers={"Idempotency-Key": key}))  # fmt: skip
        except httpx2.HTTPError as exc:  # the kill cuts the connection
            answers.append(exc)

    with started(serve, env, tmp_path, tmp_path / "serve1.log") as first:
        wait_live(base, first)
        with httpx2.Client(timeout=10, trust_env=False) as client:
            runs_before = client.get(f"{base}/pipeline/runs").json()["total"]
        poster = threading.Thread(target=post)
        poster.start()
        deadline = time.monotonic() + 30
        parallel = len(REGISTRY) - 1  # the risk manager runs after the other eight
        while blackhole.calls("POST /run") < parallel and time.monotonic() < deadline:
            time.sleep(0.05)
        called = blackhole.calls("POST /run")
        assert called == parallel  # the run waits on its agents: mid-run
        assert asyncio.run(_key_row(url, data_dir, key)).state == "pending"
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=10) == -signal.SIGKILL
        poster.join(timeout=30)
    assert isinstance(answers[0], httpx2.HTTPError)  # the client saw the crash

    with started(serve, env, tmp_path, tmp_path / "serve2.log") as second:
        wait_live(base, second)
        with httpx2.Client(timeout=10, trust_env=False) as client:
            busy = client.post(f"{base}/pipeline/run", json=RUN, headers={"Idempotency-Key": key})
            assert busy.status_code == 409, busy.text
            assert busy.json()["error"]["code"] == "idempotency_key_in_progress"

            sweep_env = env | {
                "CONCLAVE_PIPELINE__RUN_DEADLINE_S": str(SWEEP_DEADLINE_S),
                "CONCLAVE_SCHEDULER__POLL_S": str(SWEEP_POLL_S),
                "CONCLAVE_SCHEDULER__METRICS_PORT": "0",
            }
            limit_s = SWEEP_DEADLINE_S + 25.0
            with started(conclave("scheduler"), sweep_env, tmp_path, tmp_path / "sched.log"):
                row = _poll_key(url, data_dir, key, "abandoned",
                                limit_s + SWEEP_POLL_S + CLOSE_TOLERANCE_S + 30)  # fmt: skip
            assert row.reason == ABANDONED_REASON
            assert row.run_id is None
            closed_after = _seconds(row.claimed_at, row.completed_at)
            assert limit_s <= closed_after <= limit_s + SWEEP_POLL_S + CLOSE_TOLERANCE_S
            assert closed_after <= RUN_DEADLINE_S + 60  # the row's figure

            gone = client.post(f"{base}/pipeline/run", json=RUN, headers={"Idempotency-Key": key})
            assert gone.status_code == 409, gone.text
            assert gone.json()["error"]["code"] == "idempotency_key_abandoned"
            assert "retry-after" not in gone.headers  # final: retrying the key cannot help
            assert client.get(f"{base}/pipeline/runs").json()["total"] == runs_before
    assert blackhole.calls("POST /run") == called  # never re-executed
