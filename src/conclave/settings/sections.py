"""The sections of `conclave.settings.Settings`: one pydantic model per area, frozen,
unknown names refused. Each documents its names; the README lists them with their
environment variables (``CONCLAVE_<SECTION>__<NAME>``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from conclave.timeframes import checked_timeframe

SYMBOL_PATTERN = re.compile(r"^[A-Z0-9]{2,20}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BinanceSettings(_Section):
    """The Binance REST client: where it points, how politely it calls, how it keeps time.

    ``time_*`` govern the exchange clock (`conclave.market.exchange_time`): the offset to
    ``GET /api/v3/time`` is measured every ``time_refresh_s`` seconds, a sample whose round
    trip exceeds ``time_max_rtt_ms`` is ignored, and ``/health`` warns when the offset
    exceeds ``time_skew_warn_ms``.
    """

    base_url: str = "https://api.binance.com"
    weight_limit_per_minute: int = Field(6000, gt=0)
    budget_share: float = Field(0.8, gt=0, le=1)
    connect_timeout_s: float = Field(2.0, gt=0)
    read_timeout_s: float = Field(5.0, gt=0)
    max_retries: int = Field(3, ge=0, le=10)
    retry_base_s: float = Field(0.5, ge=0)
    retry_cap_s: float = Field(4.0, ge=0)
    deadline_s: float = Field(10.0, gt=0)
    time_refresh_s: float = Field(60.0, gt=0, le=86_400)
    time_max_rtt_ms: float = Field(1000.0, gt=0, le=60_000)
    time_skew_warn_ms: float = Field(1000.0, gt=0)

    @property
    def weight_budget(self) -> int:
        """Weight we allow ourselves per minute (80 % of the exchange's limit by default)."""
        return int(self.weight_limit_per_minute * self.budget_share)


class CacheSettings(_Section):
    """The candle cache: in process by default, Redis when ``REDIS_URL`` is set."""

    ttl_s: float = Field(30.0, gt=0)
    max_entries: int = Field(512, gt=0)
    redis_timeout_s: float = Field(0.25, gt=0)
    key_prefix: str = "conclave:v1"


class MarketSettings(_Section):
    """Market data: the default source, the symbol and timeframe allowlists, the store."""

    source: str = "sim"
    symbols: tuple[str, ...] = (
        "BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT",
        "LTCUSDT", "LINKUSDT", "DOTUSDT", "AVAXUSDT", "TRXUSDT", "ETHBTC",
    )  # fmt: skip
    timeframes: tuple[str, ...] = ("1m", "5m", "15m", "30m", "1h", "4h", "1d")
    store_dir: Path = Path("data/candles")
    binance: BinanceSettings = BinanceSettings()
    cache: CacheSettings = CacheSettings()

    @field_validator("symbols")
    @classmethod
    def _symbols_upper(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [s for s in value if not SYMBOL_PATTERN.match(s)]
        if bad:
            raise ValueError(f"symbols must match {SYMBOL_PATTERN.pattern}: {bad}")
        return value

    @field_validator("timeframes")
    @classmethod
    def _known_timeframes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for tf in value:
            checked_timeframe(tf)
        return value


class AgentCatalog(Protocol):
    """What settings need to know of the agents (`conclave.agents.Registry` is one): their
    names, in order, with the default port of each one's service."""

    @property
    def ports(self) -> Mapping[str, int]:
        """Default service port by agent name."""
        ...


class BreakerSettings(_Section):
    """The circuit breaker in front of each agent service (RELIABILITY C2, C9).

    It opens after ``failures`` consecutive failed calls, refuses calls for ``open_s``
    seconds, then lets ``probes`` probe calls through one at a time (all must succeed to
    close it). Env: ``CONCLAVE_AGENTS__BREAKER__FAILURES``, ``..._OPEN_S``, ``..._PROBES``.
    """

    failures: int = Field(5, ge=1)
    open_s: float = Field(30.0, gt=0)
    probes: int = Field(1, ge=1)


class AgentServiceSettings(_Section):
    """The agents as HTTP services: where each listens and how the orchestrator calls it.

    The agents and their default ports (5001 onwards in registry order) come from the
    registry; these maps hold overrides only, keyed by agent name: ``ports`` the port of
    one agent, ``urls`` its whole URL, ``http`` its mode (true: call its service, false:
    run it in process), for mixed deployments. The names are checked against the registry
    where the two meet (`check_agent_settings`).
    """

    host: str = "127.0.0.1"
    ports: dict[str, int] = Field(default_factory=dict)
    urls: dict[str, str] = Field(default_factory=dict)
    http: dict[str, bool] = Field(default_factory=dict)
    timeout_s: float = Field(2.0, gt=0)
    max_body_bytes: int = Field(1_048_576, gt=0)
    #: seconds a request's body may take to arrive; then 408 and the connection closes
    body_timeout_s: float = Field(10.0, gt=0, le=300)
    start_timeout_s: float = Field(30.0, gt=0)
    stop_timeout_s: float = Field(10.0, gt=0)
    breaker: BreakerSettings = BreakerSettings()
    #: HMAC secret of signed agent calls (`conclave.security.signing`); required when the
    #: agents listen beyond loopback (`conclave.security.startup`); never printed
    secret: SecretStr | None = None
    #: a signed call older or newer than this many seconds is refused (401)
    signature_max_age_s: float = Field(5.0, gt=0, le=300)

    @field_validator("ports")
    @classmethod
    def _ports_in_range(cls, value: dict[str, int]) -> dict[str, int]:
        bad = [f"{k}={v}" for k, v in value.items() if not 0 < v < 65536]
        if bad:
            raise ValueError(f"ports must be 1 to 65535: {', '.join(bad)}")
        return value


class ApiSettings(_Section):
    """The orchestrator's HTTP API."""

    host: str = "127.0.0.1"
    port: int = Field(4000, gt=0, lt=65536)
    max_body_bytes: int = Field(65_536, gt=0)
    #: seconds a request's body may take to arrive; then 408 and the connection closes
    body_timeout_s: float = Field(10.0, gt=0, le=300)
    #: runs admitted by one process, executing and waiting; one more is refused 503 at once,
    #: before its body is read (RELIABILITY F2)
    max_runs_in_flight: int = Field(64, ge=1, le=10_000)
    #: of those, runs executing at once; the others wait in arrival order. All runs share one
    #: event loop: beyond a few, more at once only lengthens each (benchmarks/api.py). Capped
    #: at ``max_runs_in_flight`` when left at its default
    max_runs_running: int = Field(8, ge=1, le=10_000)
    #: seconds a run may wait for a slot; then 503 ``overloaded`` and no work done. Below
    #: ``pipeline.run_deadline_s`` (the wait counts toward the run's deadline); left at its
    #: default, also at most half of it
    max_queue_wait_s: float = Field(5.0, gt=0, le=300)

    @model_validator(mode="after")
    def _running_within_in_flight(self) -> ApiSettings:
        if "max_runs_running" in self.model_fields_set and (
            self.max_runs_running > self.max_runs_in_flight
        ):
            raise ValueError(
                f"max_runs_running ({self.max_runs_running}) must not exceed "
                f"max_runs_in_flight ({self.max_runs_in_flight}): runs executing are in flight"
            )
        return self


class PipelineSettings(_Section):
    """How a pipeline run executes its agents."""

    parallel: bool = True
    executor: Literal["inline", "thread", "process"] = "inline"
    agent_timeout_s: float = Field(2.0, gt=0)
    run_deadline_s: float = Field(10.0, gt=0)


class NewsSettings(_Section):
    """Where headlines come from: ``file:PATH`` (JSON or CSV) or ``rss:URL``; none by default."""

    source: str | None = None

    @field_validator("source")
    @classmethod
    def _known_form(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("file:", "rss:")):
            raise ValueError("must be file:PATH or rss:URL")
        return value


class ScheduledJobSettings(_Section):
    """One scheduled job: run ``symbol`` on ``timeframe`` (for ``account``, if any)."""

    account: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    symbol: str = Field(pattern=SYMBOL_PATTERN.pattern)
    timeframe: str

    @field_validator("timeframe")
    @classmethod
    def _known_timeframe(cls, value: str) -> str:
        return checked_timeframe(value)


class SchedulerSettings(_Section):
    """``conclave scheduler``: the jobs, the delay after each candle close, the watchdog.

    ``jobs`` as JSON in ``CONCLAVE_SCHEDULER__JOBS``, e.g.
    ``[{"account": "paper-1", "symbol": "BTCUSDT", "timeframe": "1h"}]``; jobs added
    through the API run too. ``offset_s`` waits after each close (freqtrade uses 1 s);
    a job without a successful run for ``watchdog_intervals`` bars makes health degraded.
    """

    enabled: bool = True
    jobs: tuple[ScheduledJobSettings, ...] = ()
    offset_s: float = Field(1.0, ge=0, le=300)
    watchdog_intervals: float = Field(2.0, gt=0)
    poll_s: float = Field(30.0, gt=0)
    #: ``conclave scheduler`` serves ``GET /metrics`` on this host and port (0: not served)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9464, ge=0, le=65535)


class MetricsSettings(_Section):
    """Prometheus metrics at ``GET /metrics`` of every service (``CONCLAVE_METRICS__ENABLED``).

    On by default; off removes the route, the request timing and the per-run counts (the
    benchmarks compare both).
    """

    enabled: bool = True


class DashboardSettings(_Section):
    """``conclave dashboard``: where it listens and the orchestrator API it reads.

    The dashboard holds no data of its own: every page is read from ``api_url`` (which may
    be a remote deployment), so it is its own service in compose and Kubernetes.
    ``cookie_secure`` marks its cookies Secure (set it when served over HTTPS).
    """

    host: str = "127.0.0.1"
    port: int = Field(3001, gt=0, lt=65536)
    api_url: str = "http://127.0.0.1:4000"
    api_timeout_s: float = Field(5.0, gt=0, le=60)
    cookie_secure: bool = False


class SecuritySettings(_Section):
    """API keys, rate limits and CORS of the HTTP API (`conclave.security`).

    ``key_secret`` keys the HMAC under which API keys are stored (at least 32 characters,
    not a placeholder; checked at start-up, `conclave.security.startup`). ``open_health``
    and ``open_metrics`` let ``GET /health`` and ``GET /metrics`` through without a key
    (``/health/live`` and ``/health/ready`` are always open). Limits are per key and shared
    by every replica through Redis when ``REDIS_URL`` is set. A revoked key stops working
    within ``key_cache_ttl_s`` (at most 60 s) on every replica.
    """

    key_secret: SecretStr | None = None
    open_health: bool = False
    open_metrics: bool = False
    runs_per_minute: int = Field(60, gt=0)
    requests_per_second: int = Field(20, gt=0)
    key_cache_ttl_s: float = Field(30.0, gt=0, le=60)
    cors_origins: tuple[str, ...] = ()
    redis_timeout_s: float = Field(0.25, gt=0)
