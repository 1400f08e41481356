"""What the OpenAPI documents promise: the error body, request bodies, every 2xx body, links.

The routes read raw JSON themselves (`conclave.services.json_body.read_json`) to answer
errors in the common shape, so FastAPI cannot infer their bodies; these pieces declare them
exactly as enforced (RELIABILITY E1, checked by schemathesis in
tests/services/test_openapi_contract.py):

- `ErrorBody`, the ``{"error": {"code", "message", "field"}}`` of every 4xx and 5xx, and
  `error_responses`, which documents statuses with it;
- `request_body`: a model's JSON schema as a required ``application/json`` body, every
  ``$ref`` into the model's own ``$defs`` inlined (a ``#/$defs/...`` pointer would dangle
  inside the OpenAPI document);
- response models of each 2xx body (documentation only: the routes answer plain dicts);
  unknown keys are allowed, the keys listed are always present with these types;
- `link`: an OpenAPI link that feeds a value of one answer into another operation (the
  stateful part of the contract test follows them).

An agent's ``POST /run`` body has its own module (`conclave.services.agent_openapi`), and
so do the probes' answers (`conclave.services.health_openapi`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: Statuses every route that reads a JSON body may answer.
BODY_ERRORS = (400, 408, 413, 415, 422)
#: Statuses of the API-key layer in front of the orchestrator's keyed routes (issue 12).
KEY_ERRORS = (401, 403, 429)

_ERROR_TEXT = {
    400: "malformed JSON (also a duplicate key in an object), or a bad Content-Length",
    401: "no API key, or one that is unknown, revoked or expired",
    403: "the API key's scope does not cover this request",
    404: "no such resource",
    408: "the request body did not arrive within the body timeout; the connection closes",
    409: "conflicts with the current state",
    413: "the request body is over the service's limit",
    415: "the body is not application/json",
    422: "a field is invalid; `field` names it",
    429: "the API key's rate limit is reached; see Retry-After",
    431: "too many request headers, or a header block that is too large",
    503: "a dependency is unavailable; see Retry-After",
}


class ErrorDetail(BaseModel):
    """What went wrong; ``field`` names the input at fault."""

    code: str
    message: str = Field(max_length=300)
    field: str | None = Field(None, max_length=100)


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


def error_responses(*codes: int, **texts: str) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses`` documenting ``codes`` with `ErrorBody`; ``texts`` override the
    default description of a status (keyword ``e404="no such run"``)."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        text = texts.get(f"e{code}", _ERROR_TEXT.get(code, "error"))
        out[code] = {"model": ErrorBody, "description": text}
    return out


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with every ``{"$ref": "#/$defs/Name"}`` replaced by the definition."""
    defs: dict[str, Any] = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return walk(defs[ref.removeprefix("#/$defs/")]) | walk(rest)
            return {k: walk(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    out: dict[str, Any] = walk(schema)
    return out


def request_body(schema: type[BaseModel] | dict[str, Any]) -> dict[str, Any]:
    """The ``openapi_extra`` declaring ``schema`` as a required ``application/json`` body."""
    if not isinstance(schema, dict):
        schema = schema.model_json_schema(by_alias=True)
    content = {"application/json": {"schema": inline_refs(schema)}}
    return {"requestBody": {"required": True, "content": content}}


def link(operation_ref: str, **parameters: str) -> dict[str, Any]:
    """An OpenAPI link to ``operation_ref`` (e.g. ``#/paths/~1x~1{id}/get``) with ``parameters``
    (name to runtime expression, e.g. ``id="$response.body#/id"``)."""
    return {"operationRef": operation_ref, "parameters": parameters}


def path_ref(path: str, method: str) -> str:
    """The JSON pointer of ``method`` on ``path`` in the document (``/`` escaped as ``~1``)."""
    return "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method.lower()


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- agents -----------------------------------------------------------------------------------

StepStatus = Literal["ok", "no_data", "insufficient_data", "stale_data", "error", "timeout"]


class AnswerMeta(_Open):
    """Who answered, when, as of which bar, and whether it is a signal."""

    agent: str
    version: str
    duration_ms: float
    timestamp: str
    as_of: str | None
    status: StepStatus
    reason: str


class AgentAnswer(_Open):
    """One agent's answer (the wire contract): ``status`` ``ok`` carries a signal."""

    score: float | None
    confidence: float | None
    payload: dict[str, Any]
    meta: AnswerMeta


class AgentState(_Open):
    """An agent's mode, where it is, and whether it answers."""

    name: str
    mode: Literal["local", "http"]
    url: str | None
    port: int | None
    role: str
    status: str
    latency_ms: float = Field(alias="latencyMs")


# -- runs -------------------------------------------------------------------------------------


class Contribution(_Open):
    """What one agent added to the decision."""

    status: str
    weight: float
    score: float | None
    confidence: float | None
    contribution: float | None


class Quorum(_Open):
    """Healthy analysis agents against the number a decision needs."""

    healthy: int
    required: int


class Decision(_Open):
    """What the run concluded; ``action`` is null when no decision was made."""

    status: Literal["ok", "blocked", "failed", "no_signal"]
    action: Literal["BUY", "SELL", "HOLD", "BLOCKED"] | None
    strength: float
    conviction: float | None
    confidence: float | None
    size_multiplier: float = Field(alias="sizeMultiplier")
    tradable: bool
    degraded: bool
    missing_agents: list[str] = Field(alias="missingAgents")
    reason: str
    quorum: Quorum
    contributions: dict[str, Contribution]
    risk_veto: bool = Field(alias="riskVeto")


class GapWindow(_Open):
    """A window that had bars filled (RELIABILITY B3): flat at the previous close, volume 0."""

    bars: int = Field(ge=0)
    missing: int = Field(ge=0)
    missing_pct: float = Field(alias="missingPct", ge=0)
    degraded: bool


class Run(_Open):
    """A recorded run: what it read, every agent's answer and the decision."""

    run_id: str = Field(alias="runId", pattern=r"^[0-9a-f]{32}$")
    symbol: str
    timeframe: str
    as_of: str = Field(alias="asOf")
    account_id: str | None = Field(alias="accountId")
    simulated: bool
    source: str
    steps: dict[str, AgentAnswer]
    decision: Decision
    degraded: bool
    missing_agents: list[str] = Field(alias="missingAgents")
    duration_ms: float = Field(alias="durationMs")
    gaps: dict[str, GapWindow] = Field(
        default_factory=dict,
        description="per timeframe, the windows that had missing bars filled (flat at the"
        " previous close, volume 0); more than 1 % of a window missing degrades the run;"
        " empty when every window was complete",
    )


class RunSummary(_Open):
    """One run in a list."""

    run_id: str = Field(alias="runId", pattern=r"^[0-9a-f]{32}$")
    account_id: str | None = Field(alias="accountId")
    symbol: str
    timeframe: str
    as_of: str = Field(alias="asOf")
    created_at: str = Field(alias="createdAt")
    status: str
    action: str | None
    degraded: bool
    missing_agents: list[str] = Field(alias="missingAgents")


class RunPage(_Open):
    """One page of runs, newest first, and how many match in all."""

    items: list[RunSummary]
    total: int = Field(ge=0)
    limit: int = Field(ge=1)
    offset: int = Field(ge=0)


# -- accounts ---------------------------------------------------------------------------------


class AccountSummary(_Open):
    """A paper account without its positions and orders."""

    id: str
    name: str
    kind: str
    quote: str
    starting_balance: float = Field(alias="startingBalance")
    fee_rate: float = Field(alias="feeRate")
    slippage: float
    status: str
    status_reason: str | None = Field(alias="statusReason")
    cash: float
    equity: float
    created_at: str | None = Field(alias="createdAt")


class Account(AccountSummary):
    """The whole account: equity, peak, drawdown, risk level, positions, orders, events."""

    peak_equity: float = Field(alias="peakEquity")
    drawdown: float
    risk_level: str = Field(alias="riskLevel")
    limits: dict[str, Any]
    protections: dict[str, Any]
    positions: list[dict[str, Any]]
    orders: list[dict[str, Any]]
    risk_events: list[dict[str, Any]] = Field(alias="riskEvents")


class AccountList(_Open):
    """Every account's summary, oldest first."""

    items: list[AccountSummary]


# -- scheduler --------------------------------------------------------------------------------


class ScheduledJob(_Open):
    """A job: where it comes from and when it was added through the API."""

    id: str
    account_id: str | None = Field(alias="accountId")
    symbol: str
    timeframe: str
    source: Literal["settings", "api"]
    created_at: str | None = Field(alias="createdAt")


class WatchedJob(ScheduledJob):
    """A job with the watchdog's view of it."""

    status: Literal["ok", "stalled"]
    last_success_at: str | None = Field(alias="lastSuccessAt")


class JobList(_Open):
    """Every job and the watchdog's overall status."""

    items: list[WatchedJob]
    status: Literal["ok", "degraded"]


# -- the orchestrator's POST /pipeline/run ----------------------------------------------------


def run_request_forms(schema: dict[str, Any]) -> dict[str, Any]:
    """The run request's schema with its two forms: ``symbol`` and ``timeframe`` together,
    or neither and an ``accountId`` (the account's markets run); half a market is 422."""
    one_market = {"required": ["symbol", "timeframe"]}
    account = {
        "required": ["accountId"],
        "properties": {"accountId": {"type": "string"}},
        "not": {"anyOf": [{"required": ["symbol"]}, {"required": ["timeframe"]}]},
    }
    return schema | {"oneOf": [one_market, account]}


def run_answers(account_runs: dict[str, Any], description: str) -> dict[str, Any]:
    """A ``responses`` entry: the run (one market) or ``account_runs`` (an account's)."""
    run = inline_refs(Run.model_json_schema(by_alias=True, mode="serialization"))
    schema = {"oneOf": [run, account_runs]}
    return {"description": description, "content": {"application/json": {"schema": schema}}}
