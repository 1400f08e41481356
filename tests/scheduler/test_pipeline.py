"""The scheduler over the real pipeline, store, API and CLI (sim source, SQLite in tmp_path)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

from conclave.agents import REGISTRY
from conclave.market.sources.sim import SimSource
from conclave.pipeline import PipelineRun
from conclave.pipeline.http_runner import HttpRunner
from conclave.scheduler import Job
from conclave.services.api import create_app
from conclave.services.execute import PipelineExecutor, build_scheduler
from conclave.services.runtime import Runtime
from conclave.settings import Settings
from conclave.timeframes import iso_ms
from tests.scheduler.conftest import DAY0, FakeClock
from tests.services.test_api import make_settings

JOB = Job("paper-1", "BTCUSDT", "1h")
HOUR = 3_600_000


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[tuple[Runtime, FakeClock]]:
    """A runtime over the sim source whose clock the test moves."""
    clock = FakeClock(DAY0 + 30 * 60_000)  # half-way through an open hourly bar
    settings = make_settings(tmp_path)
    rt = await Runtime.open(settings, now_ms=clock, source=SimSource(now_ms=clock))
    yield rt, clock
    await rt.aclose()


async def test_each_run_uses_the_bar_that_just_closed_never_the_open_one(
    runtime: tuple[Runtime, FakeClock],
) -> None:
    """Mid-bar, the run is as of the last close: every agent's last candle closed there (H4)."""
    rt, clock = runtime
    scheduler = build_scheduler(rt.settings, rt, only=JOB)
    for _ in range(3):
        [outcome] = await scheduler.run_due_once()
        assert outcome.status == "ok"
        assert outcome.slot is not None
        assert outcome.run_id
        close = outcome.slot.close_ms
        assert close == DAY0 + (clock.now - DAY0) // HOUR * HOUR  # the newest close
        stored = await rt.store.get_run(outcome.run_id)
        assert stored is not None
        assert stored["asOf"] == iso_ms(close)
        assert stored["accountId"] == JOB.account_id
        for step in stored["steps"].values():  # the last candle each agent read
            assert step["meta"]["as_of"] == iso_ms(close)
        clock.advance(3600)


def test_use_http_agents_makes_the_scheduler_call_every_agent_over_http(tmp_path: Path) -> None:
    """USE_HTTP_AGENTS=true: the scheduler's pipeline holds nine HttpRunners, as in the API."""

    async def check(settings: Settings) -> set[str]:
        clock = FakeClock()
        rt = await Runtime.open(settings, now_ms=clock, source=SimSource(now_ms=clock))
        try:
            executor = PipelineExecutor(rt)
            return {type(executor.pipeline().runners[n]).__name__ for n in REGISTRY}
        finally:
            await rt.aclose()

    assert asyncio.run(check(make_settings(tmp_path, use_http_agents=True))) == {
        HttpRunner.__name__
    }
    assert asyncio.run(check(make_settings(tmp_path, use_http_agents=False))) == {"LocalRunner"}


