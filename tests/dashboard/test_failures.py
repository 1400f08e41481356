"""An orchestrator that answers but cannot serve (its database down: 503 with its error body)
is said as such, not as "not answering" and never as an empty page (issue 14, item 4).

A database outage in a running orchestrator cannot be staged with real processes here (it
refuses to start without one), so the orchestrator is replaced by a stub answering exactly
its 503 body; the dashboard is the real app, in process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from conclave.dashboard.app import create_dashboard
from conclave.settings import Settings
from tests.services.helpers import served

BODY = {"error": {"code": "unavailable", "message": "the run store is unavailable; retry later"}}


async def _unavailable(request: object) -> Response:
    return JSONResponse(BODY, 503, headers={"Retry-After": "5"})


@pytest.fixture
async def board(tmp_path: Path) -> AsyncIterator[httpx2.AsyncClient]:
    stub = Starlette(routes=[Route("/pipeline/runs", _unavailable)])
    with served(stub) as api:
        settings = Settings(_env_file=None, data_dir=tmp_path, dashboard={"api_url": api})
        app = create_dashboard(settings)
        async with app.router.lifespan_context(app):
            transport = httpx2.ASGITransport(app=app)
            async with httpx2.AsyncClient(transport=transport, base_url="http://dash") as c:
                yield c


async def test_a_page_says_the_orchestrator_cannot_serve_and_why(
    board: httpx2.AsyncClient,
) -> None:
    page = await board.get("/dashboard/runs")
    assert page.status_code == 503
    assert "The orchestrator cannot serve this now." in page.text
    assert "answered 503: the run store is unavailable; retry later" in page.text
    assert "not answering" not in page.text
    assert '<meta http-equiv="refresh" content="5">' in page.text  # it retries by itself


async def test_the_live_table_turns_into_the_banner_by_its_event_stream(tmp_path: Path) -> None:
    """The Runs page's event stream (real uvicorn: a stream is never buffered) sends the
    banner in place of the table, with the reconnect delay and the state's id."""
    stub = Starlette(routes=[Route("/pipeline/runs", _unavailable)])
    with served(stub) as api:
        settings = Settings(_env_file=None, data_dir=tmp_path, dashboard={"api_url": api})
        with served(create_dashboard(settings), lifespan="on") as board:
            lines: list[str] = []
            async with (
                httpx2.AsyncClient(timeout=10, trust_env=False) as client,
                client.stream("GET", board + "/dashboard/events/runs?v=x") as answer,
            ):
                assert answer.status_code == 200
                assert answer.headers["content-type"].startswith("text/event-stream")
                assert "default-src 'none'" in answer.headers["content-security-policy"]
                async for line in answer.aiter_lines():
                    lines.append(line)
                    if line == "" and any(x.startswith("data:") for x in lines):
                        break  # the first whole event
    assert "retry: 1000" in lines
    assert "event: runs" in lines
    assert any(x.startswith("id: ") for x in lines)
    data = "\n".join(x.removeprefix("data: ") for x in lines if x.startswith("data:"))
    assert 'id="down-banner"' in data
    assert "the run store is unavailable" in data
    assert "Traceback" not in data
