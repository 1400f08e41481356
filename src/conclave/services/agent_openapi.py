"""The JSON schema of an agent service's ``POST /run`` body, as the wire decoder enforces it.

Split out of `conclave.services.openapi_docs` (the shared pieces: error body, response
models, links) because this one document is long and belongs to the agent services alone:
`agent_run_schema` describes both forms of a context (ids only, or data inline) exactly as
`conclave.pipeline.wire.decode_context` checks them, so schemathesis generates what the
route accepts (tests/services/test_openapi_contract.py). The answer's model
(`conclave.services.openapi_docs.AgentAnswer`) stays with the run models that embed it.
"""

from __future__ import annotations

from typing import Any

_NUMBERS = {"type": "array", "items": {"type": "number"}}
_INTEGERS = {"type": "array", "items": {"type": "integer"}}
_TEXT = {"type": ["string", "null"], "maxLength": 2000}
_COLUMNS = {
    "type": "object",
    "description": "one array per column, all of one length; rows must pass the gateway's "
    "row rules (high >= low, open and close within them, volumes not negative) and openTime "
    "must rise strictly: the first bad row is 422 naming it",
    "required": ["openTime", "open", "high", "low", "close", "volume"],
    "properties": {
        "openTime": _INTEGERS,
        **{k: _NUMBERS for k in ("open", "high", "low", "close", "volume", "takerBuyVolume")},
        "trades": _INTEGERS,
    },
    "additionalProperties": False,
}
_HEADLINE = {
    "type": "object",
    "required": ["publishedMs", "title"],
    "properties": {
        "publishedMs": {"type": "integer"},
        "title": {"type": "string", "maxLength": 2000},
        "source": _TEXT,
        "url": _TEXT,
        "assets": {"type": "array", "items": {"type": "string", "maxLength": 20}},
    },
    "additionalProperties": False,
}
_LIMITS = {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3}
_ACCOUNT = {
    "type": ["object", "null"],
    "properties": {
        "accountId": {"type": ["string", "null"], "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"},
        "equityTimeMs": _INTEGERS,
        "equity": {**_NUMBERS, "description": "as long as equityTimeMs"},
        "openExposure": {"type": "number"},
        "startOfDayEquity": {"type": ["number", "null"]},
        "readable": {"type": "boolean"},
        "error": _TEXT,
        "risk": {
            "type": ["object", "null"],
            "required": [
                "drawdownLimits",
                "dailyLossLimits",
                "maxExposure",
                "warnMultiplier",
                "reduceMultiplier",
                "blockedReason",
            ],
            "properties": {
                "drawdownLimits": _LIMITS,
                "dailyLossLimits": _LIMITS,
                "maxExposure": {"type": "number"},
                "warnMultiplier": {"type": "number"},
                "reduceMultiplier": {"type": "number"},
                "blockedReason": {"type": "string", "maxLength": 2000},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}


def agent_run_schema(
    symbols: tuple[str, ...], timeframes: tuple[str, ...], intervals: tuple[str, ...]
) -> dict[str, Any]:
    """The body of an agent's ``POST /run``, as `conclave.pipeline.wire.decode_context`
    enforces it: ids only (``symbols`` and ``timeframes`` are the allowlists the service
    reads data for), or data inline (any Binance interval of ``intervals``, ``asOf``
    required). Unknown top-level keys are ignored (seed clients send extras)."""
    account_id = {"type": ["string", "null"], "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"}
    as_of = {
        "description": "ms UTC or ISO 8601 (at most 40 characters), not before 1970; inline "
        "data is used as of it (later bars and headlines left out); ids only: at most one "
        "bar after now (default now)",
        "anyOf": [
            {"type": "integer", "minimum": 0, "maximum": 2**53 - 1},
            {"type": "string", "format": "date-time", "maxLength": 40},
        ],
    }
    ids_only = {
        "title": "ids only",
        "type": "object",
        "required": ["symbol", "timeframe"],
        "properties": {
            "accountId": account_id,
            "symbol": {"type": "string", "enum": list(symbols)},
            "timeframe": {"type": "string", "enum": list(timeframes)},
            "asOf": {**as_of, "anyOf": [*as_of["anyOf"], {"type": "null"}]},
            "candles": {"type": "null"},
        },
    }
    inline = {
        "title": "data inline",
        "type": "object",
        "required": ["symbol", "timeframe", "asOf", "candles"],
        "properties": {
            "accountId": account_id,
            "symbol": {"type": "string", "pattern": r"^[A-Z0-9]{2,20}$"},
            "timeframe": {"type": "string", "enum": list(intervals)},
            "asOf": as_of,
            "candles": {
                "type": "object",
                "description": "by timeframe; the run's timeframe is required",
                "propertyNames": {"enum": list(intervals)},
                "additionalProperties": _COLUMNS,
                "minProperties": 1,
            },
            "news": {"type": ["array", "null"], "items": _HEADLINE},
            "account": _ACCOUNT,
            "source": {"type": "string", "maxLength": 200},
            "simulated": {"type": "boolean"},
        },
    }
    return {"oneOf": [ids_only, inline]}
