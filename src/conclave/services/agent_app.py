"""One FastAPI app factory serves any agent of a registry (ARCHITECTURE.md, wire contract).

``GET /health`` (with ``/health/live`` and ``/health/ready``) and ``GET /info`` describe the
service (`conclave.services.agent_health`); ``POST /run`` takes a context (see
`conclave.pipeline.wire`) and answers exactly the agent's ``AgentResult.to_wire()``:

- data inline: used as of ``asOf`` (`as_of_input`), checked as the gateway checks what it
  fetches: a bad row is 422 naming it (`conclave.pipeline.wire`), bars not closed at
  ``asOf`` and headlines published after it are left out, stale data is ``stale_data``,
  and no bar closed by ``asOf`` is ``insufficient_data``. The orchestrator's `HttpRunner`
  sends closed, fresh bars as of the run, so for it nothing is left out;
- ids only: the service reads the data through its own `MarketGateway` (the configured
  source, behind the shared Redis cache when ``REDIS_URL`` is set), planned and assembled
  exactly as the in-process `Pipeline` does: news when a source is configured
  (``CONCLAVE_NEWS__SOURCE``),
  a fresh account when none is named, an unreadable one when one is named (no account
  store yet). ``asOf`` defaults to now, read at the edge of the app.

``POST /run`` is answered by `conclave.services.agent_route.RunRoute`, a pure ASGI route in
front of FastAPI's router, inside the app's own middleware (`AgentApp`), with the same
rules and error shapes (FastAPI still documents it and serves everything else).

The agent is looked up in the factory's `Registry` (default `conclave.agents.REGISTRY`),
whose other agents still shape the data an ids-only context resolves to (the longest
lookback of them all), so the service sees exactly what the orchestrator would send.

Symbol and timeframe are checked (pattern, then the allowlists for ids-only contexts)
before any I/O. Data that cannot give a signal (stale, source down) is answered 200 with
``meta.status`` ``stale_data`` or ``error`` and the reason, like any other failed step; an
agent with no input to speak from (news-sentiment without a news source) answers
``no_data`` with its reason.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import structlog
from fastapi import FastAPI, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from conclave.agents import REGISTRY, Agent, AgentInput, AgentResult, Status
from conclave.agents.plain import wire_answer
from conclave.agents.registry import Registry
from conclave.errors import (
    AgentError,
    ExchangeRejectedError,
    InvalidRequestError,
    RetryLaterError,
    SkipStepError,
    StaleDataError,
)
from conclave.market.cache import make_cache
from conclave.market.candles import Candles
from conclave.market.gateway import MarketGateway
from conclave.market.sources import open_source
from conclave.market.validation import check_fresh, drop_unclosed
from conclave.news.sources import open_news_source
from conclave.observability.tracing import agent_compute, fastapi_options
from conclave.pipeline.orchestrator import Pipeline
from conclave.pipeline.wire import WireContext, WireError, decode_context
from conclave.security.signing import Verifier
from conclave.services.agent_health import RunStats, install_agent_health
from conclave.services.agent_openapi import agent_run_schema
from conclave.services.agent_route import RunRoute, run_stack
from conclave.services.http_common import (
    install_http_common,
    json_response,
)
from conclave.services.json_body import read_json
from conclave.services.openapi_docs import BODY_ERRORS, AgentAnswer, error_responses, request_body
from conclave.settings import Settings, check_agent_settings
from conclave.timeframes import BINANCE_INTERVALS, Timeframe, iso_ms

log = structlog.get_logger(__name__)


def wall_clock_ms() -> int:
    """Now in ms UTC: the clock an agent service reads when none is injected."""
    return time.time_ns() // 1_000_000


def unknown_agent_message(name: str, registry: Registry) -> str:
    """``unknown agent NAME`` with the nearest name and every agent of ``registry`` listed."""
    near = registry.suggest(name)
    hint = f"; did you mean {near}?" if near else ""
    return f"unknown agent {name[:60]!r}{hint} (one of: {', '.join(registry)})"


def as_of_input(agent_input: AgentInput, min_bars: int) -> AgentInput | tuple[Status, str]:
    """An inline input as of its ``as_of_ms``, or the status and reason of no signal.

    Bars of every timeframe whose close is after ``as_of_ms`` (the open one, any later) and
    headlines published after it are left out, so the agent computes as of that instant
    (`Agent.run` then reports the close of its last bar as ``as_of``). No bar of the run's
    timeframe closed by then is ``insufficient_data`` (``min_bars`` needed); a timeframe
    whose newest closed bar is older than `validation.check_fresh` allows is ``stale_data``.
    The input comes back as it is when nothing is left out (the orchestrator's case).
    """
    as_of, tf = agent_input.as_of_ms, agent_input.timeframe
    base = _closed(agent_input.candles, as_of)
    if len(base) == 0:
        return "insufficient_data", (
            f"needs {min_bars} closed bars of {tf}, got 0: none closed by asOf {iso_ms(as_of)}"
        )
    higher = {name: _closed(c, as_of) for name, c in agent_input.higher.items()}
    try:
        for frame in (base, *higher.values()):
            check_fresh(frame, as_of)
    except StaleDataError as exc:
        return "stale_data", f"{exc.reason}: {exc}"
    news = agent_input.news
    if news is not None and any(h.published_ms > as_of for h in news):
        news = [h for h in news if h.published_ms <= as_of]
    same = (
        base is agent_input.candles
        and news is agent_input.news
        and all(higher[name] is c for name, c in agent_input.higher.items())
    )
    return agent_input if same else replace(agent_input, candles=base, higher=higher, news=news)


def _closed(candles: Candles, as_of_ms: int) -> Candles:
    """``candles`` without the bars not closed at ``as_of_ms``: the same value when its
    newest bar closed by then (decoded open times ascend, and so do the close times)."""
    newest = candles.last_open_ms
    if newest is None or candles.timeframe.close_time(newest) <= as_of_ms:
        return candles
    return drop_unclosed(candles, as_of_ms)[0]


def _failed(agent: Agent, status: Status, reason: str, now_iso: str, took_ms: float) -> Any:
    result = AgentResult(0.0, 0.0, {}, agent.name, agent.version, took_ms, now_iso, None,
                         status, reason)  # fmt: skip
    return result.to_wire()


class _Service:
    """The per-process state of one agent service, built in the app's lifespan."""

    def __init__(
        self,
        agent: Agent,
        settings: Settings,
        now_ms: Callable[[], int],
        gateway: MarketGateway | None,
    ) -> None:
        self.agent = agent
        self.settings = settings
        self.now_ms = now_ms
        self.gateway = gateway
        self.pipeline: Pipeline | None = None
        self.stats = RunStats(now_ms)  # what /health reports of the answers since start

    def _allowed(self, ctx: WireContext) -> None:
        market = self.settings.market
        if ctx.symbol not in market.symbols:
            raise WireError("symbol", f"not in the allowlist: {', '.join(market.symbols)}")
        if ctx.timeframe not in market.timeframes:
            raise WireError("timeframe", f"not in the allowlist: {', '.join(market.timeframes)}")

    async def resolve(self, ctx: WireContext) -> AgentInput | tuple[Status, str]:
        """The agent's input for an ids-only context, or why the data gives no signal."""
        self._allowed(ctx)  # before any I/O (E4)
        assert self.gateway is not None
        assert self.pipeline is not None
        now = self.now_ms()
        if ctx.as_of_ms is not None and ctx.as_of_ms > now + Timeframe.parse(ctx.timeframe).ms:
            # the data layer would have to invent the future (the sim source would try)
            raise WireError("asOf", "must not be more than one bar after now")
        as_of_ms = ctx.as_of_ms if ctx.as_of_ms is not None else now
        limit, higher = self.pipeline.plan(ctx.timeframe)
        try:
            snapshot = await self.gateway.snapshot(
                ctx.symbol,
                ctx.timeframe,
                higher=higher,
                limit=limit,
                higher_limit=self.pipeline.higher_limit(ctx.timeframe),
                as_of_ms=as_of_ms,
            )
        except (SkipStepError, RetryLaterError, ExchangeRejectedError) as exc:
            status: Status = "stale_data" if isinstance(exc, StaleDataError) else "error"
            return status, f"{exc.reason}: {exc}"
        context = await self.pipeline.context(snapshot, ctx.account_id)
        if self.agent.needs.news and context.news_error:
            return "error", context.news_error
        return context.input_for(self.agent)

    async def run(self, data: Any, *, deadline_ms: int | None = None) -> Any:
        """The wire answer to one ``/run`` body, inside the ``agent.compute`` span: a child
        of the caller's ``agent.call`` span through ``traceparent`` (no server span of its
        own), with the step's status as ``conclave.status``. Past ``deadline_ms`` (the
        caller's ``x-conclave-deadline``) no work starts: the answer is a ``timeout`` step
        (RELIABILITY C8)."""
        with agent_compute(self.agent.name) as span:
            answer = await self._run(data, deadline_ms)
            if span.is_recording():
                span.set_attribute("conclave.status", answer["meta"]["status"])
            return answer

    def _expired(self, deadline_ms: int | None, t0: float) -> Any:
        """The ``timeout`` answer when ``deadline_ms`` has passed, else None."""
        if deadline_ms is None:
            return None
        now = self.now_ms()
        if now < deadline_ms:
            return None
        reason = f"deadline_exceeded: the caller's deadline passed {now - deadline_ms} ms ago"
        took = (time.perf_counter() - t0) * 1000.0
        return wire_answer(None, None, {}, agent=self.agent.name, version=self.agent.version,
                           duration_ms=took, timestamp=iso_ms(now), as_of=None,
                           status="timeout", reason=reason)  # fmt: skip

    async def _run(self, data: Any, deadline_ms: int | None) -> Any:
        t0 = time.perf_counter()
        if (late := self._expired(deadline_ms, t0)) is not None:
            return late
        ctx = decode_context(data)
        if ctx.agent_input is None:
            resolved = await self.resolve(ctx)
        else:
            resolved = as_of_input(ctx.agent_input, self.agent.min_bars(ctx.timeframe))
        if isinstance(resolved, tuple):
            took = (time.perf_counter() - t0) * 1000.0
            return _failed(self.agent, *resolved, iso_ms(self.now_ms()), took)
        agent_input = resolved
        if (late := self._expired(deadline_ms, t0)) is not None:  # reading data took it
            return late
        now_iso = iso_ms(self.now_ms())
        try:
            return self.agent.run(agent_input, now_iso=now_iso).to_wire()
        except AgentError as exc:
            took = (time.perf_counter() - t0) * 1000.0
            return _failed(self.agent, "error", f"{exc.reason}: {exc}", now_iso, took)


class AgentApp(FastAPI):
    """An agent service's app: ``POST /run`` goes to `run_route` inside the app's own
    middleware (`agent_route.run_stack`: the edge guard, metrics, tracing and the 500
    handler, exactly as around any route), everything else to FastAPI.

    Skipping the framework's per-request layers (its exception and telemetry middleware,
    the router) keeps what each of the nine calls of a run costs the service to what the
    route needs; the stack is built at the first ``/run``, as FastAPI builds its own at the
    first request, so middleware added after the app was made wraps ``/run`` too.
    """

    run_route: ASGIApp | None = None
    _run_stack: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.run_route
        lean = scope["type"] == "http" and scope["path"] == "/run" and scope["method"] == "POST"
        if route is None or not lean:
            await super().__call__(scope, receive, send)
            return
        if self._run_stack is None:
            handler = self.exception_handlers.get(Exception) or self.exception_handlers.get(500)
            self._run_stack = run_stack(route, self.user_middleware, handler)
        scope["app"] = self
        if self.root_path:
            scope["root_path"] = self.root_path
        await self._run_stack(scope, receive, send)


def create_agent_app(
    name: str,
    settings: Settings,
    *,
    registry: Registry = REGISTRY,
    now_ms: Callable[[], int] | None = None,
    gateway: MarketGateway | None = None,
) -> AgentApp:
    """The service of agent ``name`` of ``registry``; `InvalidRequestError` (field ``name``)
    if it has none of that name, `ConfigurationError` if the settings name an unknown agent.

    ``now_ms`` is the clock (ms UTC; default the wall clock); ``gateway`` replaces the one
    the app would open from ``settings`` (the app then leaves closing it to the caller).
    """
    if name not in registry:
        raise InvalidRequestError(unknown_agent_message(name, registry), field="name")
    check_agent_settings(settings, registry)
    service = _Service(registry[name](), settings, now_ms or wall_clock_ms, gateway)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = service.gateway is None
        if service.gateway is None:
            source = open_source(settings.market.source, settings, now_ms=service.now_ms)
            cache = make_cache(settings.market.cache, settings.redis_url)
            service.gateway = MarketGateway(
                source, cache=cache, cache_ttl_s=settings.market.cache.ttl_s
            )
        news = open_news_source(settings.news.source) if settings.news.source else None
        service.pipeline = Pipeline(
            service.gateway, registry=registry, executor="inline", news_source=news
        )
        try:
            yield
        finally:
            await service.pipeline.aclose()
            if owned:
                await service.gateway.aclose()
                service.gateway = None

    app = AgentApp(
        title=f"Conclave agent: {name}",
        version=service.agent.version,
        description=service.agent.description,
        lifespan=lifespan,
        **fastapi_options(),  # FastAPI's own telemetry off: TraceMiddleware traces
    )
    secret = settings.agents.secret
    verifier = (
        Verifier([secret], max_age_s=settings.agents.signature_max_age_s)
        if secret is not None
        else None
    )
    app.run_route = RunRoute(
        service=service, verifier=verifier, log_runs=settings.log_level == "DEBUG"
    )
    install_http_common(
        app,
        max_body_bytes=settings.agents.max_body_bytes,
        service=name,
        metrics=settings.metrics.enabled,
        fixed_routes=("/run",),
        body_timeout_s=settings.agents.body_timeout_s,
        bare_routes=("/run",),  # its agent.compute span is the caller's child
    )

    install_agent_health(app, service)  # /health, /health/live, /health/ready, /info

    market = settings.market
    run_schema = agent_run_schema(market.symbols, market.timeframes, BINANCE_INTERVALS)

    @app.post(
        "/run",
        summary="Run the agent on a context (ids only, or data inline)",
        openapi_extra=request_body(run_schema),
        responses={
            200: {"model": AgentAnswer, "description": "the answer; `meta.status` says "
                  "whether it is a signal (a failed step is 200 with its reason)"},
            **error_responses(*BODY_ERRORS, 401, e401="an unsigned, stale or altered call "
                              "(when the service has CONCLAVE_AGENTS__SECRET)"),
        },
    )  # fmt: skip
    async def run(request: Request) -> Response:  # documents the route; RunRoute answers it
        return json_response(await service.run(await read_json(request)))

    return app
