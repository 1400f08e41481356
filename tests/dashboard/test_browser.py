"""The dashboard in a real browser (issue 14, item 7): Debian's Chromium, driven by Playwright,
against the dashboard and a real orchestrator on loopback (`conftest.Stack`).

Every page at 1440 and 390 px: 0 console errors, 0 failed requests (none refused, none
answered 4xx/5xx), no horizontal scroll; each chart's canvas drawn; a new run on the Runs
page within 2 s without a reload; a run's nine steps and contribution bars that sum to the
conviction; a backtest started from the browser that finishes and shows its report; the
orchestrator stopped shows the banner. Screenshots of every page at both widths are saved.
"""

from __future__ import annotations

import math
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.dashboard.conftest import Stack, save_shot, start_stack

WIDTHS = {"wide": (1440, 900), "narrow": (390, 844), "dark": (1440, 900)}
#: A new run shows on the Runs page within this (its event stream reads the API every second).
NEW_RUN_WITHIN_S = 2.0
#: JS: the most pixels of one canvas in ``el`` that differ from that canvas' first pixel.
DRAWN = """(el) => {
  let best = 0;
  for (const c of el.querySelectorAll('canvas')) {
    if (!c.width || !c.height) continue;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) {
      if (Math.abs(d[i] - d[0]) + Math.abs(d[i + 1] - d[1]) + Math.abs(d[i + 2] - d[2]) > 40) n++;
    }
    best = Math.max(best, n);
  }
  return best;
}"""


class Watched:
    """A page whose console errors and failed requests are recorded from its first load."""

    def __init__(self, browser: Any, size: tuple[int, int], scheme: str = "light") -> None:
        self.context = browser.new_context(viewport={"width": size[0], "height": size[1]},
                                           color_scheme=scheme)  # fmt: skip
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.failed: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("requestfailed", self._failed)
        self.page.on(
            "response", lambda r: self.failed.append(f"{r.status} {r.url}") if r.status >= 400
            else None,
        )  # fmt: skip

    def _failed(self, request: Any) -> None:
        # a live page's event stream is cut when the page is left (a link, a reload): the
        # browser's own ending of it, not a failure; a stream refused or broken still counts
        if request.resource_type == "eventsource" and request.failure == "net::ERR_ABORTED":
            return
        self.failed.append(f"{request.url}: {request.failure}")

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def watched(browser: Any) -> Iterator[Any]:
    made: list[Watched] = []

    def make(width: str = "wide") -> Watched:
        made.append(Watched(browser, WIDTHS[width], "dark" if width == "dark" else "light"))
        return made[-1]

    yield make
    for w in made:
        w.close()


def _wait_job(stack: Stack, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        job: dict[str, Any] = httpx2.get(f"{stack.api}/backtests/{job_id}", trust_env=False,
                                         timeout=10).json()  # fmt: skip
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.2)
    raise TimeoutError("the backtest did not finish within 90 s")


@pytest.fixture(scope="module")
def seeded(stack: Stack) -> Stack:
    """An account with a market, runs with and without it, and a finished backtest."""
    account = stack.post(
        "/accounts",
        {
            "name": "paper <b>one</b>",
            "balance": 10_000,
            "quote": "USDT",
            "limits": {"markets": [{"symbol": "BTCUSDT", "timeframe": "1h"}]},
        },
    )
    stack.made["account"] = account["id"]
    stack.post("/pipeline/run", {"symbol": "ETHUSDT", "timeframe": "4h"})
    stack.post("/pipeline/run", {"accountId": account["id"], "symbol": "BTCUSDT",
                                 "timeframe": "1h"})  # fmt: skip
    # a second equity point, on another bar: the 1m bar of now (the 1h one opened earlier)
    stack.post("/pipeline/run", {"accountId": account["id"], "symbol": "BTCUSDT",
                                 "timeframe": "1m"})  # fmt: skip
    stack.made["run"] = stack.post("/pipeline/run", {"symbol": "BTCUSDT", "timeframe": "1h"})
    job = stack.post("/backtests", {"symbol": "BTCUSDT", "timeframe": "1h", "bars": 400})
    assert _wait_job(stack, job["id"])["status"] == "done"
    stack.made["job"] = job["id"]
    return stack


