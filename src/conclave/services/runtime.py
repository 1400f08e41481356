"""What a pipeline run needs, built once from `Settings`: gateway, store, runners, pipelines.

Shared by ``conclave serve`` (the API), ``conclave run`` and the scheduler. `Runtime.open`
opens the candle source named by ``settings.market.source`` behind the configured cache
(memory, or Redis when ``REDIS_URL`` is set), the run store (SQLite under ``data_dir``, or
``DATABASE_URL``) and one pooled HTTP client that every `HttpRunner` shares.

Modes (issue item 4): each agent is called in process or over HTTP by
`Settings.agent_uses_http` - the request's ``useHttpAgents`` first, then the per-agent
setting, then ``USE_HTTP_AGENTS``. One `Pipeline` is kept per distinct set of HTTP agents
(at most three: the settings' own mix, all HTTP, all local), so a request that overrides
the mode costs no set-up.

The agents are those of the runtime's `Registry` (default `conclave.agents.REGISTRY`): its
names, order, default ports and decision roles; the settings only override ports, URLs and
modes, and naming an agent the registry does not know stops start-up
(`check_agent_settings`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import structlog

from conclave.accounts.hook import open_accounts, process_for_account
from conclave.accounts.reader import StoreAccountReader
from conclave.agents import REGISTRY
from conclave.agents.registry import Registry
from conclave.market.cache import CandleCache, make_cache
from conclave.market.gateway import MarketGateway
from conclave.market.sources import CandleSource, open_source
from conclave.news.sources import NewsSource, open_news_source
from conclave.pipeline import AgentRunner, Pipeline, PipelineRun
from conclave.pipeline.breaker import CircuitBreaker
from conclave.pipeline.runners import RUN_DEADLINE_MS
from conclave.services import health
from conclave.services.admission import QUEUE_WAIT_S
from conclave.services.health import HEALTH_TIMEOUT_S
from conclave.services.run_metrics import breaker_collectors, record_run
from conclave.settings import Settings, check_agent_settings
from conclave.timeframes import iso_ms

log = structlog.get_logger(__name__)

AgentMode = Literal["local", "http"]
DeploymentMode = Literal["monolithic", "microservices", "mixed"]


class IdempotencyClaimLike(Protocol):
    """What `RunStoreLike.claim_idempotency_key` answers."""

    @property
    def kind(self) -> str:
        """``new``, ``replay``, ``conflict``, ``in_progress`` or ``abandoned``."""
        ...

    @property
    def run_id(self) -> str | None:
        """The run recorded under the key (for ``replay``)."""
        ...


class RunStoreLike(Protocol):
    """The part of `conclave.store.RunStore` the orchestrator uses."""

    async def save_run(
        self,
        run_wire: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
    ) -> Any:
        """Store a run, its steps and its decision in one transaction."""
        ...

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The stored run's wire dict, or None."""
        ...

    async def list_runs(
        self,
        *,
        account_id: str | None = None,
        symbol: str | None = None,
        status: str | None = None,
        timeframe: str | None = None,
        degraded: bool | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of runs, newest first, and the total that match."""
        ...

    async def claim_idempotency_key(self, key: str, request_hash: str) -> IdempotencyClaimLike:
        """Claim ``key`` for a request whose canonical body hashes to ``request_hash``."""
        ...

    async def release_idempotency_key(self, key: str) -> None:
        """Forget a claim whose run was never saved."""
        ...

    async def health(self) -> dict[str, Any]:
        """``{"status": "ok", ...}`` when the database answers."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


RunnerFactory = Callable[[str, str], AgentRunner]


@dataclass(frozen=True, slots=True)
class AgentEndpoint:
    """Where one agent runs for a given mode choice."""

    name: str
    mode: AgentMode
    url: str
    port: int


def agent_endpoints(
    settings: Settings, registry: Registry, use_http: bool | None = None
) -> list[AgentEndpoint]:
    """Each agent's mode (request override, then per-agent setting, then the global one),
    service URL (its own, else the base URL plus its port) and port, in registry order."""
    return [
        AgentEndpoint(
            name,
            "http" if settings.agent_uses_http(name, use_http) else "local",
            settings.agent_url(name, registry),
            settings.agent_port(name, registry),
        )
        for name in registry
    ]


async def open_store(settings: Settings) -> RunStoreLike:
    """The run store of ``settings``: ``DATABASE_URL``, else SQLite under ``data_dir``."""
    from conclave.store import RunStore

    store: RunStoreLike = await RunStore.open(settings.database_url, data_dir=settings.data_dir)
    return store


def open_gateway(
    settings: Settings, *, now_ms: Callable[[], int], source: CandleSource | None = None
) -> tuple[MarketGateway, CandleCache]:
    """The market gateway over ``source`` (default: ``settings.market.source``) and its cache."""
    spec = settings.market.source
    src = source if source is not None else open_source(spec, settings, now_ms=now_ms)
    # one file holds one timeframe: the higher ones are built from it
    one_file = spec.startswith("file:") and Path(spec[5:]).expanduser().is_file()
    cache = make_cache(settings.market.cache, settings.redis_url)
    gateway = MarketGateway(
        src,
        cache=cache,
        cache_ttl_s=settings.market.cache.ttl_s,
        resample="resample" if one_file else "auto",
    )
    return gateway, cache


class Runtime:
    """The long-lived parts of the orchestrator and the pipelines built over them.

    ``now_ms`` is the wall clock (ms UTC), read at the edge (kept as ``local_ms``); for a
    live source the attribute ``now_ms`` is the exchange's clock (A8: plus the last measured
    offset), and a run is as of the exchange's now. ``http_runner`` builds the runner of an
    agent called over HTTP from its name and URL. ``registry`` lists the agents
    (`ConfigurationError` if the settings name another). Close with `aclose` (or ``async
    with``).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        registry: Registry = REGISTRY,
        gateway: MarketGateway,
        cache: CandleCache,
        store: RunStoreLike,
        http_runner: RunnerFactory,
        now_ms: Callable[[], int],
        on_close: Callable[[], Any] | None = None,
    ) -> None:
        self.settings = check_agent_settings(settings, registry)
        self.registry = registry
        self.gateway = gateway
        self.cache = cache
        self.store = store
        self.local_ms = now_ms
        clock = gateway.exchange_clock
        self.now_ms: Callable[[], int] = (
            now_ms if clock is None else (lambda: clock.to_exchange_ms(now_ms()))
        )
        self._http_runner = http_runner
        self._http_runners: dict[str, AgentRunner] = {}
        self._pipelines: dict[frozenset[str], Pipeline] = {}
        self._on_close = on_close
        # paper accounts over the run store (None for a store that is not the real one)
        # headlines for news-sentiment (CONCLAVE_NEWS__SOURCE); none: it answers no_data
        news = settings.news.source
        self.news_source: NewsSource | None = open_news_source(news) if news else None
        self.accounts = open_accounts(store)
        self.account_reader = StoreAccountReader(self.accounts) if self.accounts else None
        if self.settings.metrics.enabled:
            breaker_collectors(self._breakers)

    @classmethod
    async def open(
        cls,
        settings: Settings,
        *,
        now_ms: Callable[[], int],
        registry: Registry = REGISTRY,
        source: CandleSource | None = None,
        store: RunStoreLike | None = None,
    ) -> Runtime:
        """Open the store, the gateway and the shared agent client from ``settings``, for
        the agents of ``registry``."""
        from conclave.pipeline.agent_client import AgentHttpClient
        from conclave.pipeline.http_runner import HttpRunner

        check_agent_settings(settings, registry)  # before anything is opened

        gateway, cache = open_gateway(settings, now_ms=now_ms, source=source)
        try:
            opened = store if store is not None else await open_store(settings)
        except BaseException:
            await gateway.aclose()  # closes the cache too
            raise
        from conclave.security.signing import Signer

        secret = settings.agents.secret  # signs every agent call when set (issue 12, E8)
        client = AgentHttpClient(signer=Signer(secret) if secret is not None else None)
        timeout_s = settings.agents.timeout_s

        def http_runner(name: str, url: str) -> AgentRunner:
            breaker = CircuitBreaker.from_settings(settings.agents.breaker)
            return HttpRunner(name, url, client=client, timeout_s=timeout_s, breaker=breaker)

        return cls(
            settings,
            registry=registry,
            gateway=gateway,
            cache=cache,
            store=opened,
            http_runner=http_runner,
            now_ms=now_ms,
            on_close=client.aclose,
        )

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- modes -------------------------------------------------------------------------------

    def endpoints(self, use_http: bool | None = None) -> list[AgentEndpoint]:
        """Every agent's mode, service URL and port for the request override ``use_http``."""
        return agent_endpoints(self.settings, self.registry, use_http)

    def deployment_mode(self) -> DeploymentMode:
        """``monolithic`` (all in process), ``microservices`` (all HTTP) or ``mixed``."""
        modes = {e.mode for e in self.endpoints()}
        if modes == {"local"}:
            return "monolithic"
        return "microservices" if modes == {"http"} else "mixed"

    def _breakers(self) -> dict[str, CircuitBreaker]:
        found = ((n, getattr(r, "breaker", None)) for n, r in self._http_runners.items())
        return {n: b for n, b in found if isinstance(b, CircuitBreaker)}

    def runner(self, name: str) -> AgentRunner:
        """The (shared) HTTP runner of agent ``name``."""
        runner = self._http_runners.get(name)
        if runner is None:
            runner = self._http_runners[name] = self._http_runner(
                name, self.settings.agent_url(name, self.registry)
            )
        return runner

    def pipeline(self, use_http: bool | None = None) -> Pipeline:
        """The pipeline whose runners follow the modes for the override ``use_http``."""
        http = frozenset(e.name for e in self.endpoints(use_http) if e.mode == "http")
        pipeline = self._pipelines.get(http)
        if pipeline is None:
            p = self.settings.pipeline
            pipeline = self._pipelines[http] = Pipeline(
                self.gateway,
                registry=self.registry,
                runners={name: self.runner(name) for name in http},
                parallel=p.parallel,
                executor=p.executor,
                timeout_s=p.agent_timeout_s,
                account_reader=self.account_reader,
                news_source=self.news_source,
            )
        return pipeline

    async def run(
        self, account_id: str | None, symbol: str, timeframe: str, *, use_http: bool | None = None
    ) -> PipelineRun:
        """One run as of now, within ``pipeline.run_deadline_s`` (`TimeoutError` past it).

        Symbol and timeframe must have been checked already (the API's request model does
        it before any I/O); data problems end in a ``no_signal`` decision, not an exception.
        """
        # the deadline counts from the request's arrival: the admission queue's wait is spent
        budget_s = self.settings.pipeline.run_deadline_s - QUEUE_WAIT_S.get()
        token = RUN_DEADLINE_MS.set(time.time_ns() // 1_000_000 + round(budget_s * 1000))
        try:
            async with asyncio.timeout(budget_s):
                # as of the exchange's now: a bar the exchange still has open is never used (A8)
                now = await self.gateway.now_ms(self.local_ms())
                run = await self.pipeline(use_http).run(
                    account_id, symbol, timeframe, as_of_ms=now, now_iso=iso_ms(now)
                )
        finally:
            RUN_DEADLINE_MS.reset(token)
        self.count(run, use_http)
        await self._after_run(run)
        return run

    def count(self, run: PipelineRun, use_http: bool | None = None) -> None:
        """Add ``run`` (made with the modes of ``use_http``) to the metrics, when enabled."""
        if self.settings.metrics.enabled:
            http = frozenset(e.name for e in self.endpoints(use_http) if e.mode == "http")
            record_run(run, http)

    async def _after_run(self, run: PipelineRun) -> None:
        """Act on ``run`` for its paper account (order, fills, equity); never fails the run."""
        if self.accounts is None or run.account_id is None:
            return
        try:
            outcome = await process_for_account(self.accounts, self.gateway, run)
        except Exception as exc:  # the run is still recorded; the next run settles the account
            log.warning("account_processing_failed", run_id=run.run_id, error=type(exc).__name__)
            return
        if outcome is not None:
            placed = outcome.get("order") is not None
            log.info("account_processed", run_id=run.run_id, order=placed,
                     fills=len(outcome["fills"]))  # fmt: skip

    # -- health ------------------------------------------------------------------------------

    async def agent_health(
        self, use_http: bool | None = None, *, timeout_s: float = HEALTH_TIMEOUT_S
    ) -> list[dict[str, Any]]:
        """Each agent's mode, URL, port, status, latency and breaker (`health.agent_states`)."""
        return await health.agent_states(self, use_http, timeout_s=timeout_s)

    async def health(self) -> dict[str, Any]:
        """Every component's computed state (`conclave.services.health.report`)."""
        return await health.report(self)

    async def aclose(self) -> None:
        """Close the pipelines, the shared client, the gateway (source and cache) and the store."""
        for pipeline in self._pipelines.values():
            await pipeline.aclose()
        self._pipelines.clear()
        if self._on_close is not None:
            result = self._on_close()
            if asyncio.iscoroutine(result):
                await result
        await self.gateway.aclose()  # and the cache it wraps the source with
        await self.store.aclose()
