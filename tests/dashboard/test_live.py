"""The dashboard live by server-sent events (issue 14, item 3), in Debian's Chromium against
real ``conclave serve`` and ``conclave dashboard`` processes.

What each test sees is the browser's own record of the stream (the DevTools protocol's
``Network.eventSourceMessageReceived``, independent of the page's script) and every request
the page made: a live part changes by an event of its stream and by no other request (no
polling), the orchestrator going away arrives as an event, a backtest's progress arrives as
events until its report, and a dashboard restarted shows the connection banner until the
browser has reconnected by itself.
"""

from __future__ import annotations

import contextlib
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.dashboard.conftest import REPO, Stack, save_shot, stack_env, start_stack
from tests.dashboard.test_browser import WIDTHS, Watched
from tests.security.procs import conclave, free_port, started, wait_live

#: A new run shows on the Runs page within this (the stream reads the API every second).
NEW_RUN_WITHIN_S = 2.0
#: The orchestrator stopped shows on a live page within this (the overview reads every 2 s).
DOWN_WITHIN_S = 5.0


class Recorded(Watched):
    """A `Watched` page that also records its SSE messages and every request it makes."""

    def __init__(self, browser: Any, width: str = "wide") -> None:
        super().__init__(browser, WIDTHS[width])
        self.messages: list[dict[str, Any]] = []
        self.requests: list[str] = []
        cdp = self.context.new_cdp_session(self.page)
        cdp.send("Network.enable")
        cdp.on("Network.eventSourceMessageReceived", lambda m: self.messages.append(m))
        self.page.on("request", lambda r: self.requests.append(r.url))

    def events(self, name: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["eventName"] == name]

    def wait_event(self, name: str, after: int, timeout_s: float) -> float:
        """Seconds until the page holds more than ``after`` ``name`` events."""
        t0 = time.monotonic()
        while len(self.events(name)) <= after:
            assert time.monotonic() - t0 < timeout_s, f"no {name!r} event in {timeout_s} s"
            self.page.wait_for_timeout(50)
        return time.monotonic() - t0


@pytest.fixture
def recorded(browser: Any) -> Iterator[Any]:
    made: list[Recorded] = []

    def make(width: str = "wide") -> Recorded:
        made.append(Recorded(browser, width))
        return made[-1]

    yield make
    for r in made:
        r.close()


own_stack = contextlib.contextmanager(start_stack)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, shots: Path) -> Iterator[Stack]:
    """A stack on its own SQLite database: "no event while nothing changes" and "exactly one
    event" hold only when no other test adds runs to the same database meanwhile."""
    yield from start_stack(tmp_path_factory.mktemp("live"), shots, isolated=True)


def test_a_new_run_arrives_by_an_event_not_by_polling(stack: Stack, recorded: Any) -> None:
    r = recorded()
    r.page.goto(stack.dashboard + "/dashboard/runs")
    r.page.locator("body[data-live-state='open']").wait_for(timeout=5000)
    r.page.wait_for_timeout(1500)  # the stream has read the API since: nothing changed
    assert r.events("runs") == []  # sent on change only
    before = list(r.requests)
    run = stack.post("/pipeline/run", {"symbol": "SOLUSDT", "timeframe": "1h"})
    t0 = time.monotonic()
    r.page.locator(f"#runs tr[data-run='{run['runId']}']").wait_for(timeout=5000)
    took = time.monotonic() - t0
    print(f"\nnew run on the Runs page after {took:.2f} s (limit {NEW_RUN_WITHIN_S} s)")
    assert took <= NEW_RUN_WITHIN_S
    assert len(r.events("runs")) == 1
    assert run["runId"] in r.events("runs")[0]["data"]
    assert r.page.locator("#runs").get_attribute("data-live-received") == "1"
    assert r.requests == before  # no request at all for it: no polling
    streams = [u for u in before if "/dashboard/events/" in u]
    assert len(streams) == 1  # one stream, opened with the page
    assert streams[0].startswith(stack.dashboard + "/dashboard/events/runs?")
    assert r.page.evaluate("performance.getEntriesByType('navigation').length") == 1
    assert r.errors == []
    assert r.failed == []


