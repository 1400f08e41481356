"""The orchestrator's backtest routes: start one as a background job, follow it, read it.

- ``POST /backtests`` ``{"symbol", "timeframe", "source"?, "bars"?, "end"?, "agents"?,
  "weights"?, "balance"?, "fee"?, "slippage"?}`` -> 202 with the job (``id``, ``status``
  ``queued``) and a ``Location``; the range is the ``bars`` closed bars ending at ``end``
  (ms UTC, default now). Admin scope: it spends the server's CPU.
- ``GET /backtests`` -> ``{"items": [...]}``, newest first, without the reports.
- ``GET /backtests/{id}`` -> the job: status, phase, progress in [0, 1], and once ``done``
  its report (the ``conclave backtest --json`` summary: performance with buy-and-hold,
  per-agent skill and calibration buckets, the agents' correlation matrix) and the per-bar
  series to draw; 404 once it is no longer kept.

Every rule of the body is in its schema (allowlisted symbol, timeframe and source, known
agents, bounded numbers), so a valid body is always accepted; what the data decides (no bar
in the range, every weight 0) ends the job ``failed`` with the reason. Jobs live in the
process (`conclave.services.backtest_jobs`).
"""

# no `from __future__ import annotations`: the routes' annotations name local objects
# (the allowlists of the settings), which FastAPI and pydantic must see evaluated

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, FastAPI, Path, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response

from conclave.services.backtest_jobs import BacktestJobs
from conclave.services.http_common import ApiError, json_response
from conclave.services.json_body import read_json
from conclave.services.openapi_docs import (
    BODY_ERRORS,
    KEY_ERRORS,
    error_responses,
    link,
    path_ref,
    request_body,
)
from conclave.settings import Settings

JOB_ID_PATTERN = r"^[0-9a-f]{32}$"


class JobBrief(BaseModel):
    """A backtest job without its report."""

    model_config = ConfigDict(populate_by_name=True)

    id: str
    status: str = Field(description="queued, running, done, failed or cancelled")
    phase: str
    progress: float = Field(ge=0, le=1)
    request: dict[str, Any]
    created_at: int = Field(alias="createdAt", description="ms UTC")
    finished_at: int | None = Field(alias="finishedAt")
    error: str | None
    total_return: float | None = Field(alias="totalReturn")
    buy_and_hold_return: float | None = Field(alias="buyAndHoldReturn")
    max_drawdown: float | None = Field(alias="maxDrawdown")
    trades: int | None


class JobReport(JobBrief):
    """A backtest job with, once done, its summary and per-bar series."""

    summary: dict[str, Any] | None
    series: dict[str, Any] | None


class JobList(BaseModel):
    """Kept jobs, newest first."""

    items: list[JobBrief]


def request_model(settings: Settings) -> type[BaseModel]:
    """The ``POST /backtests`` body for this deployment's allowlists."""
    from conclave.pipeline.decision import ANALYSIS_AGENTS, DIRECTIONAL_AGENTS

    sources = tuple(dict.fromkeys((settings.market.source, "sim")))
    # allowlists as Literal types, so the schema lists them (enum) and strict JSON checks them
    symbol_t: Any = Literal[settings.market.symbols]
    timeframe_t: Any = Literal[settings.market.timeframes]
    source_t: Any = Literal[sources]
    agent_t: Any = Literal[ANALYSIS_AGENTS]
    directional_t: Any = Literal[DIRECTIONAL_AGENTS]

    class BacktestRequest(BaseModel):
        """One backtest: market, source, range (bars ending at ``end``), agents, weights."""

        model_config = ConfigDict(extra="forbid", frozen=True)

        symbol: symbol_t
        timeframe: timeframe_t
        source: source_t = sources[0]
        bars: int = Field(500, ge=50, le=5000, description="Closed bars in the range.")
        end: int | None = Field(None, ge=0, le=2**45, description="Range end, ms UTC.")
        agents: list[agent_t] = Field(
            default_factory=lambda: list(ANALYSIS_AGENTS),
            min_length=1,
            max_length=8,
            json_schema_extra={"uniqueItems": True},
            description="Analysis agents to run; the risk manager always runs.",
        )
        weights: dict[directional_t, float] = Field(
            default_factory=dict, description="Decision weights, 0 to 10 (default 1 or 0.5)."
        )
        balance: float = Field(10_000.0, ge=1, le=1e12, allow_inf_nan=False)
        fee: float = Field(0.001, ge=0, lt=0.1, allow_inf_nan=False)
        slippage: float = Field(0.0005, ge=0, lt=0.1, allow_inf_nan=False)

        @field_validator("agents")
        @classmethod
        def _each_once(cls, value: list[str]) -> list[str]:
            if len(set(value)) != len(value):
                raise ValueError("name each agent once")
            return value

        @field_validator("weights")
        @classmethod
        def _bounded(cls, value: dict[str, float]) -> dict[str, float]:
            for name, w in value.items():
                if not 0 <= w <= 10:
                    raise ValueError(f"the weight of {name} must be 0 to 10")
            return value

    return BacktestRequest


