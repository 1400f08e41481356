"""The orchestrator's market routes, for the dashboard's Market page (issue 14).

- ``GET /market/candles?symbol&timeframe&limit``: the newest ``limit`` closed candles of a
  market as the pipeline sees them (through the gateway: validated, cached, rate limited),
  columnar, with the source named and ``simulated`` set for the simulator's data.
- ``GET /market/signals?symbol&timeframe&limit``: the recorded runs of that market, newest
  first, each with its decision (action, status, conviction) and every agent's score and
  confidence: the markers and the per-agent panes under the price.

Symbol and timeframe are this deployment's allowlists (documented as enums, 422 otherwise).
A market source that cannot answer now is 503 with ``Retry-After``; data that cannot be
used (none, or not valid) is 422 naming the symbol. Both read the run store or the market
only: ``read`` scope (`conclave.security.keys.required_scope`).
"""

# no `from __future__ import annotations`: the routes' annotations name local objects
# (the allowlists of the settings), which FastAPI and pydantic must see evaluated

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from conclave.errors import RetryLaterError, SkipStepError
from conclave.services.http_common import ApiError, json_response
from conclave.services.openapi_docs import KEY_ERRORS, error_responses
from conclave.settings import SYMBOL_PATTERN, Settings

#: Seconds a client should wait when the market source cannot answer.
RETRY_AFTER_S = 5
#: Runs scanned for one market's signals (the store filters by symbol, not timeframe).
SCAN_RUNS = 100


class CandleColumns(BaseModel):
    """Closed candles of one market, one array per field (open times in ms UTC)."""

    model_config = ConfigDict(populate_by_name=True)

    symbol: str
    timeframe: str
    source: str = Field(description="The market source, e.g. sim:7 or binance.")
    simulated: bool = Field(description="True for the simulator's data: label it SIMULATED.")
    as_of: int = Field(alias="asOf", description="ms UTC the candles are closed by.")
    time: list[int]
    open: list[float]
    high: list[float]
    low: list[float]
    close: list[float]
    volume: list[float]


class AgentMark(BaseModel):
    """One agent's answer in a run (null score and confidence when it had none)."""

    status: str
    score: float | None
    confidence: float | None


class Signal(BaseModel):
    """One recorded run of the market: its decision and each agent's answer."""

    model_config = ConfigDict(populate_by_name=True)

    run_id: str = Field(alias="runId")
    as_of: str = Field(alias="asOf", description="ISO UTC time of the run.")
    candle_time: int | None = Field(
        alias="candleTime", description="ms UTC open of the last closed candle used."
    )
    status: str | None
    action: str | None
    conviction: float | None
    confidence: float | None
    agents: dict[str, AgentMark]


class Signals(BaseModel):
    """The market's recorded runs, newest first."""

    symbol: str
    timeframe: str
    items: list[Signal]


def _allowed(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ApiError(
            422, "not_allowed", f"{name} {value!r} is not one of: " + ", ".join(allowed), field=name
        )


def _candle_time(run: dict[str, Any]) -> int | None:
    """The open (ms UTC) of the newest candle the run's agents read: a step's ``as_of`` is
    that candle's close time, which the pipeline records in ISO form."""
    from datetime import datetime

    for step in run.get("steps", {}).values():
        as_of = step.get("meta", {}).get("as_of")
        if isinstance(as_of, str):
            try:
                return int(datetime.fromisoformat(as_of.replace("Z", "+00:00")).timestamp() * 1000)
            except ValueError:
                continue
    return None


def _signal(run: dict[str, Any], tf_ms: int) -> dict[str, Any]:
    decision = run.get("decision") or {}
    agents = {
        name: {
            "status": step.get("meta", {}).get("status", "error"),
            "score": step.get("score"),
            "confidence": step.get("confidence"),
        }
        for name, step in (run.get("steps") or {}).items()
    }
    close = _candle_time(run)
    return {
        "runId": run["runId"],
        "asOf": run["asOf"],
        "candleTime": None if close is None else close - tf_ms,
        "status": decision.get("status"),
        "action": decision.get("action"),
        "conviction": decision.get("conviction"),
        "confidence": decision.get("confidence"),
        "agents": agents,
    }


def market_router(settings: Settings) -> APIRouter:
    """The market routes for ``settings``' allowlists."""
    from conclave.timeframes import Timeframe

    symbols, timeframes = settings.market.symbols, settings.market.timeframes
    router = APIRouter(tags=["market"])
    symbol_q = Query(pattern=SYMBOL_PATTERN.pattern, json_schema_extra={"enum": list(symbols)})
    tf_q = Query(json_schema_extra={"enum": list(timeframes)})
    errors = error_responses(422, *KEY_ERRORS, 503, e503="the market source cannot answer now")

    @router.get(
        "/market/candles",
        summary="Closed candles of a market, as the pipeline reads them",
        responses={200: {"model": CandleColumns}, **errors},
    )
    async def candles(
        request: Request,
        symbol: Annotated[str, symbol_q],
        timeframe: Annotated[str, tf_q],
        limit: Annotated[int, Query(ge=10, le=1000)] = 300,
    ) -> Response:
        """The newest ``limit`` closed candles, columnar, with the source and the
        SIMULATED flag."""
        _allowed("symbol", symbol, symbols)
        _allowed("timeframe", timeframe, timeframes)
        runtime = request.app.state.runtime
        now = await runtime.gateway.now_ms(runtime.local_ms())
        try:
            snap = await runtime.gateway.snapshot(
                symbol, timeframe, limit=limit, as_of_ms=now, require_fresh=False
            )
        except RetryLaterError as exc:
            err = ApiError(503, "unavailable", f"the market source cannot answer now: {exc}")
            err.headers = {"Retry-After": str(RETRY_AFTER_S)}
            raise err from None
        except SkipStepError as exc:
            raise ApiError(422, "no_data", f"no usable candles: {exc}", field="symbol") from None
        c = snap.base
        return json_response(
            {
                "symbol": symbol,
                "timeframe": snap.timeframe,
                "source": snap.source,
                "simulated": bool(snap.simulated),
                "asOf": int(snap.as_of_ms),
                "time": c.open_time,
                "open": c.open,
                "high": c.high,
                "low": c.low,
                "close": c.close,
                "volume": c.volume,
            }
        )

    @router.get(
        "/market/signals",
        summary="Recorded runs of a market with every agent's score",
        responses={200: {"model": Signals}, **error_responses(422, *KEY_ERRORS, 503)},
    )
    async def signals(
        request: Request,
        symbol: Annotated[str, symbol_q],
        timeframe: Annotated[str, tf_q],
        limit: Annotated[int, Query(ge=1, le=SCAN_RUNS)] = 50,
    ) -> Response:
        """Up to ``limit`` of the newest runs of this market (of the newest `SCAN_RUNS`
        runs of the symbol), each with its decision and each agent's answer."""
        _allowed("symbol", symbol, symbols)
        _allowed("timeframe", timeframe, timeframes)
        store = request.app.state.runtime.store
        tf_ms = Timeframe.parse(timeframe).ms
        page, _ = await store.list_runs(symbol=symbol, limit=SCAN_RUNS, offset=0)
        items: list[dict[str, Any]] = []
        for summary in page:
            if summary.get("timeframe") != timeframe:
                continue
            run = await store.get_run(summary["runId"])
            if run is not None:
                items.append(_signal(run, tf_ms))
            if len(items) >= limit:
                break
        return json_response({"symbol": symbol, "timeframe": timeframe, "items": items})

    return router


__all__ = ["CandleColumns", "Signals", "market_router"]
