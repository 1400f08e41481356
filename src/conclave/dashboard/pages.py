"""The reading pages: Overview, Runs (list and one run) and Market.

Each handler reads the orchestrator's API with the viewer's key and renders a template.
`overview_data` and `runs_data` also give the fingerprint of what they show: the page
renders with it, and `conclave.dashboard.live` streams the part again (server-sent events)
only when a later read's fingerprint differs. Failures go through
`conclave.dashboard.web.page` (banner, login, error page).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from conclave.dashboard.web import PREFIX, api, fingerprint, key_of, page, render

router = APIRouter()
PAGE_SIZE = 20
_SAFE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
STATUSES = ("ok", "blocked", "failed", "no_signal")
#: The Runs page's timeframe filter offers these (the API refuses one outside its allowlist).
TIMEFRAMES = ("1m", "5m", "15m", "30m", "1h", "4h", "1d")
DEGRADED = ("true", "false")


def _param(request: Request, name: str, allowed: tuple[str, ...] | None = None) -> str | None:
    """A query parameter that is safe to forward: short, plain characters, or allowlisted."""
    value = request.query_params.get(name, "").strip()
    if not value or not _SAFE.match(value):
        return None
    if allowed is not None and value not in allowed:
        return None
    return value


def _latest_by_market(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest run of each (account, symbol, timeframe) among ``items`` (newest first)."""
    seen: dict[tuple[Any, Any, Any], dict[str, Any]] = {}
    for run in items:
        seen.setdefault((run.get("accountId"), run.get("symbol"), run.get("timeframe")), run)
    return list(seen.values())


async def overview_data(request: Request) -> dict[str, Any]:
    """The overview's data; its ``digest`` covers every status shown, the agents' errors and
    the latest runs (not the latencies and lags, which change on every read)."""
    key = key_of(request)
    health = await api(request).request("GET", "/health", key, allow=(503,))
    agents = await api(request).get("/agents", key)
    runs = await api(request).get("/pipeline/runs", key, limit=100)
    latest = _latest_by_market(runs["items"])
    digest = fingerprint(
        [
            health.get("status"),
            health.get("mode"),
            {name: dep.get("status") for name, dep in health.get("dependencies", {}).items()},
            [(a.get("name"), a.get("status"), a.get("breaker"), a.get("error")) for a in agents],
            [r.get("runId") for r in latest],
            runs["total"],
        ]
    )
    return {
        "health": health,
        "agents": agents,
        "latest": latest,
        "total_runs": runs["total"],
        "digest": digest,
    }


@router.get(PREFIX)
async def overview(request: Request) -> Response:
    """Component health, the nine agents, the latest decision of each market."""

    async def build(req: Request) -> Response:
        return render(req, "overview.html", **await overview_data(req))

    return await page(request, build)


def _filters(request: Request) -> dict[str, Any]:
    try:
        number = max(1, min(50_000, int(request.query_params.get("page", "1"))))
    except ValueError:
        number = 1
    return {
        "symbol": _param(request, "symbol"),
        "accountId": _param(request, "accountId"),
        "status": _param(request, "status", STATUSES),
        "timeframe": _param(request, "timeframe", TIMEFRAMES),
        "degraded": _param(request, "degraded", DEGRADED),
        "page": number,
    }


async def runs_data(request: Request) -> dict[str, Any]:
    """One page of runs for the filters in ``request``'s query; its ``digest`` covers the
    rows and the total."""
    f = _filters(request)
    answer = await api(request).get(
        "/pipeline/runs",
        key_of(request),
        symbol=f["symbol"],
        accountId=f["accountId"],
        status=f["status"],
        timeframe=f["timeframe"],
        degraded=f["degraded"],
        limit=PAGE_SIZE,
        offset=(f["page"] - 1) * PAGE_SIZE,
    )
    total = int(answer["total"])
    pages = max(1, -(-total // PAGE_SIZE))
    query = "&".join(f"{k}={v}" for k, v in f.items() if v and k != "page")
    return {
        "runs": answer["items"],
        "total": total,
        "filters": f,
        "pages": pages,
        "query": query,
        "statuses": STATUSES,
        "timeframes": TIMEFRAMES,
        "digest": fingerprint([answer["items"], total]),
    }


@router.get(PREFIX + "/runs")
async def runs(request: Request) -> Response:
    """Recorded runs, newest first, filtered and paged; new ones arrive by events."""

    async def build(req: Request) -> Response:
        return render(req, "runs.html", **await runs_data(req))

    return await page(request, build)


@router.get(PREFIX + "/runs/{run_id}")
async def run(request: Request, run_id: str) -> Response:
    """One run: its nine steps and the decision with each agent's contribution."""

    async def build(req: Request) -> Response:
        if not re.fullmatch(r"[0-9a-f]{32}", run_id):
            return render(
                req,
                "error.html",
                404,
                title="No such run",
                error="a run id is 32 hexadecimal digits",
            )
        found = await api(req).get(f"/pipeline/runs/{run_id}", key_of(req))
        return render(req, "run.html", run=found)

    return await page(request, build)


@router.get(PREFIX + "/market")
async def market(request: Request) -> Response:
    """Candles of a market with the recorded decisions and the agents' scores."""

    async def build(req: Request) -> Response:
        key = key_of(req)
        health = await api(req).request("GET", "/health", key, allow=(503,))
        symbol = _param(req, "symbol") or "BTCUSDT"
        timeframe = _param(req, "timeframe") or "1h"
        candles = await api(req).get(
            "/market/candles", key, symbol=symbol, timeframe=timeframe, limit=300
        )
        signals = await api(req).get(
            "/market/signals", key, symbol=symbol, timeframe=timeframe, limit=100
        )
        data = {"candles": candles, "signals": signals["items"]}
        return render(
            req,
            "market.html",
            symbol=symbol,
            timeframe=timeframe,
            data=data,
            source=candles["source"],
            simulated=candles["simulated"],
            mode=health.get("mode"),
            n_signals=len(signals["items"]),
        )

    return await page(request, build)


__all__ = ["overview_data", "router", "runs_data"]
