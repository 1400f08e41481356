"""The orchestrator's HTTP API (port 4000): run the pipeline, read runs back, see the agents.

Endpoints (ARCHITECTURE.md, "Orchestrator"):

- ``POST /pipeline/run`` ``{"accountId"?, "symbol", "timeframe", "useHttpAgents"?}``: one
  run as of now, stored (run, steps and decision in one transaction), answered 201 with the
  run's wire form. Symbol and timeframe are checked against their pattern and allowlist
  before any I/O (E4). An ``Idempotency-Key`` header makes retries safe (G1-G3): the same
  key and body answer the stored run (200, ``Idempotent-Replayed: true``) without running
  again; the same key with another body is 422; the same key while its run is still going
  is 409, and so is a key whose request was cut short by a crash (``abandoned``, never run
  again, G4). An ``accountId`` must name a paper account (404). With only ``accountId`` (the
  seed's request) each of the account's markets runs: 201 ``{"accountId", "runs"}``
  (`conclave.services.account_runs`).
- ``GET /pipeline/runs?accountId&symbol&status&limit&offset``: one page, newest first,
  ``{"items", "total", "limit", "offset"}``.
- ``GET /pipeline/runs/{id}``: one run, or 404.
- ``GET /agents``: each agent's mode, URL, port, role, status, health-check latency and,
  over HTTP, its circuit breaker (state, next probe time) (the agents of the app's
  `Registry`, default `conclave.agents.REGISTRY`).
- ``GET /health/live``, ``GET /health/ready``, ``GET /health``: the probes and the
  per-component report (`conclave.services.health`); ``/health`` is 503 when the database
  cannot be reached (runs could not be recorded).

Every error is ``{"error": {"code", "message", "field"?}}`` (`conclave.services.http_common`):
bad input 4xx naming the field, bodies over ``api.max_body_bytes`` 413 (E3), the database
unreachable 503 with ``Retry-After``, never a traceback, hostname or SQL (E11).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import structlog
from fastapi import FastAPI, Header, Path, Query, Request
from starlette.responses import Response

from conclave.agents import REGISTRY
from conclave.agents.registry import Registry
from conclave.errors import StoreRejectedError, StoreUnavailableError
from conclave.market.sources import CandleSource
from conclave.observability.tracing import fastapi_options
from conclave.pipeline.wire import ACCOUNT_ID_PATTERN
from conclave.services import account_runs
from conclave.services.accounts_api import router as accounts_router
from conclave.services.admission import install_admission
from conclave.services.backtest_api import backtest_router
from conclave.services.edge_auth import agent_urls, install_edge
from conclave.services.equity_api import router as equity_router
from conclave.services.health import install_health
from conclave.services.http_common import (
    ApiError,
    error_response,
    install_http_common,
    json_response,
)
from conclave.services.json_body import read_json
from conclave.services.market_api import market_router
from conclave.services.openapi_docs import (
    BODY_ERRORS,
    KEY_ERRORS,
    AgentState,
    Run,
    RunPage,
    error_responses,
    link,
    path_ref,
    request_body,
    run_answers,
    run_request_forms,
)
from conclave.services.run_request import (
    IDEMPOTENCY_KEY_PATTERN,
    check_idempotency_key,
    request_hash,
    run_request_model,
    validate_run_request,
)
from conclave.services.runtime import RunStoreLike, Runtime
from conclave.services.scheduler_api import install_scheduler_api
from conclave.settings import SYMBOL_PATTERN, Settings, check_agent_settings

log = structlog.get_logger(__name__)

RUN_ID_PATTERN = r"^[0-9a-f]{32}$"
#: Seconds a client should wait before retrying after a 503.
RETRY_AFTER_S = 5


def _unavailable(message: str) -> ApiError:
    err = ApiError(503, "unavailable", message)
    err.headers = {"Retry-After": str(RETRY_AFTER_S)}
    return err


def store_errors() -> tuple[type[Exception], ...]:
    """Exceptions that mean the database cannot be used now (answered 503, not 500).

    The store translates driver errors into `StoreUnavailableError`; the raw SQLAlchemy
    ones are listed too so that nothing it misses can turn into a 500.
    """
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.exc import TimeoutError as PoolTimeoutError

    return (StoreUnavailableError, DBAPIError, PoolTimeoutError, ConnectionError)


async def _on_store_rejected(request: Request, exc: Exception) -> Response:
    # e.g. the run's idempotency key was closed as abandoned while it still ran (G4)
    log.warning("store_rejected", path=request.url.path, error=str(exc))
    return error_response(409, "store_rejected", "the run could not be recorded: " + str(exc))


async def _on_store_error(request: Request, exc: Exception) -> Response:
    # the cause (SQL, host names) goes to the log only (E11)
    log.warning("store_unavailable", path=request.url.path, error=type(exc).__name__)
    return error_response(
        503,
        "unavailable",
        "the run store is unavailable; retry later",
        None,
        {"Retry-After": str(RETRY_AFTER_S)},
    )


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


_ERRORS = error_responses(422, *KEY_ERRORS, 503)


def create_app(
    settings: Settings,
    *,
    registry: Registry = REGISTRY,
    now_ms: Callable[[], int] | None = None,
    source: CandleSource | None = None,
    store: RunStoreLike | None = None,
) -> FastAPI:
    """The orchestrator app for ``settings`` and the agents of ``registry``; the lifespan
    opens and closes its `Runtime`. `ConfigurationError` if the settings name an agent the
    registry does not know.

    ``now_ms`` is the wall clock (ms UTC; default: the system clock); ``source`` and
    ``store`` replace the configured ones (tests wrap or fake them).
    """
    check_agent_settings(settings, registry)
    clock = now_ms if now_ms is not None else _wall_clock_ms
    run_request = run_request_model(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await Runtime.open(
            settings, now_ms=clock, registry=registry, source=source, store=store
        )
        app.state.runtime = runtime
        try:
            await edge.start(runtime.store)  # refuses an unsafe start (E10)
            log.info(
                "orchestrator_started",
                mode=runtime.deployment_mode(),
                source=runtime.gateway.source.name,
            )
            yield
        finally:
            await edge.aclose()
            await runtime.aclose()

    app = FastAPI(
        title="Conclave orchestrator",
        version="1.0.0",
        description="Runs the agents, combines them into one decision and records it.",
        lifespan=lifespan,
        **fastapi_options(),  # FastAPI's own telemetry off: TraceMiddleware traces
    )
    # admission (F2) inside the key check and per-key limit: only admitted callers take slots
    install_admission(app, settings)
    # API keys, rate limits, CORS (issue 12): inside the common layers, so they count 401s
    edge = install_edge(app, settings, agent_urls=agent_urls(settings, registry), now_ms=clock)
    install_http_common(
        app,
        max_body_bytes=settings.api.max_body_bytes,
        service="orchestrator",
        metrics=settings.metrics.enabled,
        body_timeout_s=settings.api.body_timeout_s,
    )
    for exc_type in store_errors():
        app.add_exception_handler(exc_type, _on_store_error)
    app.add_exception_handler(StoreRejectedError, _on_store_rejected)
    app.include_router(accounts_router)
    app.include_router(market_router(settings))  # the dashboard's Market page
    app.include_router(backtest_router(settings, clock))  # backtests as background jobs
    app.include_router(equity_router)  # an account's equity curve
    scheduler_health = install_scheduler_api(app, settings, clock)

    schema = run_request_forms(run_request.model_json_schema(by_alias=True))
    runs = account_runs.AccountRuns.model_json_schema(by_alias=True)
    to_run = {"GetRun": link(path_ref("/pipeline/runs/{run_id}", "get"),
                             run_id="$response.body#/runId")}  # fmt: skip

    @app.post(
        "/pipeline/run",
        status_code=201,
        summary="Run the pipeline once (or once per market of an account) and record it",
        responses={
            200: run_answers(runs, "an idempotent replay of the stored answer"),
            201: run_answers(runs, "the run, or the account's runs") | {"links": to_run},
            **error_responses(
                404,
                409,
                e404="accountId names no account",
                e409="same Idempotency-Key still running or abandoned, or not recordable",
            ),
            **error_responses(
                *BODY_ERRORS,
                *KEY_ERRORS,
                503,
                e503="the run store is unavailable, or the run was shed (`overloaded`):"
                " api.max_runs_in_flight runs were running or queued, or it waited"
                " api.max_queue_wait_s for a run slot; both with Retry-After",
            ),
        },
        openapi_extra=request_body(schema),
    )
    async def run_pipeline(
        request: Request,
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                description="Makes retries of this request safe.",
                pattern=IDEMPOTENCY_KEY_PATTERN.pattern,
            ),
        ] = None,
    ) -> Response:
        """Run the agents for one symbol and timeframe as of now; store and return it. With
        only ``accountId``: a run of each of the account's markets (`account_runs`)."""
        check_idempotency_key(idempotency_key)
        body: Any = validate_run_request(run_request, await read_json(request))
        runtime = _runtime(request)
        if account_runs.account_form(body.account_id, body.symbol, body.timeframe):
            digest = request_hash(body) if idempotency_key is not None else None
            return await account_runs.run_account(
                runtime, body.account_id, use_http=body.use_http_agents, key=idempotency_key,
                digest=digest, retry_after_s=RETRY_AFTER_S,
            )  # fmt: skip
        await account_runs.check_account(runtime, body.account_id)
        return await _execute(runtime, body, idempotency_key)

    @app.get(
        "/pipeline/runs",
        summary="List recorded runs, newest first",
        responses={200: {"model": RunPage}, **_ERRORS},
    )
    async def list_runs(
        request: Request,
        account_id: Annotated[
            str | None, Query(alias="accountId", pattern=ACCOUNT_ID_PATTERN.pattern)
        ] = None,
        symbol: Annotated[str | None, Query(pattern=SYMBOL_PATTERN.pattern)] = None,
        status: Annotated[
            Literal["ok", "blocked", "failed", "no_signal"] | None,
            Query(description="The decision's status."),
        ] = None,
        timeframe: str | None = Query(  # a default: its enum is the settings'
            None,
            pattern=r"^[0-9]{1,2}[smhdwM]$",
            json_schema_extra={"enum": list(settings.market.timeframes)},
        ),
        degraded: Annotated[
            bool | None, Query(description="Only runs with (true) or without missing agents.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> Response:
        """One page of runs matching the filters, and how many match in all."""
        if timeframe is not None and timeframe not in settings.market.timeframes:
            allowed = ", ".join(settings.market.timeframes)
            raise ApiError(
                422, "not_allowed", f"timeframe must be one of: {allowed}", field="timeframe"
            )
        items, total = await _runtime(request).store.list_runs(
            account_id=account_id, symbol=symbol, status=status, timeframe=timeframe,
            degraded=degraded, limit=limit, offset=offset,
        )  # fmt: skip
        return json_response({"items": items, "total": total, "limit": limit, "offset": offset})

    @app.get(
        "/pipeline/runs/{run_id}",
        summary="One recorded run",
        responses={200: {"model": Run}, **error_responses(404, e404="no such run"), **_ERRORS},
    )
    async def get_run(
        request: Request,
        run_id: Annotated[str, Path(pattern=RUN_ID_PATTERN, description="32 hex digits")],
    ) -> Response:
        """The run with its steps and decision, exactly as recorded."""
        found = await _runtime(request).store.get_run(run_id)
        if found is None:
            raise ApiError(404, "not_found", "no run with this id", field="run_id")
        return json_response(found)

    @app.get(
        "/agents",
        summary="Each agent's mode, URL, health and latency",
        responses={200: {"model": list[AgentState]}, **_ERRORS},
    )
    async def agents(
        request: Request,
        use_http_agents: Annotated[
            bool | None,
            Query(alias="useHttpAgents", description="Check the modes a run with it would use."),
        ] = None,
    ) -> Response:
        """Health of every agent, checked in parallel with a short timeout each."""
        return json_response(await _runtime(request).agent_health(use_http_agents))

    install_health(app, scheduler_health, retry_after_s=RETRY_AFTER_S)
    return app


async def _execute(runtime: Runtime, body: Any, key: str | None) -> Response:
    """Run, store and answer, honouring the idempotency key (claimed before the run)."""
    store = runtime.store
    digest = request_hash(body) if key is not None else None
    if key is not None and digest is not None:
        claim = await store.claim_idempotency_key(key, digest)
        if claim.kind == "conflict":
            raise ApiError(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different body",
                field="Idempotency-Key",
            )
        if claim.kind == "replay" and claim.run_id is not None:
            stored = await store.get_run(claim.run_id)
            if stored is not None:
                return json_response(stored, 200, {"Idempotent-Replayed": "true"})
        if claim.kind != "new":  # abandoned (G4) or still running: 409
            raise account_runs.key_busy(claim.kind, "its run was saved")
    saved = False
    try:
        try:
            run = await runtime.run(
                body.account_id, body.symbol, body.timeframe, use_http=body.use_http_agents
            )
        except TimeoutError:
            raise _unavailable("the run passed its deadline; retry later") from None
        wire = run.to_wire()
        await store.save_run(wire, idempotency_key=key, request_hash=digest)
        saved = True
    finally:
        if key is not None and not saved:
            await _release(store, key)
    log.info(
        "run_recorded",
        run_id=run.run_id,
        symbol=run.symbol,
        timeframe=run.timeframe,
        decision=run.decision.status,
        degraded=run.degraded,
    )
    return json_response(wire, 201)


async def _release(store: RunStoreLike, key: str) -> None:
    try:
        await store.release_idempotency_key(key)
    except Exception as exc:  # the original failure matters more; the key expires anyway
        log.warning("idempotency_release_failed", error=type(exc).__name__)


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000
