"""The acting pages: key login, Accounts (pause and resume) and Backtests (start, follow,
compare). Every form carries the CSRF token (`conclave.dashboard.web.form`) and answers with
a redirect (post, redirect, get), so a reload never repeats an action; what the API refuses
(an admin action with a read key: 403) is shown as its message.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from conclave.dashboard.client import ApiFailedError, ApiRefusedError
from conclave.dashboard.web import (
    KEY_COOKIE,
    PREFIX,
    api,
    fingerprint,
    form,
    key_of,
    page,
    render,
    safe_next,
    set_cookie,
)

router = APIRouter()
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_JOB = re.compile(r"^[0-9a-f]{32}$")
ANALYSIS = (
    "market-structure",
    "order-flow",
    "momentum",
    "volatility-regime",
    "news-sentiment",
    "multi-timeframe",
    "pattern-recognition",
    "statistical-edge",
)
DIRECTIONAL = tuple(a for a in ANALYSIS if a != "volatility-regime")


@router.get(PREFIX + "/login")
async def login_form(request: Request) -> Response:
    """Ask for an API key."""
    return render(request, "login.html", next=safe_next(request.query_params.get("next")))


@router.post(PREFIX + "/login")
async def login(request: Request) -> Response:
    """Check the key against the API (a read), then keep it in the HttpOnly cookie."""

    async def build(req: Request) -> Response:
        fields = await form(req)
        key, target = fields.get("key", "").strip(), safe_next(fields.get("next"))
        try:
            await api(req).get("/pipeline/runs", key or None, limit=1)
        except ApiRefusedError as exc:
            return render(req, "login.html", 401, next=target, error=str(exc))
        response = RedirectResponse(target, status_code=303)
        set_cookie(req, response, KEY_COOKIE, key)
        return response

    return await page(request, build)


@router.post(PREFIX + "/logout")
async def logout(request: Request) -> Response:
    """Forget the key."""

    async def build(req: Request) -> Response:
        await form(req)
        response = RedirectResponse(PREFIX + "/login", status_code=303)
        response.delete_cookie(KEY_COOKIE, path=PREFIX)
        return response

    return await page(request, build)


@router.get(PREFIX + "/accounts")
async def accounts(request: Request) -> Response:
    """Every paper account's summary."""

    async def build(req: Request) -> Response:
        found = await api(req).get("/accounts", key_of(req))
        return render(req, "accounts.html", accounts=found["items"])

    return await page(request, build)


@router.get(PREFIX + "/accounts/{account_id}")
async def account(request: Request, account_id: str) -> Response:
    """One account: equity, drawdown against its limits, positions, orders, events."""

    async def build(req: Request) -> Response:
        if not _ID.match(account_id):
            return render(req, "error.html", 404, title="No such account", error="bad id")
        found = await api(req).get(f"/accounts/{account_id}", key_of(req))
        runs = await api(req).get("/pipeline/runs", key_of(req), accountId=account_id, limit=10)
        curve = await api(req).get(f"/accounts/{account_id}/equity", key_of(req))
        return render(
            req,
            "account.html",
            a=found,
            curve=curve,
            runs=runs["items"],
            notice=req.query_params.get("notice"),
        )

    return await page(request, build)


@router.post(PREFIX + "/accounts/{account_id}/{action}")
async def pause_or_resume(request: Request, account_id: str, action: str) -> Response:
    """Pause or resume with a reason (the API needs an admin key)."""

    async def build(req: Request) -> Response:
        fields = await form(req)
        if not _ID.match(account_id) or action not in ("pause", "resume"):
            return render(req, "error.html", 404, title="Not found", error="no such action")
        path = f"/accounts/{account_id}/{action}"
        await api(req).post(path, key_of(req), {"reason": fields.get("reason", "").strip()})
        done = "paused" if action == "pause" else "resumed"
        return RedirectResponse(f"{PREFIX}/accounts/{account_id}?notice={done}", 303)

    return await page(request, build)


