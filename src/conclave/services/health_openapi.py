"""What the probes answer: the documented bodies of every ``/health*`` and ``/info`` route.

Split out of the routes' modules (`conclave.services.health` for the orchestrator,
`conclave.services.agent_health` for the agent services) so that both stay about what is
checked, and of `conclave.services.openapi_docs` so that it stays about the API's own
resources. Documentation only, as there: the routes answer plain dicts, schemathesis
checks every answer against these (tests/services/test_openapi_contract.py). The keys
listed are always present with these types (optional ones: when present); unknown keys
are allowed where the detail is open-ended (a component's extra facts, a hook's section).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from conclave.services.openapi_docs import ErrorBody


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- both -------------------------------------------------------------------------------------


class FetchError(_Open):
    """The newest failed fetch of the exchange."""

    at: str
    reason: str
    message: str


class ExchangeState(_Open):
    """The data source, its last fetches, clock skew and latches (`health.gateway_state`)."""

    source: str
    simulated: bool
    last_success: str | None = Field(alias="lastSuccess")
    last_error: FetchError | None = Field(alias="lastError")
    status: Literal["ok", "warn", "unknown", "banned", "paused", "down", "degraded"]


class CacheState(_Open):
    """The candle cache (`health.cache_state`); ``error`` says why it is not ok."""

    backend: str
    status: Literal["ok", "degraded", "unknown"]
    error: str | None = None


# -- the orchestrator -------------------------------------------------------------------------


class Live(_Open):
    """The process answers."""

    status: Literal["ok"]


class Ready(_Open):
    """It can serve runs."""

    status: Literal["ready"]
    reasons: list[str] = Field(max_length=0)


class NotReady(_Open):
    """Why it cannot serve runs now."""

    status: Literal["not_ready"]
    reasons: list[str] = Field(min_length=1)


class DatabaseState(_Open):
    """The run store's check; ``detail`` or ``error`` says why it is not ok."""

    status: Literal["ok", "down", "unavailable"]


class AgentBrief(_Open):
    """One agent in the ``agents`` component; ``breaker`` over HTTP, ``error`` when down."""

    mode: Literal["local", "http"]
    status: str
    breaker: Literal["closed", "open", "half_open"] | None = None
    error: str | None = None


class AgentsState(_Open):
    """``critical`` when the risk agent is unavailable, ``degraded`` when another is."""

    status: Literal["ok", "degraded", "critical"]
    unavailable: list[str]
    items: dict[str, AgentBrief]


class SchedulerState(_Open):
    """The watchdog's section (``stalled`` and ``jobs`` when it could look)."""

    status: Literal["ok", "degraded", "unavailable"]
    stalled: list[str] | None = None
    jobs: list[dict[str, Any]] | None = None


class Dependencies(_Open):
    """Each component's state; ``scheduler`` while the scheduler runs."""

    database: DatabaseState
    cache: CacheState
    exchange: ExchangeState
    agents: AgentsState
    scheduler: SchedulerState | None = None


class HealthReport(_Open):
    """The orchestrator and its dependencies: ``critical`` when the risk agent is out."""

    status: Literal["ok", "degraded", "critical"]
    mode: str
    dependencies: Dependencies


# -- an agent service -------------------------------------------------------------------------


class AgentLive(Live):
    """The process answers, and which agent it serves."""

    agent: str


class AgentReady(_Open):
    """It can answer any run; ``source`` is its data source."""

    status: Literal["ready"]
    agent: str
    source: str


class AgentNotReady(_Open):
    """Why it cannot answer an ids-only run yet."""

    status: Literal["not_ready"]
    agent: str
    reasons: list[str] = Field(min_length=1)


class RunError(_Open):
    """The newest failed ``POST /run`` answer."""

    at: str
    http: int
    code: str
    reason: str


class RunCounts(_Open):
    """``POST /run`` answers since ``since``, by outcome (`agent_health.RunStats`)."""

    since: str
    served: int = Field(ge=0)
    ok: int = Field(ge=0)
    no_signal: int = Field(alias="noSignal", ge=0)
    failed: int = Field(ge=0)
    rejected: int = Field(ge=0)
    last_error: RunError | None = Field(alias="lastError")


class NotConfigured(_Open):
    """No data source yet (before the lifespan): inline-data runs only."""

    status: Literal["not_configured"]


class AgentDependencies(_Open):
    """Its own data path: the exchange (``not_configured`` before the lifespan), the cache."""

    exchange: ExchangeState | NotConfigured
    cache: CacheState | None = None


class AgentHealth(_Open):
    """``ok`` or ``degraded`` (both 200) with the reasons, dependencies and run counts."""

    status: Literal["ok", "degraded"]
    agent: str
    timestamp: str
    version: str
    reasons: list[str]
    dependencies: AgentDependencies
    runs: RunCounts
    check_ms: float = Field(alias="checkMs", ge=0)


class AgentInfo(_Open):
    """What the agent needs per timeframe and the parameters in effect."""

    name: str
    version: str
    description: str
    endpoints: dict[str, str]
    timeframes: list[str]
    needs: dict[str, Any]
    min_bars: dict[str, int] = Field(alias="minBars")
    lookback: dict[str, int]
    higher_timeframes: dict[str, list[str]] = Field(alias="higherTimeframes")
    parameters: dict[str, Any]
    parameters_schema: dict[str, Any] = Field(alias="parametersSchema")


# -- responses --------------------------------------------------------------------------------

#: The ``Retry-After`` header of a 503 (seconds, as digits).
RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before asking again",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}


def unavailable(model: Any, description: str, *, retry_after: bool = False) -> dict[str, Any]:
    """A ``responses`` entry: 503 answered with ``model`` (a model or a union of models),
    with `RETRY_AFTER` when ``retry_after``."""
    out = {"model": model, "description": description}
    return out | ({"headers": RETRY_AFTER} if retry_after else {})


#: ``GET /health`` 503: the report (database down), or the key layer's error body in front
#: of it (the service is starting, or the keys cannot be checked now).
REPORT_OR_ERROR = HealthReport | ErrorBody
