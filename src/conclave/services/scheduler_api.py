"""The scheduler's API: add, list and remove jobs; the watchdog's part of ``GET /health``.

- ``POST /scheduler/jobs`` ``{"accountId"?, "symbol", "timeframe"}``: store a job (201 with
  the job), 409 when a job with its id exists (from settings or the API); symbol and
  timeframe are checked against the allowlists before any I/O.
- ``GET /scheduler/jobs``: every job (``source``: ``settings`` or ``api``) with the
  watchdog's view of it (``status``, ``lastSuccessAt``).
- ``DELETE /scheduler/jobs/{id}``: 204; 404 for an unknown job, 409 for one from settings.

`install_scheduler_api` adds the routes and answers the hook that `GET /health` calls: it
adds ``dependencies.scheduler`` and turns the report ``degraded`` when a job is stalled
(H2). Jobs run in ``conclave scheduler``, not in the API process.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError
from starlette.responses import Response

from conclave.pipeline.wire import ACCOUNT_ID_PATTERN
from conclave.scheduler.claims import JobTable, SlotClaims
from conclave.scheduler.jobs import Job
from conclave.scheduler.watchdog import Watchdog, WatchedJob
from conclave.services.execute import claims_of, settings_jobs
from conclave.services.http_common import ApiError, json_response
from conclave.services.json_body import read_json
from conclave.services.openapi_docs import (
    BODY_ERRORS,
    KEY_ERRORS,
    JobList,
    ScheduledJob,
    error_responses,
    link,
    path_ref,
    request_body,
)
from conclave.services.runtime import Runtime
from conclave.settings import SYMBOL_PATTERN, Settings
from conclave.timeframes import iso_ms

log = structlog.get_logger(__name__)

#: What `install_scheduler_api` returns: ``report = await hook(runtime, report)``.
HealthHook = Callable[[Runtime, dict[str, Any]], Awaitable[dict[str, Any]]]
JOB_ID_PATTERN = r"^[A-Za-z0-9_.:@-]{1,128}$"


def job_request_model(settings: Settings) -> type[BaseModel]:
    """The ``POST /scheduler/jobs`` body model, with this deployment's allowlists."""
    symbols, timeframes = settings.market.symbols, settings.market.timeframes

    class JobRequest(BaseModel):
        """A job: the symbol and timeframe to run at each close, for an account (optional)."""

        model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

        account_id: str | None = Field(
            None, alias="accountId", pattern=ACCOUNT_ID_PATTERN.pattern, max_length=64
        )
        symbol: str = Field(
            max_length=20, pattern=SYMBOL_PATTERN.pattern, json_schema_extra={"enum": [*symbols]}
        )
        timeframe: str = Field(max_length=8, json_schema_extra={"enum": [*timeframes]})

        @field_validator("symbol")
        @classmethod
        def _allowed_symbol(cls, value: str) -> str:
            if value not in symbols:
                raise PydanticCustomError("not_allowed", "not in the symbol allowlist")
            return value

        @field_validator("timeframe")
        @classmethod
        def _allowed_timeframe(cls, value: str) -> str:
            if value not in timeframes:
                raise PydanticCustomError("not_allowed", "not in the timeframe allowlist")
            return value

    return JobRequest


def _job_wire(job: Job, source: str, created_ms: int | None) -> dict[str, Any]:
    return {
        "id": job.id,
        "accountId": job.account_id,
        "symbol": job.symbol,
        "timeframe": job.timeframe,
        "source": source,
        "createdAt": None if created_ms is None else iso_ms(created_ms),
    }


def _tables(runtime: Runtime) -> tuple[SlotClaims, JobTable]:
    found = claims_of(runtime)
    if found is None:
        raise ApiError(503, "unavailable", "the scheduler needs the SQL run store")
    return found