@router.get(PREFIX + "/backtests")
async def backtests(request: Request) -> Response:
    """The start form and the jobs kept by the orchestrator."""

    async def build(req: Request) -> Response:
        jobs = await api(req).get("/backtests", key_of(req))
        return render(
            req,
            "backtests.html",
            jobs=jobs["items"],
            analysis=ANALYSIS,
            directional=DIRECTIONAL,
            error=None,
            values={},
        )

    return await page(request, build)


def _body(fields: dict[str, str], chosen: list[str]) -> dict[str, Any]:
    """The ``POST /backtests`` body from the form (the API validates every field)."""
    body: dict[str, Any] = {
        "symbol": fields.get("symbol", "").strip().upper(),
        "timeframe": fields.get("timeframe", "").strip(),
        "agents": chosen,
    }
    for name, kind in (("bars", int), ("balance", float)):
        if fields.get(name, "").strip():
            try:
                body[name] = kind(fields[name])
            except ValueError:
                body[name] = fields[name]  # the API names the field
    if fields.get("source", "").strip():
        body["source"] = fields["source"].strip()
    end = fields.get("end", "").strip()
    if end:
        try:
            body["end"] = int(datetime.fromisoformat(end).replace(tzinfo=UTC).timestamp() * 1000)
        except ValueError:
            body["end"] = end
    weights = {}
    for agent in DIRECTIONAL:
        raw = fields.get(f"w_{agent}", "").strip()
        if raw:
            try:
                weights[agent] = float(raw)
            except ValueError:
                weights[agent] = raw  # type: ignore[assignment]
    body["weights"] = weights
    return body


@router.post(PREFIX + "/backtests")
async def start_backtest(request: Request) -> Response:
    """Start a backtest job and go to its page."""

    async def build(req: Request) -> Response:
        raw = (await req.body()).decode("utf-8", "replace")
        fields = await form(req)
        from urllib.parse import parse_qs

        chosen = [a for a in parse_qs(raw).get("agents", []) if a in ANALYSIS]
        try:
            job = await api(req).post("/backtests", key_of(req), _body(fields, chosen))
        except ApiFailedError as exc:
            jobs = await api(req).get("/backtests", key_of(req))
            message = f"{exc.field}: {exc}" if exc.field else str(exc)
            return render(
                req,
                "backtests.html",
                422,
                jobs=jobs["items"],
                analysis=ANALYSIS,
                directional=DIRECTIONAL,
                error=message,
                values=fields,
            )
        return RedirectResponse(f"{PREFIX}/backtests/{job['id']}", status_code=303)

    return await page(request, build)


async def job_of(req: Request, job_id: str) -> dict[str, Any] | None:
    """Backtest job ``job_id``, or None when the orchestrator does not keep it."""
    if not _JOB.match(job_id):
        return None
    try:
        found: dict[str, Any] = await api(req).get(f"/backtests/{job_id}", key_of(req))
    except ApiFailedError as exc:
        if exc.status == 404:
            return None
        raise
    return found


@router.get(PREFIX + "/backtests/compare")
async def compare(request: Request) -> Response:
    """Chosen jobs side by side: settings and figures."""

    async def build(req: Request) -> Response:
        ids = [i for i in req.query_params.getlist("id") if _JOB.match(i)][:6]
        jobs = [j for j in [await job_of(req, i) for i in ids] if j is not None]
        return render(req, "compare.html", jobs=jobs)

    return await page(request, build)


@router.get(PREFIX + "/backtests/{job_id}")
async def backtest(request: Request, job_id: str) -> Response:
    """One job: its progress until done, then its report."""

    async def build(req: Request) -> Response:
        job = await job_of(req, job_id)
        if job is None:
            return render(
                req,
                "error.html",
                404,
                title="No such backtest",
                error="the orchestrator keeps recent jobs only, and none after a restart",
            )
        return render(req, "backtest.html", job=job, digest=job_digest(job))

    return await page(request, build)


def job_digest(job: dict[str, Any]) -> str:
    """The fingerprint of what a job's progress bar shows."""
    return fingerprint([job.get("status"), job.get("phase"), job.get("progress"), job.get("error")])


__all__ = ["job_digest", "job_of", "router"]