def test_once_cli_runs_the_due_slot_records_it_and_exits_0(tmp_path: Path) -> None:
    """``conclave scheduler --once --account ... --source sim`` exits 0; run and slot stored."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCLAVE_")}
    env |= {"CONCLAVE_DATA_DIR": str(tmp_path), "DATABASE_URL": "", "REDIS_URL": ""}
    cmd = [sys.executable, "-m", "conclave", "scheduler", "--once", "--account", "paper-1",
           "--symbol", "BTCUSDT", "--timeframe", "1h", "--source", "sim", "--json"]  # fmt: skip
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()[-500:]
    [outcome] = json.loads(done.stdout)["outcomes"]
    assert outcome["status"] == "ok"
    assert outcome["jobId"] == JOB.id
    with sqlite3.connect(tmp_path / "conclave.db") as db:
        runs = db.execute("SELECT run_id, account_id FROM runs").fetchall()
        slots = db.execute("SELECT job_id, status, run_id FROM scheduled_slots").fetchall()
    assert runs == [(outcome["runId"], "paper-1")]
    assert slots == [(JOB.id, "ok", outcome["runId"])]
    again = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, timeout=60)
    assert again.returncode == 0
    assert json.loads(again.stdout)["outcomes"][0]["status"] == "not_due"


async def test_jobs_api_adds_lists_removes_and_health_names_a_stalled_job(tmp_path: Path) -> None:
    """POST/GET/DELETE /scheduler/jobs; /health degrades naming a job idle for 2 intervals."""
    clock = FakeClock(DAY0 + 1000)
    app = create_app(make_settings(tmp_path), now_ms=clock, source=SimSource(now_ms=clock))
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            body = {"accountId": "paper-1", "symbol": "BTCUSDT", "timeframe": "1m"}
            created = await c.post("/scheduler/jobs", json=body)
            assert created.status_code == 201
            job_id = created.json()["id"]
            assert job_id == "paper-1@BTCUSDT@1m"
            assert (await c.post("/scheduler/jobs", json=body)).status_code == 409
            bad = await c.post("/scheduler/jobs", json=body | {"timeframe": "1M"})
            assert bad.status_code == 422

            health = (await c.get("/health")).json()
            assert health["status"] == "ok"
            assert health["dependencies"]["scheduler"]["stalled"] == []
            clock.advance(2 * 60 + 1.001)  # nobody ran it for two intervals
            health = (await c.get("/health")).json()
            assert health["status"] == "degraded"
            assert health["dependencies"]["scheduler"]["stalled"] == [job_id]
            [item] = (await c.get("/scheduler/jobs")).json()["items"]
            assert (item["id"], item["source"], item["status"]) == (job_id, "api", "stalled")

            rt: Runtime = app.state.runtime
            await build_scheduler(rt.settings, rt).run_due_once()  # a success clears it
            assert (await c.get("/health")).json()["status"] == "ok"

            assert (await c.delete(f"/scheduler/jobs/{job_id}")).status_code == 204
            assert (await c.delete(f"/scheduler/jobs/{job_id}")).status_code == 404
            assert (await c.get("/scheduler/jobs")).json()["items"] == []


async def test_a_run_of_an_account_job_is_handed_to_the_account_hook_after_saving(
    runtime: tuple[Runtime, FakeClock],
) -> None:
    """With an account the saved run goes to the paper-account step; without one it does not."""
    rt, _ = runtime
    seen: list[tuple[str | None, bool]] = []

    async def hook(run: PipelineRun) -> None:
        seen.append((run.account_id, await rt.store.get_run(run.run_id) is not None))

    scheduler = build_scheduler(rt.settings, rt, only=JOB, on_account_run=hook)
    await scheduler.run_due_once()
    anonymous = build_scheduler(rt.settings, rt, only=Job(None, "ETHUSDT", "1h"),
                                on_account_run=hook)  # fmt: skip
    await anonymous.run_due_once()
    assert seen == [("paper-1", True)]


async def test_scheduled_runs_of_a_paper_account_record_equity_and_fill_next_bar(
    runtime: tuple[Runtime, FakeClock],
) -> None:
    """Each scheduled slot of a paper account's job is processed for the account: equity
    recorded at every evaluated bar, once per run; orders (the seeded sim gives some in these
    48 hours) fill at the bar after their decision bar, never at the decision bar itself."""
    rt, clock = runtime
    assert rt.accounts is not None
    acct = await rt.accounts.create("scheduled", balance=10_000.0, quote="USDT")
    job = Job(acct["id"], "BTCUSDT", "1h")
    scheduler = build_scheduler(rt.settings, rt, only=job)
    closes = []
    for _ in range(48):
        [outcome] = await scheduler.run_due_once()
        assert outcome.status == "ok"
        assert outcome.slot is not None
        closes.append(outcome.slot.close_ms)
        # the slot that just ran is not run again (one run, one order at most)
        assert [o.status for o in await scheduler.run_due_once()] == ["not_due"]
        clock.advance(3600)
    _, _, times, equity = await rt.accounts.state_rows(acct["id"], as_of_ms=clock.now)
    # one equity point per evaluated bar, marked at the close of the bar each run decided on
    assert times == closes
    assert all(e > 0 for e in equity)
    shown = await rt.accounts.get(acct["id"])
    assert shown is not None
    filled = [o for o in shown["orders"] if o["status"] == "filled"]
    assert filled, "the seeded sim market gives BUYs in these 48 hours"
    for order in shown["orders"]:
        assert order["runId"]
        if order["status"] == "filled":
            assert order["fillOpenMs"] == order["decisionOpenMs"] + HOUR