def install_scheduler_api(
    app: FastAPI, settings: Settings, now_ms: Callable[[], int]
) -> HealthHook:
    """Add the ``/scheduler/jobs`` routes to ``app``; return the ``/health`` hook."""
    cfg = settings.scheduler
    started_ms = now_ms()
    configured = {job.id: job for job in settings_jobs(cfg)}
    body_model = job_request_model(settings)
    router = APIRouter(prefix="/scheduler", tags=["scheduler"])

    def runtime_of(request: Request) -> Runtime:
        runtime: Runtime = request.app.state.runtime
        return runtime

    async def watched(table: JobTable) -> list[tuple[WatchedJob, str, int | None]]:
        out: list[tuple[WatchedJob, str, int | None]] = [
            (WatchedJob(j, started_ms), "settings", None) for j in configured.values()
        ]
        for stored in await table.list():
            since = max(stored.created_ms, started_ms)
            out.append((WatchedJob(stored.job, since), "api", stored.created_ms))
        return out

    def watchdog(claims: SlotClaims) -> Watchdog:
        return Watchdog(claims, now_ms=now_ms, intervals=cfg.watchdog_intervals,
                        offset_ms=round(cfg.offset_s * 1000), started_ms=started_ms)  # fmt: skip

    links = {"RemoveJob": link(path_ref("/scheduler/jobs/{job_id}", "delete"),
                               job_id="$response.body#/id")}  # fmt: skip

    @router.post(
        "/jobs",
        status_code=201,
        summary="Schedule a job at each candle close",
        openapi_extra=request_body(body_model),
        responses={
            201: {"model": ScheduledJob, "links": links},
            **error_responses(409, e409="a job with this id exists already"),
            **error_responses(*BODY_ERRORS, *KEY_ERRORS, 503),
        },
    )
    async def add_job(request: Request) -> Response:
        """Store the job; it runs in ``conclave scheduler`` from its next slot."""
        data = await read_json(request)
        try:
            body: Any = body_model.model_validate(data)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_input=False)]
            ) from None
        job = Job(body.account_id, body.symbol, body.timeframe)
        _, table = _tables(runtime_of(request))
        created = now_ms()
        if job.id in configured or not await table.add(job, created_ms=created):
            raise ApiError(409, "job_exists", f"job {job.id} exists already", field="body")
        log.info("scheduler_job_added", job=job.id)
        return json_response(_job_wire(job, "api", created), 201)

    @router.get(
        "/jobs",
        summary="Every scheduled job and whether it makes progress",
        responses={200: {"model": JobList}, **error_responses(*KEY_ERRORS, 503)},
    )
    async def list_jobs(request: Request) -> Response:
        """Jobs from settings and the API, each with the watchdog's status."""
        claims, table = _tables(runtime_of(request))
        jobs = await watched(table)
        report = await watchdog(claims).health([w for w, _, _ in jobs])
        items = [
            _job_wire(w.job, source, created) | {k: v for k, v in entry.items() if k != "id"}
            for (w, source, created), entry in zip(jobs, report["jobs"], strict=True)
        ]
        return json_response({"items": items, "status": report["status"]})

    @router.delete(
        "/jobs/{job_id}",
        status_code=204,
        summary="Stop scheduling a job",
        responses=error_responses(
            404,
            409,
            422,
            *KEY_ERRORS,
            503,
            e404="no job with this id",
            e409="the job comes from settings: remove it there",
        ),
    )
    async def remove_job(
        request: Request, job_id: Annotated[str, Path(pattern=JOB_ID_PATTERN)]
    ) -> Response:
        """Remove a job added through the API (its recorded slots stay)."""
        if job_id in configured:
            raise ApiError(409, "configured_job", "this job comes from settings", field="job_id")
        _, table = _tables(runtime_of(request))
        if not await table.remove(job_id):
            raise ApiError(404, "not_found", "no job with this id", field="job_id")
        log.info("scheduler_job_removed", job=job_id)
        return Response(status_code=204)

    app.include_router(router)

    async def health_hook(runtime: Runtime, report: dict[str, Any]) -> dict[str, Any]:
        found = claims_of(runtime)
        if found is None or not cfg.enabled:
            return report
        claims, table = found
        try:
            section = await watchdog(claims).health([w for w, _, _ in await watched(table)])
        except Exception as exc:  # reported, never raised: /health must answer
            section = {"status": "unavailable", "error": type(exc).__name__}
        deps = {**report.get("dependencies", {}), "scheduler": section}
        status = report.get("status", "ok")
        if section["status"] != "ok":
            status = "degraded"
        return {**report, "status": status, "dependencies": deps}

    return health_hook
