"""The Runs page's timeframe and degraded filters (issue 14, item 2) in Debian's Chromium
against real ``conclave serve`` and ``conclave dashboard`` processes: the form sends them, the
table shows exactly the runs the API lists for them, the filtered table stays live (a new
matching run arrives by its event stream, a run that does not match never shows), and the
page reads well at 1440 and 390 px."""

from __future__ import annotations

from typing import Any

import httpx2

from conclave.dashboard.pages import PAGE_SIZE
from tests.dashboard.conftest import Stack, save_shot
from tests.dashboard.test_live import Recorded, stack

__all__ = ["stack"]  # test_live's stack: its own SQLite database, no other test's runs


def _api_ids(stack: Stack, **params: str) -> list[str]:
    """The first page the API lists for ``params`` (the page's size: a shared database may
    hold more)."""
    answer = httpx2.get(stack.api + "/pipeline/runs", params=params | {"limit": PAGE_SIZE},
                        trust_env=False, timeout=10)  # fmt: skip
    assert answer.status_code == 200, answer.text
    return [i["runId"] for i in answer.json()["items"]]


def _shown(r: Recorded) -> list[str]:
    rows: list[str] = r.page.locator("#runs tr[data-run]").evaluate_all(
        "rows => rows.map(r => r.dataset.run)"
    )
    return rows


def test_the_runs_page_filters_by_timeframe_and_degraded(stack: Stack, browser: Any) -> None:
    ok_4h = stack.post("/pipeline/run", {"symbol": "ETHUSDT", "timeframe": "4h"})
    # the agents over HTTP, where nothing listens: every step fails, a degraded run
    bad_4h = stack.post("/pipeline/run", {"symbol": "BTCUSDT", "timeframe": "4h",
                                          "useHttpAgents": True})  # fmt: skip
    ok_1h = stack.post("/pipeline/run", {"symbol": "BTCUSDT", "timeframe": "1h"})
    assert bad_4h["degraded"] is True
    assert ok_4h["degraded"] is False
    assert ok_1h["degraded"] is False

    for width, size in (("wide", 1440), ("narrow", 390)):
        r = Recorded(browser, width)
        try:
            r.page.goto(stack.dashboard + "/dashboard/runs")
            form = r.page.locator("form.filters")
            form.locator("select[name=timeframe]").select_option("4h")
            form.locator("select[name=degraded]").select_option("false")
            form.locator("button[type=submit]").click()
            r.page.wait_for_url("**/dashboard/runs?*timeframe=4h*")
            assert "degraded=false" in r.page.url
            assert _shown(r) == _api_ids(stack, timeframe="4h", degraded="false")
            assert ok_4h["runId"] in _shown(r)
            assert bad_4h["runId"] not in _shown(r)
            assert ok_1h["runId"] not in _shown(r)
            # the choices stay selected
            assert form.locator("select[name=timeframe]").input_value() == "4h"
            assert form.locator("select[name=degraded]").input_value() == "false"
            scroll = r.page.evaluate("document.documentElement.scrollWidth")
            assert scroll <= size, f"{scroll} px wide at {size} px"
            save_shot(r.page, stack.shots, f"runs_filtered_{size}")

            r.page.goto(stack.dashboard + "/dashboard/runs?timeframe=4h&degraded=true")
            assert _shown(r) == _api_ids(stack, timeframe="4h", degraded="true")
            assert bad_4h["runId"] in _shown(r)
            assert all("missing" in t for t in r.page.locator("#runs tbody tr").all_inner_texts())
            assert r.errors == []
            assert r.failed == []
        finally:
            r.close()

    # live with its filters: a new 4h run that is not degraded arrives, a 1h one never shows
    r = Recorded(browser)
    try:
        r.page.goto(stack.dashboard + "/dashboard/runs?timeframe=4h&degraded=false")
        r.page.locator("body[data-live-state='open']").wait_for(timeout=5000)
        other = stack.post("/pipeline/run", {"symbol": "BTCUSDT", "timeframe": "1h"})
        match = stack.post("/pipeline/run", {"symbol": "BTCUSDT", "timeframe": "4h"})
        r.page.locator(f"#runs tr[data-run='{match['runId']}']").wait_for(timeout=5000)
        assert other["runId"] not in _shown(r)
        assert _shown(r) == _api_ids(stack, timeframe="4h", degraded="false")
        assert len(r.events("runs")) >= 1
    finally:
        r.close()