def _pages(stack: Stack) -> dict[str, str]:
    m = stack.made
    return {
        "overview": "/dashboard",
        "runs": "/dashboard/runs",
        "run": f"/dashboard/runs/{m['run']['runId']}",
        "market": "/dashboard/market?symbol=BTCUSDT&timeframe=1h",
        "accounts": "/dashboard/accounts",
        "account": f"/dashboard/accounts/{m['account']}",
        "backtests": "/dashboard/backtests",
        "backtest": f"/dashboard/backtests/{m['job']}",
        "compare": f"/dashboard/backtests/compare?id={m['job']}",
        "login": "/dashboard/login",
    }


@pytest.mark.parametrize("width", ["wide", "narrow", "dark"])
def test_every_page_loads_clean_at_both_widths(seeded: Stack, watched: Any, width: str) -> None:
    size = WIDTHS[width][0]
    for name, path in _pages(seeded).items():
        w = watched(width)
        answer = w.page.goto(seeded.dashboard + path)
        assert answer is not None, name
        assert answer.status == 200, (name, answer.status)
        w.page.wait_for_timeout(1500)  # the live parts connected, the charts drawn
        assert w.errors == [], (name, w.errors)
        assert w.failed == [], (name, w.failed)
        scroll = w.page.evaluate("document.documentElement.scrollWidth")
        assert scroll <= size, f"{name}: {scroll} px wide at {size} px"
        save_shot(w.page, seeded.shots, f"{name}_{size}" + ("_dark" if width == "dark" else ""))
        w.close()


def test_each_chart_is_drawn(seeded: Stack, watched: Any) -> None:
    w = watched()
    w.page.goto(seeded.dashboard + _pages(seeded)["market"])
    chart = w.page.locator("#market-chart")
    chart.locator("canvas").first.wait_for()
    w.page.wait_for_timeout(500)
    assert chart.evaluate(DRAWN) > 2000  # candles: thousands of coloured pixels
    panes = chart.locator("canvas").count()
    w.page.locator("#agent-toggles input[value=momentum]").check()
    w.page.wait_for_timeout(300)
    assert chart.locator("canvas").count() > panes  # a pane more for the agent's scores
    w.page.goto(seeded.dashboard + _pages(seeded)["account"])
    account = w.page.locator("#account-chart")
    account.locator("canvas").first.wait_for()
    w.page.wait_for_timeout(300)
    assert account.evaluate(DRAWN) > 500  # equity, drawdown and the three limit lines
    w.page.goto(seeded.dashboard + _pages(seeded)["backtest"])
    for chart_id in ("equity-chart", "drawdown-chart", "trades-chart"):
        box = w.page.locator(f"#{chart_id}")
        box.locator("canvas").first.wait_for()
        w.page.wait_for_timeout(300)
        assert box.evaluate(DRAWN) > 500, chart_id
    assert w.errors == []
    assert w.failed == []


def test_a_new_run_shows_on_the_runs_page_within_2_s(seeded: Stack, watched: Any) -> None:
    w = watched()
    w.page.goto(seeded.dashboard + "/dashboard/runs")
    w.page.wait_for_timeout(1200)
    run = seeded.post("/pipeline/run", {"symbol": "SOLUSDT", "timeframe": "1h"})
    t0 = time.monotonic()
    w.page.locator(f"tr[data-run='{run['runId']}']").wait_for(timeout=5000)
    took = time.monotonic() - t0
    print(f"\nnew run on the Runs page after {took:.2f} s (limit {NEW_RUN_WITHIN_S} s)")
    assert took <= NEW_RUN_WITHIN_S, f"shown after {took:.2f} s"
    assert w.page.evaluate("performance.getEntriesByType('navigation').length") == 1  # no reload
    assert w.errors == []
    assert w.failed == []


def test_a_run_shows_nine_steps_and_contributions_summing_to_the_conviction(
    seeded: Stack, watched: Any
) -> None:
    run = seeded.made["run"]
    w = watched()
    w.page.goto(seeded.dashboard + f"/dashboard/runs/{run['runId']}")
    steps = w.page.locator("tr.step")
    assert steps.count() == 9
    assert set(steps.evaluate_all("rows => rows.map(r => r.dataset.agent)")) == set(run["steps"])
    values = w.page.locator("tr.contribution").evaluate_all(
        "rows => rows.map(r => r.dataset.value)"
    )
    assert len(values) == 9
    parts = [float(v) for v in values if v]
    conviction = float(w.page.locator("#conviction").get_attribute("data-value") or "nan")
    assert math.isclose(conviction, run["decision"]["conviction"], abs_tol=1e-12)
    assert math.isclose(math.fsum(parts), conviction, abs_tol=1e-9)
    shown = w.page.locator("#contrib-sum").inner_text()
    assert shown == f"{conviction:+,.4f}"
    # each bar's length is its contribution on one scale
    widths = w.page.locator("tr.contribution rect").evaluate_all(
        "rs => rs.map(r => parseFloat(r.getAttribute('width')))"
    )
    big = max(abs(p) for p in [*parts, conviction])
    for v, width in zip(values, widths, strict=True):
        assert math.isclose(width, abs(float(v or 0)) / big * 100, abs_tol=1e-6)


