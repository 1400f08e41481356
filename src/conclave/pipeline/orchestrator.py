"""One pipeline run in process: one market snapshot, the agents, the risk manager, a decision.

`Pipeline.run` fetches ONE `MarketSnapshot` per run through the gateway (each
(symbol, timeframe) once: the run's timeframe with the longest lookback any agent declares,
plus the union of the higher timeframes they need), reads news and the account when an
agent needs them, runs the analysis agents (concurrently by default, or one after another
with ``parallel=False``), then the risk manager, and combines the steps with `decide`.
Every step is recorded with its status, duration and error. The agents, their order and
their roles come from the pipeline's `Registry` (default `conclave.agents.REGISTRY`).

Data problems never escape as exceptions: stale data or a failing source turn every step
into a failed one with that reason (``stale_data`` or ``error``) and the decision into
``no_signal`` with the same reason (RELIABILITY.md B4). Bad input (symbol, timeframe) is
not a data problem and raises `InvalidRequestError` before any I/O. Bars missing from a
window are filled before the agents see it (B3, `PipelineContext.from_snapshot`); the run
names each window that had any (`PipelineRun.gaps`) and is degraded, reason ``gaps``, when
more than 1 % of a window's bars were missing.

While tracing is on (`conclave.observability.tracing`) a run is the span ``pipeline.run``
(run id, account, symbol, timeframe, mode) over ``market.fetch``, one ``agent.call <name>``
per agent (a client span over HTTP) and ``decision``; while off each costs a no-op.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Coroutine, Mapping
from typing import Any, Self

import structlog
from opentelemetry.trace import SpanKind, Status, StatusCode

from conclave.agents import REGISTRY, AccountState, Agent
from conclave.agents.registry import Registry
from conclave.errors import (
    ExchangeRejectedError,
    RetryLaterError,
    SkipStepError,
    StaleDataError,
)
from conclave.market.gateway import MarketGateway, MarketSnapshot
from conclave.news.headline import base_asset
from conclave.news.sources import NewsSource
from conclave.observability import tracing
from conclave.pipeline.context import (
    AccountReader,
    InputPlan,
    PipelineContext,
    StepResult,
    StepStatus,
    fetch_plan,
    higher_limits,
)
from conclave.pipeline.decision import Decision, DecisionConfig, decide

# PipelineRun lived here: importers of conclave.pipeline.orchestrator still find it
from conclave.pipeline.pipeline_run import PipelineRun as PipelineRun
from conclave.pipeline.pipeline_run import degrade_for_gaps
from conclave.pipeline.runners import (
    DEFAULT_EXECUTOR,
    DEFAULT_TIMEOUT_S,
    RUN_ID,
    AgentRunner,
    ExecutorKind,
    LocalRunner,
    make_executor,
)
from conclave.timeframes import Timeframe

log = structlog.get_logger(__name__)


def default_agents(registry: Registry = REGISTRY) -> dict[str, Agent]:
    """Every agent of ``registry`` (default: the nine) with its default parameters."""
    return {name: cls() for name, cls in registry.items()}


class Pipeline:
    """Runs the agents for one account, symbol and timeframe as of a point in time.

    ``registry`` names the agents, their order and roles (default: the nine); ``agents``
    maps names to agents (default: every agent of the registry, some of them for a partial
    run), ``runners`` overrides how a named agent is called (for example over HTTP); a
    name the registry does not know is a `ValueError`. Local agents compute on
    ``executor`` (see `conclave.pipeline.runners`) with ``timeout_s`` each. A run that
    names no account is assessed as a fresh account; a named account whose state cannot be
    read (no ``account_reader`` configured, or the reader fails) is not tradable.
    Close with `aclose` (or use ``async with``) to stop the executor's workers.
    """

    def __init__(
        self,
        gateway: MarketGateway,
        *,
        registry: Registry = REGISTRY,
        agents: Mapping[str, Agent] | None = None,
        runners: Mapping[str, AgentRunner] | None = None,
        news_source: NewsSource | None = None,
        account_reader: AccountReader | None = None,
        decision_config: DecisionConfig | None = None,
        parallel: bool = True,
        executor: ExecutorKind = DEFAULT_EXECUTOR,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        workers: int | None = None,
    ) -> None:
        self.gateway = gateway
        self.registry = registry
        self.agents: dict[str, Agent] = (
            dict(agents) if agents is not None else default_agents(registry)
        )
        for name, agent in self.agents.items():
            if name != agent.name:
                raise ValueError(f"agent registered as {name!r} is named {agent.name!r}")
        unknown = [n for n in [*self.agents, *(runners or {})] if n not in registry]
        if unknown:
            raise ValueError(f"agent(s) not in the registry: {', '.join(unknown)}")
        self.news_source = news_source
        self.account_reader = account_reader
        self.config = decision_config or DecisionConfig.for_registry(registry)
        self.config.check(registry)
        self.parallel = parallel
        self.executor_kind = executor
        self._executor = make_executor(executor, workers=workers)
        self.runners: dict[str, AgentRunner] = {
            name: LocalRunner(agent, timeout_s=timeout_s, executor=self._executor)
            for name, agent in self.agents.items()
        }
        self.runners.update(runners or {})
        self._plans: dict[tuple[str, str], InputPlan] = {}
        modes = {n: str(getattr(r, "mode", "local")) for n, r in self.runners.items()}
        self._modes = modes
        self.mode = next(iter(set(modes.values()))) if len(set(modes.values())) == 1 else "mixed"
        self._call_spans = {n: f"agent.call {n}" for n in self.runners}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the executor's workers (a hung agent's thread is not waited for)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def _plan(self, name: str, timeframe: str) -> InputPlan:
        key = (name, timeframe)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = InputPlan.of(self.agents[name], timeframe)
        return plan

    def plan(self, timeframe: str) -> tuple[int, tuple[str, ...]]:
        """Bars of ``timeframe`` to fetch (the longest lookback) and the higher timeframes."""
        return fetch_plan(self.agents.values(), timeframe)

    def higher_limit(self, timeframe: str) -> dict[str, int] | None:
        """Bars of each higher timeframe to fetch (`conclave.pipeline.context.higher_limits`)."""
        return higher_limits([self._plan(name, timeframe) for name in self.agents])

    async def context(self, snapshot: MarketSnapshot, account_id: str | None) -> PipelineContext:
        """The run's context over ``snapshot``: news and account read when an agent needs them."""
        news, news_error = None, ""
        needs_news = any(a.needs.news for a in self.agents.values())
        if needs_news and self.news_source is not None:
            try:
                news = await asyncio.to_thread(
                    self.news_source.headlines, base_asset(snapshot.symbol), snapshot.as_of_ms
                )
            except Exception as exc:  # a failing news source fails the news step only
                news_error = f"news_source: {type(exc).__name__}: {exc}"
        account = AccountState.fresh()
        if account_id is not None and self.account_reader is None:
            account = AccountState.unreadable(account_id, "no account store is configured")
        elif account_id is not None and self.account_reader is not None:
            try:
                account = await self.account_reader.read(account_id, as_of_ms=snapshot.as_of_ms)
            except Exception as exc:  # unreadable: the risk manager halts trading
                account = AccountState.unreadable(account_id, f"{type(exc).__name__}: {exc}")
        return PipelineContext.from_snapshot(
            snapshot, account_id=account_id, news=news, news_error=news_error, account=account
        )

    async def _step(self, name: str, context: PipelineContext, now_iso: str) -> StepResult:
        mode = self._modes[name]
        kind = SpanKind.CLIENT if mode == "http" else SpanKind.INTERNAL
        with tracing.span(self._call_spans[name], kind) as span:
            t0 = time.perf_counter()
            try:
                got = self._call(name, context, now_iso)
                step = got if isinstance(got, StepResult) else await got
            except Exception as exc:  # a runner breaking its protocol must not crash the run
                took = (time.perf_counter() - t0) * 1000.0
                reason = f"runner: {type(exc).__name__}: {exc}"
                step = StepResult.failed(name, "error", reason, duration_ms=took,
                                         timestamp=now_iso)  # fmt: skip
            if span.is_recording():
                _record_step(span, name, mode, step)
            return step

    def _call(
        self, name: str, context: PipelineContext, now_iso: str
    ) -> StepResult | Coroutine[Any, Any, StepResult]:
        """The step itself when it is known at once (news failed, an inline local agent:
        no coroutine for a synchronous step), else the runner's call to await."""
        agent = self.agents.get(name)
        if agent is not None and agent.needs.news and context.news_error:
            return StepResult.failed(name, "error", context.news_error, timestamp=now_iso)
        if agent is None:
            raise LookupError(f"no local agent {name!r} to build its input")
        agent_input = context.input(self._plan(name, context.timeframe))
        runner = self.runners[name]
        if type(runner) is LocalRunner and runner.executor is None:
            return runner.run_inline(agent_input, now_iso=now_iso)
        return runner.run(agent_input, now_iso=now_iso)

    async def run_steps(self, context: PipelineContext, *, now_iso: str) -> dict[str, StepResult]:
        """Every agent's step: the analysis agents (concurrently unless ``parallel`` is
        false), then the risk manager; keyed in registry order."""
        risk = self.registry.risk
        analysis = [n for n in self.runners if n != risk]
        # gathering only helps runners that can overlap (HTTP, a pool); inline agents are
        # synchronous, and tasks for them would be pure overhead
        if self.parallel and not all(self._inline(self.runners[n]) for n in analysis):
            results = await asyncio.gather(*(self._step(n, context, now_iso) for n in analysis))
        else:
            results = [await self._step(n, context, now_iso) for n in analysis]
        steps = dict(zip(analysis, results, strict=True))
        if risk in self.runners:
            steps[risk] = await self._step(risk, context, now_iso)
        order = {n: i for i, n in enumerate(self.registry)}
        return dict(sorted(steps.items(), key=lambda kv: order.get(kv[0], len(order))))

    @staticmethod
    def _log_failed(steps: Mapping[str, StepResult]) -> None:
        """One line per failed step: error for ``error``/``timeout``, warning for stale or
        insufficient data, info for ``no_data`` (an agent with nothing to speak from)."""
        for name, step in steps.items():
            if step.status != "ok":
                level = log.error if step.status in ("error", "timeout") else log.warning
                level = log.info if step.status == "no_data" else level
                level("step_failed", agent=name, status=step.status, reason=step.error[:300],
                      duration_ms=round(step.duration_ms, 3))  # fmt: skip

    @staticmethod
    def _inline(runner: object) -> bool:
        return isinstance(runner, LocalRunner) and runner.executor is None

    def _all_failed(self, status: StepStatus, reason: str, now_iso: str) -> dict[str, StepResult]:
        return {n: StepResult.failed(n, status, reason, timestamp=now_iso) for n in self.runners}

    async def run(
        self,
        account_id: str | None,
        symbol: str,
        timeframe: str,
        *,
        as_of_ms: int,
        now_iso: str,
    ) -> PipelineRun:
        """One run as of ``as_of_ms`` (ms UTC); ``now_iso`` stamps the steps.

        Raises `InvalidRequestError` for a bad symbol or timeframe (before any I/O); data
        problems end in a ``no_signal`` decision instead.
        """
        run_id = uuid.uuid4().hex
        token = RUN_ID.set(run_id)  # HttpRunner names the run to the agent services
        try:
            # every line logged during the run (runners, gateway, breakers) carries its id
            with (
                tracing.span("pipeline.run") as span,
                structlog.contextvars.bound_contextvars(run_id=run_id),
            ):
                if span.is_recording():
                    span.set_attributes({"conclave.run_id": run_id, "conclave.symbol": symbol[:32],
                                         "conclave.timeframe": timeframe[:8],
                                         "conclave.mode": self.mode})  # fmt: skip
                    if account_id is not None:
                        span.set_attribute("conclave.account_id", account_id[:64])
                run = await self._run(run_id, account_id, symbol, timeframe, as_of_ms, now_iso)
                if run.degraded:
                    missing = list(run.missing_agents)
                    gaps = [r.describe() for r in run.gaps.values() if r.degraded]
                    log.warning("run_degraded", decision=run.decision.status, missing=missing,
                                gaps=gaps)  # fmt: skip
                return run
        finally:
            RUN_ID.reset(token)

    async def _run(
        self,
        run_id: str,
        account_id: str | None,
        symbol: str,
        timeframe: str,
        as_of_ms: int,
        now_iso: str,
    ) -> PipelineRun:
        t0 = time.perf_counter()
        tf = Timeframe.parse(timeframe).name
        limit, higher = self.plan(tf)
        source = self.gateway.source
        try:
            with tracing.span("market.fetch") as span:
                if span.is_recording():
                    span.set_attributes({"conclave.source": source.name, "conclave.limit": limit,
                                         "conclave.higher_timeframes": list(higher)})  # fmt: skip
                snapshot = await self.gateway.snapshot(
                    symbol,
                    tf,
                    higher=higher,
                    limit=limit,
                    higher_limit=self.higher_limit(tf),
                    as_of_ms=as_of_ms,
                )
        except (SkipStepError, RetryLaterError, ExchangeRejectedError) as exc:
            status: StepStatus = "stale_data" if isinstance(exc, StaleDataError) else "error"
            reason = f"{exc.reason}: {exc}"
            level = log.warning if status == "stale_data" else log.error
            level("snapshot_failed", symbol=symbol, timeframe=tf, status=status, reason=reason,
                  agents=len(self.runners))  # fmt: skip
            steps = self._all_failed(status, reason, now_iso)
            decision = Decision.no_signal(reason, self.registry.names, quorum=self.config.quorum)
            return PipelineRun(
                run_id, account_id, symbol, tf, as_of_ms, source.simulated, source.name, steps,
                decision, (time.perf_counter() - t0) * 1000.0, now_iso,
            )  # fmt: skip
        context = await self.context(snapshot, account_id)
        gaps = context.filled
        if gaps:
            log.info("gaps_filled", symbol=symbol, timeframe=tf,
                     windows=[r.describe() for r in gaps.values()])  # fmt: skip
        steps = await self.run_steps(context, now_iso=now_iso)
        self._log_failed(steps)
        with tracing.span("decision") as span:
            decision = degrade_for_gaps(decide(steps, self.config, self.registry), gaps)
            if span.is_recording():
                span.set_attributes({"conclave.decision.status": decision.status,
                                     "conclave.decision.degraded": decision.degraded})  # fmt: skip
        return PipelineRun(
            run_id, account_id, symbol, tf, as_of_ms, snapshot.simulated, snapshot.source,
            steps, decision, (time.perf_counter() - t0) * 1000.0, now_iso, gaps,
        )  # fmt: skip


def _record_step(span: Any, name: str, mode: str, step: StepResult) -> None:
    """The ``agent.call`` span's attributes: the agent, its mode, the step's status and the
    code of its reason (the text before the first colon, never the message)."""
    span.set_attributes({"conclave.agent": name, "conclave.agent.mode": mode,
                         "conclave.step.status": step.status})  # fmt: skip
    if step.error:
        code = step.error.split(":", 1)[0][:40]
        span.set_attribute("conclave.step.reason", code)
        if step.status in ("error", "timeout"):
            span.set_status(Status(StatusCode.ERROR, code))
