"""RELIABILITY H2: the exchange hangs and the process stays up; the progress watchdog says so.

Pass figure of the row: **alert <= 1 interval after the threshold** (no successful run for 2
intervals -> health degraded plus an alert). The scheduler the service builds
(`build_scheduler`, its watchdog from the settings) runs its own loop over a 1m job, the nine
agents in process and the run store on an SQLite file; its market answers the first run and
then stops answering (every fetch times out). The loop's clock is the test's and moves only
when the loop sleeps. Every watchdog report the loop makes is recorded with the time it was
made: none may be degraded before the threshold (the last good slot's close + 2 intervals +
the offset), the first degraded one, naming the job, must come at most one interval after
it, with the ``scheduler_stalled`` alert logged at that same pass; every run after the
exchange stopped must be recorded as failed, not as progress.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from conclave.errors import ExchangeTimeoutError
from conclave.market.candles import Candles
from conclave.market.sources.sim import SimSource
from conclave.scheduler import Job
from conclave.services.execute import build_scheduler
from conclave.services.runtime import Runtime
from conclave.timeframes import Timeframe
from tests.scheduler.conftest import DAY0, FakeClock, FakeSleep
from tests.services.test_api import make_settings

JOB = Job(None, "BTCUSDT", "1m")
INTERVAL_MS, OFFSET_MS = 60_000, 1_000
#: Simulated minutes the loop runs: well past the threshold.
RUN_FOR_MS = 10 * INTERVAL_MS


class HangingExchange:
    """The sim market until ``hang()``; from then on every fetch times out."""

    name = "sim"
    simulated = True

    def __init__(self, clock: FakeClock) -> None:
        self.inner = SimSource(now_ms=clock)
        self.hung = False

    async def get_candles(
        self, symbol: str, timeframe: Timeframe | str, limit: int, end: int | None = None
    ) -> Candles:
        if self.hung:
            raise ExchangeTimeoutError("the exchange did not answer within the read timeout")
        return await self.inner.get_candles(symbol, timeframe, limit, end)

    async def aclose(self) -> None:
        await self.inner.aclose()


class Reports:
    """Wraps the scheduler's own watchdog: each report, with the clock's time."""

    def __init__(self, inner: Any, clock: FakeClock) -> None:
        self.inner, self.clock = inner, clock
        self.seen: list[tuple[int, dict[str, Any]]] = []

    async def health(self, jobs: Any) -> dict[str, Any]:
        report: dict[str, Any] = await self.inner.health(jobs)
        self.seen.append((self.clock.now, report))
        return report


async def test_h2_the_watchdog_alerts_within_one_interval_of_the_threshold(
    tmp_path: Path,
) -> None:
    """H2 (pass figure: alert <= 1 interval after the threshold): the first run succeeds
    (its slot closed at DAY0), then every fetch times out: every report up to DAY0 + 2 min
    + 1 s is ``ok``; the first ``degraded`` one, naming the job with ``lastSuccessAt`` the
    last good close, comes after it and at most 60 s later, with ``scheduler_stalled``
    logged; every later slot is ``failed``, the process still serving."""
    clock = FakeClock(DAY0 + OFFSET_MS)
    settings = make_settings(tmp_path, scheduler={"offset_s": OFFSET_MS / 1000})
    exchange = HangingExchange(clock)
    runtime = await Runtime.open(settings, now_ms=clock, source=exchange)
    stop = asyncio.Event()
    sleep = FakeSleep(clock, DAY0 + RUN_FOR_MS, stop)
    try:
        scheduler = build_scheduler(settings, runtime, sleep=sleep, only=JOB)
        sleep.scheduler = scheduler
        [first] = await scheduler.run_due_once()  # the exchange still answers
        assert first.status == "ok"
        assert first.slot is not None
        exchange.hung = True
        reports = Reports(scheduler.watchdog, clock)
        scheduler.watchdog = reports  # type: ignore[assignment]
        with capture_logs() as logs:
            await asyncio.wait_for(scheduler.serve_forever(stop), timeout=300)
        claims = scheduler.claims
        records = await claims.records(JOB.id)
    finally:
        await runtime.aclose()

    threshold = first.slot.close_ms + 2 * INTERVAL_MS + OFFSET_MS
    early = [t for t, r in reports.seen if t <= threshold and r["status"] != "ok"]
    assert early == []
    degraded = [(t, r) for t, r in reports.seen if r["status"] == "degraded"]
    assert degraded, "the watchdog never reported the stalled job"
    alert_at, report = degraded[0]
    print(f"H2: threshold at +{threshold - DAY0} ms, first alert at +{alert_at - DAY0} ms")
    assert threshold < alert_at <= threshold + INTERVAL_MS
    assert report["stalled"] == [JOB.id]
    assert report["jobs"][0]["lastSuccessAt"] == "2023-11-14T00:00:00.000Z"
    alerts = [e for e in logs if e["event"] == "scheduler_stalled"]
    assert len(alerts) == len(degraded)  # one alert per degraded report, from the first
    assert alerts[0]["jobs"] == [JOB.id]
    assert [r.status for r in records] == ["ok"] + ["failed"] * (len(records) - 1)
    assert len(records) >= 9  # every slot after the first ran, and failed
