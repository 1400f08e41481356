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


async def test_the_live_table_turns_into_the_banner_and_keeps_polling(
    board: httpx2.AsyncClient,
) -> None:
    part = await board.get("/dashboard/partials/runs")
    assert part.status_code == 200  # htmx swaps it in and polls on
    assert 'id="down-banner"' in part.text
    assert "the run store is unavailable" in part.text