def test_a_health_change_arrives_by_an_event(tmp_path: Path, shots: Path, recorded: Any) -> None:
    with own_stack(tmp_path, shots, isolated=True) as stack:
        r = recorded()
        r.page.goto(stack.dashboard + "/dashboard")
        r.page.locator("body[data-live-state='open']").wait_for(timeout=5000)
        before = len(r.requests)
        stack.orchestrator.send_signal(signal.SIGTERM)
        stack.orchestrator.wait(timeout=15)
        t0 = time.monotonic()
        r.page.locator("#overview #down-banner").wait_for(timeout=DOWN_WITHIN_S * 1000)
        took = time.monotonic() - t0
        print(f"\norchestrator down shown after {took:.2f} s (limit {DOWN_WITHIN_S} s)")
        (event,) = r.events("overview")
        assert "not answering" in event["data"]
        assert len(r.requests) == before  # by the stream, not by a request of the page
        assert r.page.locator("#conn-banner").is_hidden()  # the dashboard itself is fine
        save_shot(r.page, shots, "overview_orchestrator_down_live_1440")


def test_a_real_backtest_ends_by_an_event_into_its_report(stack: Stack, recorded: Any) -> None:
    """A real job, queued behind others so its page is open before it ends: its end arrives
    as the ``reload`` event and the page becomes the report; any progress event on the way
    only moves forward. (A real job runs in well under a second here, too fast to count its
    progress events: the next test drives the progress step by step.)"""
    for tf in ("1m", "5m", "15m"):
        stack.post("/backtests", {"symbol": "ETHUSDT", "timeframe": tf, "bars": 5000})
    job = stack.post("/backtests", {"symbol": "BTCUSDT", "timeframe": "30m", "bars": 5000})
    r = recorded()
    r.page.goto(f"{stack.dashboard}/dashboard/backtests/{job['id']}")
    assert r.page.locator("#report").count() == 0, "it ended before its page opened"
    r.page.locator("#report").wait_for(timeout=120_000)
    assert len(r.events("reload")) == 1
    values = [float(re.findall(r'value="([0-9.e-]+)"', e["data"])[0]) for e in r.events("job")]
    print(f"\nprogress by events: {values}")
    assert values == sorted(values)
    pages = [u for u in r.requests if u.endswith(f"/dashboard/backtests/{job['id']}")]
    assert len(pages) == 2  # the page, and its reload into the report
    assert r.errors == []
    assert r.failed == []