def test_a_backtest_started_from_the_browser_finishes_with_its_report(
    seeded: Stack, watched: Any
) -> None:
    w = watched()
    w.page.goto(seeded.dashboard + "/dashboard/backtests")
    form = w.page.locator("#backtest-form")
    form.locator("input[name=symbol]").fill("ETHUSDT")
    form.locator("select[name=timeframe]").select_option("4h")
    form.locator("input[name=bars]").fill("300")
    form.locator("input[value=news-sentiment]").uncheck()
    form.locator("input[name='w_momentum']").fill("2")
    form.locator("#start-backtest").click()
    w.page.wait_for_url(re.compile(r"/dashboard/backtests/[0-9a-f]{32}$"))
    w.page.locator("#report").wait_for(timeout=90_000)
    job_id = w.page.url.rsplit("/", 1)[1]
    job = httpx2.get(f"{seeded.api}/backtests/{job_id}", trust_env=False).json()
    assert job["status"] == "done"
    assert job["request"]["symbol"] == "ETHUSDT"
    assert job["request"]["bars"] == 300
    assert "news-sentiment" not in job["request"]["agents"]
    assert job["summary"]["settings"]["decision"]["weights"]["momentum"] == 2
    equity = w.page.locator("#equity-chart")
    equity.locator("canvas").first.wait_for()
    w.page.wait_for_timeout(300)
    assert equity.evaluate(DRAWN) > 500
    assert w.page.locator("table.skill tbody tr").count() == len(job["summary"]["skill"])
    assert w.errors == []
    assert w.failed == []


def test_stopping_the_orchestrator_shows_the_banner(
    tmp_path: Path, shots: Path, watched: Any
) -> None:
    for stack in start_stack(tmp_path, shots):
        w = watched()
        w.page.goto(stack.dashboard + "/dashboard/runs")
        assert w.page.locator("#down-banner").count() == 0
        stack.orchestrator.send_signal(signal.SIGTERM)
        stack.orchestrator.wait(timeout=15)
        # the live table turns into the banner by its event stream, without a reload
        w.page.locator("#runs #down-banner").wait_for(timeout=5000)
        save_shot(w.page, shots, "orchestrator_down_live_1440")
        answer = w.page.goto(stack.dashboard + "/dashboard")
        assert answer is not None
        assert answer.status == 503
        banner = w.page.locator("#down-banner")
        assert "not answering" in banner.inner_text()
        assert "Traceback" not in w.page.content()
        save_shot(w.page, shots, "orchestrator_down_1440")


def test_losing_the_dashboard_shows_the_connection_banner(
    tmp_path: Path, shots: Path, watched: Any
) -> None:
    for stack in start_stack(tmp_path, shots):
        assert stack.board is not None
        w = watched("narrow")
        w.page.goto(stack.dashboard + "/dashboard/runs")
        banner = w.page.locator("#conn-banner")
        assert banner.is_hidden()
        stack.board.send_signal(signal.SIGTERM)
        stack.board.wait(timeout=15)
        banner.wait_for(state="visible", timeout=5000)  # the stream breaks: said, not hidden
        assert "lost" in banner.inner_text()
        save_shot(w.page, shots, "connection_lost_390")


def test_the_pages_are_keyboard_reachable(seeded: Stack, watched: Any) -> None:
    w = watched()
    w.page.goto(seeded.dashboard + "/dashboard/backtests")
    w.page.keyboard.press("Tab")
    assert w.page.evaluate("document.activeElement.textContent") == "Skip to content"
    tags = []
    for _ in range(40):  # the navigation, then every field of the form, by Tab alone
        w.page.keyboard.press("Tab")
        tags.append(w.page.evaluate(
            "(() => { const e = document.activeElement;"
            " return e.id || e.getAttribute('name') || e.textContent.trim(); })()"
        ))  # fmt: skip
    assert tags[:6] == ["Conclave", "Overview", "Market", "Runs", "Accounts", "Backtests"]
    assert {"symbol", "timeframe", "bars", "agents", "start-backtest"} <= set(tags)