def _whole(value: Any) -> Any:
    """``value`` with integral floats as ints: JSON has one number type, 300.0 is 300."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole(v) for v in value]
    return value


def _weight_bounds(schema: dict[str, Any]) -> dict[str, Any]:
    weights = schema.get("properties", {}).get("weights", {})
    if isinstance(weights.get("additionalProperties"), dict):
        weights["additionalProperties"].update({"minimum": 0, "maximum": 10})
    return schema


def backtest_router(settings: Settings, now_ms: Callable[[], int]) -> APIRouter:
    """The backtest routes; the jobs live (and stop) with the app's lifespan."""
    model = request_model(settings)
    jobs = BacktestJobs(settings, now_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await jobs.aclose()

    router = APIRouter(tags=["backtests"], lifespan=lifespan)
    one = "/backtests/{job_id}"
    links = {"GetBacktest": link(path_ref(one, "get"), job_id="$response.body#/id")}

    @router.post(
        "/backtests",
        status_code=202,
        summary="Start a backtest as a background job",
        openapi_extra=request_body(_weight_bounds(model.model_json_schema())),
        responses={
            202: {"model": JobBrief, "links": links},
            **error_responses(*BODY_ERRORS, *KEY_ERRORS),
        },
    )
    async def start(request: Request) -> Response:
        """Queue the backtest; follow it at ``GET /backtests/{id}``."""
        from fastapi.exceptions import RequestValidationError
        from pydantic import ValidationError

        data = await read_json(request)  # 415, 400 (malformed, a duplicate key) as everywhere
        try:  # strict JSON: no "5" for 5
            body = model.model_validate_json(orjson.dumps(_whole(data)), strict=True)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_input=False)]
            ) from None
        job = jobs.submit(body.model_dump())
        return json_response(job.brief(), 202, {"Location": f"/backtests/{job.id}"})

    @router.get(
        "/backtests",
        summary="The backtest jobs kept in this process, newest first",
        responses={200: {"model": JobList}, **error_responses(*KEY_ERRORS)},
    )
    async def list_jobs() -> Response:
        """Every kept job without its report."""
        return json_response({"items": [j.brief() for j in jobs.items()]})

    @router.get(
        one,
        summary="One backtest job, with its report once done",
        responses={
            200: {"model": JobReport},
            **error_responses(404, 422, *KEY_ERRORS, e404="no such job (kept)"),
        },
    )
    async def get_job(
        job_id: Annotated[str, Path(pattern=JOB_ID_PATTERN, description="32 hex digits")],
    ) -> Response:
        """Status, progress and, once done, the report."""
        job = jobs.get(job_id)
        if job is None:
            raise ApiError(404, "not_found", "no backtest job with this id", field="job_id")
        return json_response(job.full())

    return router


__all__ = ["JobBrief", "JobList", "JobReport", "backtest_router", "request_model"]
