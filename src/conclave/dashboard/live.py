"""Live pages by server-sent events: new runs, health changes and backtest progress arrive
without a reload and without the browser polling.

One stream per live part of a page (``text/event-stream``, `sse_starlette`):

- ``GET /dashboard/events/runs?<the Runs page's filters>``: event ``runs``, the table;
- ``GET /dashboard/events/overview``: event ``overview``, health, agents, latest decisions;
- ``GET /dashboard/events/backtests/{id}``: event ``job``, the progress bar, then ``reload``
  once the job has ended (the report is a whole page with its charts).

The dashboard keeps no data, so each stream reads the orchestrator's API with the viewer's
own key (their cookie: what they may see is the API's decision, never a shared key's) every
`Watch.interval_s`, and sends an event **only when what it shows changed**: each answer is
reduced to a fingerprint (`conclave.dashboard.web.fingerprint`) and compared with the last
one sent. The page renders with the fingerprint of what it shows (``?v=``) and every event
carries its fingerprint as the SSE ``id``, so a browser that reconnects (``Last-Event-ID``)
is sent the current state only when it missed a change. The orchestrator not answering is a
state like any other: the part turns into the banner (`_down.html`), and back when it
answers again. ``retry`` tells the browser to reconnect after `RETRY_MS`; ``static/app.js``
shows the connection banner until it has.

Cost: one API read per open stream and interval (1 s for the runs table, 0.5 s for a
backtest, 2 s for the overview's three reads), about the load of the htmx polling they
replaced, but the browser is sent nothing while nothing changes.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.responses import Response

from conclave.dashboard import ops, pages
from conclave.dashboard.client import (
    ApiDownError,
    ApiFailedError,
    ApiRefusedError,
    ApiUnavailableError,
)
from conclave.dashboard.web import PREFIX, api, fingerprint, templates

router = APIRouter()
#: How long the browser waits before reconnecting a lost stream (its default is 3 s).
RETRY_MS = 1000
#: A comment line this often keeps proxies from closing an idle stream.
PING_S = 15
_FINAL = ("done", "failed", "cancelled")


@dataclass(frozen=True)
class Watch:
    """One live part: ``read`` gives (fingerprint, event, data) of its current state; a
    failure of the API is sent as ``event`` (the part it replaces)."""

    event: str
    interval_s: float
    read: Callable[[Request], Awaitable[tuple[str, str, str]]]


def fragment(name: str, request: Request, **context: Any) -> str:
    """Template ``name`` rendered alone (the fragments use no request state but the API URL)."""
    html: str = templates.env.get_template(name).render(api_url=api(request).base_url, **context)
    return html


async def _runs(request: Request) -> tuple[str, str, str]:
    data = await pages.runs_data(request)
    return data["digest"], "runs", fragment("_runs_table.html", request, **data)


async def _overview(request: Request) -> tuple[str, str, str]:
    data = await pages.overview_data(request)
    return data["digest"], "overview", fragment("_overview.html", request, **data)


def _job_reader(job_id: str) -> Callable[[Request], Awaitable[tuple[str, str, str]]]:
    async def read(request: Request) -> tuple[str, str, str]:
        job = await ops.job_of(request, job_id)
        if job is None:
            html = fragment("error_fragment.html", request, error="this backtest is no longer kept")
            return "gone", "job", html
        if job["status"] in _FINAL:
            return f"final:{job['status']}", "reload", job["status"]
        return ops.job_digest(job), "job", fragment("_progress.html", request, job=job)

    return read


async def _state(request: Request, watch: Watch) -> tuple[str, str, str]:
    """``watch``'s state, or the honest banner for the API's failure (as the pages do)."""
    try:
        return await watch.read(request)
    except ApiDownError as exc:
        html = fragment("_down.html", request, error=str(exc))
        return fingerprint(["down", str(exc)]), watch.event, html
    except ApiUnavailableError as exc:
        error = f"the orchestrator answered {exc.status}: {exc}"
        html = fragment("_down.html", request, answered=True, error=error)
        return fingerprint(["unavailable", error]), watch.event, html
    except (ApiRefusedError, ApiFailedError) as exc:
        html = fragment("error_fragment.html", request, error=f"the API refused: {exc}")
        return fingerprint(["refused", str(exc)]), watch.event, html


async def _events(request: Request, watch: Watch) -> AsyncIterator[ServerSentEvent]:
    """Events of ``watch`` while the browser listens: one whenever its state changes."""
    seen = request.headers.get("last-event-id") or request.query_params.get("v") or ""
    yield ServerSentEvent(comment="live", retry=RETRY_MS)
    while True:
        started = time.monotonic()
        digest, event, data = await _state(request, watch)
        if digest != seen:
            seen = digest
            yield ServerSentEvent(data=data, event=event, id=digest)
        await asyncio.sleep(max(0.05, watch.interval_s - (time.monotonic() - started)))


def _stream(request: Request, watch: Watch) -> Response:
    return EventSourceResponse(
        _events(request, watch),
        ping=PING_S,
        send_timeout=30,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get(PREFIX + "/events/runs")
async def runs_events(request: Request) -> Response:
    """The Runs table (with the page's filters and page number), on change."""
    return _stream(request, Watch("runs", 1.0, _runs))


@router.get(PREFIX + "/events/overview")
async def overview_events(request: Request) -> Response:
    """The overview's health, agents and latest decisions, on change."""
    return _stream(request, Watch("overview", 2.0, _overview))


@router.get(PREFIX + "/events/backtests/{job_id}")
async def backtest_events(request: Request, job_id: str) -> Response:
    """A backtest's progress, on change; ``reload`` once it has ended."""
    if not re.fullmatch(r"[0-9a-f]{32}", job_id):
        return Response("a job id is 32 hexadecimal digits", 404, media_type="text/plain")
    return _stream(request, Watch("job", 0.5, _job_reader(job_id)))


__all__ = ["PING_S", "RETRY_MS", "router"]