class JobStub:
    """An orchestrator that answers ``GET /backtests/{id}`` with ``job`` as the test sets it:
    a real job's progress is too fast to watch step by step, its shape is the real one."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.reads = 0

    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def one(request: Any) -> Any:
            self.reads += 1
            return JSONResponse(self.job)

        async def live(request: Any) -> Any:
            return JSONResponse({"status": "ok"})

        return Starlette(routes=[Route("/backtests/{id}", one), Route("/health/live", live)])


def test_backtest_progress_arrives_by_events_one_per_change(
    stack: Stack, recorded: Any, tmp_path: Path
) -> None:
    from tests.services.helpers import served

    done = stack.post("/backtests", {"symbol": "BTCUSDT", "timeframe": "1h", "bars": 300})
    deadline = time.monotonic() + 60
    while (finished := httpx2.get(f"{stack.api}/backtests/{done['id']}", trust_env=False,
                                  timeout=10).json())["status"] != "done":  # fmt: skip
        assert time.monotonic() < deadline
        time.sleep(0.2)
    running = {k: v for k, v in finished.items() if k not in ("summary", "series")}
    stub = JobStub(running | {"status": "running", "phase": "agents", "progress": 0.2})
    with served(stub.app()) as api:
        port = str(free_port())
        cmd = conclave("dashboard", "--port", port, "--api-url", api)
        with started(
            cmd, stack_env(tmp_path, isolated=True), REPO, tmp_path / "board.log"
        ) as board:
            dash = f"http://127.0.0.1:{port}"
            wait_live(dash, board)
            r = recorded()
            r.page.goto(f"{dash}/dashboard/backtests/{done['id']}")
            r.page.locator("body[data-live-state='open']").wait_for(timeout=5000)
            bar = r.page.locator("#progress #bt-progress")
            assert bar.get_attribute("value") == "0.2"
            steps = [("agents", 0.45), ("account", 0.7), ("account", 0.95)]
            for n, (phase, progress) in enumerate(steps, start=1):
                stub.job = stub.job | {"phase": phase, "progress": progress}
                took = r.wait_event("job", n - 1, timeout_s=3.0)
                assert bar.get_attribute("value") == str(progress)
                assert phase in r.page.locator("#progress").inner_text()
                print(f"\nprogress {progress} shown after {took:.2f} s")
            save_shot(r.page, stack.shots, "backtest_progress_live_1440")
            r.page.set_viewport_size({"width": 390, "height": 844})
            scroll = r.page.evaluate("document.documentElement.scrollWidth")
            assert scroll <= 390, f"{scroll} px wide at 390 px"
            save_shot(r.page, stack.shots, "backtest_progress_live_390")
            reads = stub.reads
            r.page.wait_for_timeout(1500)  # read again and again, unchanged: nothing sent
            assert stub.reads > reads
            assert len(r.events("job")) == len(steps)
            before = list(r.requests)
            stub.job = finished  # the real report
            r.page.locator("#report").wait_for(timeout=5000)
            assert len(r.events("reload")) == 1
            assert len([u for u in before if "/events/" in u]) == 1  # one stream, no polling
            equity = r.page.locator("#equity-chart canvas").first
            equity.wait_for()
            assert r.errors == []
            assert r.failed == []


def test_a_restarted_dashboard_shows_the_banner_then_reconnects(
    tmp_path: Path, shots: Path, recorded: Any
) -> None:
    with own_stack(tmp_path, shots, isolated=True) as stack:
        assert stack.board is not None
        port = stack.dashboard.rsplit(":", 1)[1]
        r = recorded("narrow")
        r.page.goto(stack.dashboard + "/dashboard/runs")
        r.page.locator("body[data-live-state='open']").wait_for(timeout=5000)
        banner = r.page.locator("#conn-banner")
        assert banner.is_hidden()
        t0 = time.monotonic()
        stack.board.send_signal(signal.SIGTERM)
        stack.board.wait(timeout=15)  # its open event stream does not hold the shutdown up
        print(f"\ndashboard with an open stream stopped in {time.monotonic() - t0:.2f} s")
        banner.wait_for(state="visible", timeout=5000)
        assert "lost" in banner.inner_text()
        save_shot(r.page, shots, "connection_lost_sse_390")
        r.page.wait_for_timeout(2000)  # reconnect attempts fail while nothing listens
        env = stack_env(tmp_path, isolated=True)
        cmd = conclave("dashboard", "--port", port, "--api-url", stack.api)
        with started(cmd, env, REPO, tmp_path / "dashboard2.log") as board:
            wait_live(stack.dashboard, board)
            t0 = time.monotonic()
            banner.wait_for(state="hidden", timeout=10_000)
            print(f"\nreconnected {time.monotonic() - t0:.2f} s after the dashboard answered")
            assert r.page.evaluate("document.body.dataset.liveState") == "open"
            # the new stream is live: a new run arrives by it
            run = stack.post("/pipeline/run", {"symbol": "BTCUSDT", "timeframe": "4h"})
            r.page.locator(f"#runs tr[data-run='{run['runId']}']").wait_for(timeout=5000)
            assert r.page.evaluate("performance.getEntriesByType('navigation').length") == 1
            save_shot(r.page, shots, "reconnected_sse_390")
