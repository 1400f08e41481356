"""The agent services' JSON context: `AgentInput` to camelCase bytes and back, strictly.

One context, two forms (ARCHITECTURE.md, wire contract)::

    {"accountId": "demo" | null, "symbol": "BTCUSDT", "timeframe": "1h",
     "asOf": 1665486060000 | "2022-10-11T11:01:00Z",              (optional with ids only)
     "candles": {"1h": {"openTime": [...], "open": [...], "high": [...], "low": [...],
                        "close": [...], "volume": [...], "takerBuyVolume"?: [...],
                        "trades"?: [...]}, "4h": {...}},           (absent: ids only)
     "news": [{"publishedMs", "title", "source", "url", "assets"}] | null,
     "account": {"accountId", "equityTimeMs", "equity", "openExposure",
                 "startOfDayEquity", "readable", "error"} | null,
     "source": "file", "simulated": false}

Without ``candles`` the context carries ids only and the service resolves the data itself;
with them the data is used as of ``asOf``. Columns are one JSON array per field (compact,
and orjson writes numpy columns directly). Floats are written in their shortest round-trip
form, so a decoded column equals the encoded one bit for bit. Decoding goes from
``orjson.loads`` output straight into numpy, checking every field; the first problem raises
`WireError` naming it, down to the row (``candles.1h.close[17]: expected a number, got
null``). Candle rows pass the gateway's row rules (`validation.reject_invalid_rows`): the
first bad row is named with its column and rule (``candles.1h.high[17]: high below low``).
Unknown top-level keys are ignored (seed clients send extras); unknown keys inside
``candles``, ``news`` items and ``account`` are errors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from conclave.agents import AccountRisk, AccountState, AgentInput
from conclave.errors import InvalidRequestError, InvalidTimeframeError
from conclave.market.candles import Candles
from conclave.market.validation import reject_invalid_rows
from conclave.news.headline import Headline
from conclave.settings import SYMBOL_PATTERN
from conclave.timeframes import BINANCE_INTERVALS, Timeframe

#: Wire name of each candle column (snake_case attribute -> camelCase key).
COLUMNS: dict[str, str] = {
    "open_time": "openTime",
    "open": "open",
    "high": "high",
    "low": "low",
    "close": "close",
    "volume": "volume",
    "taker_buy_volume": "takerBuyVolume",
    "trades": "trades",
}
_REQUIRED = ("openTime", "open", "high", "low", "close", "volume")
_COLUMN_KEYS = frozenset(COLUMNS.values())
#: `Candles` attribute and wire key of every column after ``openTime``, in field order.
_DATA_COLUMNS = tuple((name, key) for name, key in COLUMNS.items() if name != "open_time")
_INT_COLUMNS = frozenset({"openTime", "trades"})
_NOT_A_COLUMN = np.zeros(0)
_I64, _F64 = np.dtype(np.int64), np.dtype(np.float64)
#: Every timeframe, parsed once (`Timeframe` values are frozen).
_TIMEFRAMES = {name: Timeframe.parse(name) for name in BINANCE_INTERVALS}
_ACCOUNT_KEYS = frozenset(
    {"accountId", "equityTimeMs", "equity", "openExposure", "startOfDayEquity", "readable",
     "error", "risk"}
)  # fmt: skip
#: Wire name of each `AccountRisk` field.
_RISK = {"drawdownLimits": "drawdown_limits", "dailyLossLimits": "daily_loss_limits",
         "maxExposure": "max_exposure", "warnMultiplier": "warn_multiplier",
         "reduceMultiplier": "reduce_multiplier", "blockedReason": "blocked_reason"}  # fmt: skip
_RISK_KEYS = frozenset(_RISK)
_NEWS_KEYS = frozenset({"publishedMs", "title", "source", "url", "assets"})
ACCOUNT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_MAX_TEXT = 2000
#: The column a row rule names (`validation._invalid_checks`); prices are found per row.
_RULE_COLUMN = {"high below low": "high", "high below open or close": "high",
                "low above open or close": "low", "negative volume": "volume",
                "bad taker-buy": "takerBuyVolume", "negative trade count": "trades"}  # fmt: skip


class WireError(InvalidRequestError):
    """A context field is missing or malformed; ``field`` is its dotted path."""

    reason = "invalid_context"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}", field=field)


@dataclass(frozen=True, slots=True)
class WireContext:
    """A decoded context: the ids, and the agent's input when the data came inline."""

    account_id: str | None
    symbol: str
    timeframe: str
    as_of_ms: int | None
    agent_input: AgentInput | None


# -- encode --------------------------------------------------------------------------------


def _columns(candles: Candles) -> dict[str, Any]:
    return {COLUMNS[name]: np.ascontiguousarray(col) for name, col in candles.columns().items()}


def _account(state: AccountState) -> dict[str, Any]:
    return {
        "accountId": state.account_id,
        "equityTimeMs": np.ascontiguousarray(state.equity_time_ms, dtype=np.int64),
        "equity": np.ascontiguousarray(state.equity, dtype=np.float64),
        "openExposure": float(state.open_exposure),
        "startOfDayEquity": state.start_of_day_equity,
        "readable": state.readable,
        "error": state.error,
        "risk": None if state.risk is None else _risk(state.risk),
    }


def _risk(risk: AccountRisk) -> dict[str, Any]:
    values = {key: getattr(risk, attr) for key, attr in _RISK.items()}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _limits(value: Any, field: str) -> tuple[float, float, float]:
    if not isinstance(value, list) or len(value) != 3:
        raise WireError(field, f"expected a list of 3 numbers, got {_kind(value)}")
    a, b, c = (_number(v, f"{field}[{i}]") for i, v in enumerate(value))
    return a, b, c


def _account_risk(value: Any) -> AccountRisk | None:
    if value is None:
        return None
    obj = _mapping(value, "account.risk")
    _unknown(obj, _RISK_KEYS, "account.risk")
    missing = [k for k in _RISK_KEYS if k not in obj]
    if missing:
        raise WireError(f"account.risk.{missing[0]}", "missing")
    return AccountRisk(
        drawdown_limits=_limits(obj["drawdownLimits"], "account.risk.drawdownLimits"),
        daily_loss_limits=_limits(obj["dailyLossLimits"], "account.risk.dailyLossLimits"),
        max_exposure=_number(obj["maxExposure"], "account.risk.maxExposure"),
        warn_multiplier=_number(obj["warnMultiplier"], "account.risk.warnMultiplier"),
        reduce_multiplier=_number(obj["reduceMultiplier"], "account.risk.reduceMultiplier"),
        blocked_reason=_text(obj["blockedReason"], "account.risk.blockedReason"),
    )


def context_dict(agent_input: AgentInput, *, account_id: str | None = None) -> dict[str, Any]:
    """The wire context of ``agent_input`` (numpy columns; serialise with `encode_input`).

    ``account_id`` defaults to the id of the input's account, when it has one.
    """
    if account_id is None and agent_input.account is not None:
        account_id = agent_input.account.account_id
    base = agent_input.candles
    candles = {agent_input.timeframe: _columns(base)}
    for tf, higher in agent_input.higher.items():
        candles.setdefault(tf, _columns(higher))
    news = None
    if agent_input.news is not None:
        news = [
            {"publishedMs": h.published_ms, "title": h.title, "source": h.source,
             "url": h.url, "assets": list(h.assets)}
            for h in agent_input.news
        ]  # fmt: skip
    return {
        "accountId": account_id,
        "symbol": agent_input.symbol,
        "timeframe": agent_input.timeframe,
        "asOf": agent_input.as_of_ms,
        "source": base.source,
        "simulated": base.simulated,
        "candles": candles,
        "news": news,
        "account": None if agent_input.account is None else _account(agent_input.account),
    }


def encode_input(agent_input: AgentInput, *, account_id: str | None = None) -> bytes:
    """``agent_input`` as the JSON wire context, data inline (see the module docstring)."""
    return orjson.dumps(
        context_dict(agent_input, account_id=account_id), option=orjson.OPT_SERIALIZE_NUMPY
    )


# -- decode --------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _text(value: Any, field: str, *, optional: bool = False, limit: int = _MAX_TEXT) -> str:
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise WireError(field, f"expected a string, got {_kind(value)}")
    if len(value) > limit:
        raise WireError(field, f"longer than {limit} characters")
    return value


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WireError(field, f"expected a number, got {_kind(value)}")
    return float(value)


def _instant_ms(value: Any, field: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53:
        return value
    if isinstance(value, str) and len(value) <= 40:
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            dt = dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)
            ms = round(dt.timestamp() * 1000)
            if 0 <= ms < 2**53:
                return ms
    raise WireError(field, "expected epoch milliseconds or an ISO 8601 time, after 1970")


def _array(value: Any, field: str, *, integer: bool, length: int | None) -> Any:
    """A list of JSON numbers as a read-only numpy column; strict about type and length.

    numpy infers the dtype (``np.array`` with one given would read ``"1.5"`` as 1.5), and
    the result is the column itself: `Candles` takes it as it is, no second copy.
    """
    if type(value) is not list or (length is not None and len(value) != length):
        raise WireError(field, _expected(integer, length))
    if not value:
        arr = np.zeros(0, dtype=_I64 if integer else _F64)
    else:
        try:
            arr = np.array(value)
        except (ValueError, TypeError, OverflowError):  # ragged or nested lists, huge integers
            arr = _NOT_A_COLUMN
        dtype = arr.dtype
        if arr.shape != (len(value),) or not (dtype is _I64 or (dtype is _F64 and not integer)):
            arr = _other_dtype(arr, value, field, integer, length)
    arr.setflags(write=False)
    return arr


def _expected(integer: bool, length: int | None) -> str:
    size = "" if length is None else f" {length}"
    return f"expected a list of{size} {'integers' if integer else 'numbers'}"


def _other_dtype(arr: Any, value: list[Any], field: str, integer: bool, length: int | None) -> Any:
    """``arr`` as int64 or float64 when numpy found numbers in another dtype, else raise."""
    kind = arr.dtype.kind
    if arr.shape != (len(value),) or not (kind == "i" or (kind == "f" and not integer)):
        _bad_item(value, field, integer)
        raise WireError(field, _expected(integer, length))
    return arr.astype(_I64 if integer else _F64)  # JSON has no NaN or infinity: all finite


def _bad_item(value: list[Any], field: str, integer: bool) -> None:
    """Raise `WireError` naming the first item of ``value`` that is not a JSON number."""
    want, kinds = ("an integer", int) if integer else ("a number", int | float)
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, kinds):
            raise WireError(f"{field}[{i}]", f"expected {want}, got {_kind(v)}")


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise WireError(field, f"expected an object, got {_kind(value)}")
    return value


def _unknown(obj: Mapping[str, Any], known: frozenset[str] | Mapping[str, Any], field: str) -> None:
    for key in obj:
        if key not in known:
            raise WireError(f"{field}.{str(key)[:40]}", "unknown field")


def _candles(
    value: Any, field: str, symbol: str, timeframe: Timeframe, source: str, simulated: bool
) -> Candles:
    obj = _mapping(value, field)
    _unknown(obj, _COLUMN_KEYS, field)
    for key in _REQUIRED:
        if key not in obj:
            raise WireError(f"{field}.{key}", "missing")
    open_time = _array(obj["openTime"], f"{field}.openTime", integer=True, length=None)
    n = len(open_time)
    if n > 1 and not (open_time[1:] > open_time[:-1]).all():
        back = int(np.flatnonzero(np.diff(open_time) <= 0)[0]) + 1
        raise WireError(f"{field}.openTime[{back}]", "not after the row before it")
    cols: dict[str, Any] = {
        name: _array(obj[key], f"{field}.{key}", integer=key in _INT_COLUMNS, length=n)
        if key in obj else None
        for name, key in _DATA_COLUMNS
    }  # fmt: skip
    # the columns are fresh read-only arrays of one length: no copy through `from_arrays`
    candles = Candles(symbol, timeframe, open_time, **cols, source=source, simulated=simulated)
    if not _rows_valid(candles):
        _reject_rows(candles, obj, field)
    return candles


def _rows_valid(c: Candles) -> bool:
    """True when no row breaks a rule of `validation.reject_invalid_rows`, in fewer array
    operations than the rules take one by one.

    Each rule broken makes this false: the low above 0 and below the open and the close,
    the high above both, keep every price positive and the high above the low; a NaN fails
    every comparison, and an infinite open, low or close fails one (JSON has no infinity:
    the checks are for what else might build candles). False only means "ask the rules",
    which `_reject_rows` does.
    """
    o, h, lo, cl, v, tb = c.open, c.high, c.low, c.close, c.volume, c.taker_buy_volume
    ok = (lo > 0) & (h >= np.maximum(o, cl)) & (lo <= np.minimum(o, cl)) & (v >= 0)
    ok &= np.isfinite(h) & np.isfinite(v)
    if tb is not None:
        ok &= (tb >= 0) & (tb <= v * (1 + 1e-9)) & np.isfinite(tb)
    if c.trades is not None:
        ok &= c.trades >= 0
    return bool(ok.all())


def _reject_rows(candles: Candles, obj: Mapping[str, Any], field: str) -> None:
    """Raise `WireError` naming the first row `validation.reject_invalid_rows` rejects."""
    _, rejected = reject_invalid_rows(candles)
    if not rejected:
        return
    row = int(np.searchsorted(candles.open_time, rejected[0].open_time_ms))
    rule = rejected[0].reason
    column = _RULE_COLUMN.get(rule) or next(
        (k for k in ("open", "high", "low", "close") if not obj[k][row] > 0), None
    )
    more = f" (and {len(rejected) - 1} more rows)" if len(rejected) > 1 else ""
    raise WireError(f"{field}.{column}[{row}]" if column else f"{field}[{row}]", rule + more)


def _news(value: Any) -> list[Headline] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise WireError("news", f"expected a list or null, got {_kind(value)}")
    out: list[Headline] = []
    for i, item in enumerate(value):
        field = f"news[{i}]"
        obj = _mapping(item, field)
        _unknown(obj, _NEWS_KEYS, field)
        published = obj.get("publishedMs")
        if isinstance(published, bool) or not isinstance(published, int):
            raise WireError(f"{field}.publishedMs", "expected epoch milliseconds")
        assets = obj.get("assets", [])
        if not isinstance(assets, list):
            raise WireError(f"{field}.assets", f"expected a list, got {_kind(assets)}")
        out.append(
            Headline(
                published_ms=published,
                title=_text(obj.get("title"), f"{field}.title"),
                source=_text(obj.get("source"), f"{field}.source", optional=True),
                url=_text(obj.get("url"), f"{field}.url", optional=True),
                assets=tuple(
                    _text(a, f"{field}.assets[{j}]", limit=20) for j, a in enumerate(assets)
                ),
            )
        )
    return out


def _account_state(value: Any) -> AccountState | None:
    if value is None:
        return None
    obj = _mapping(value, "account")
    _unknown(obj, _ACCOUNT_KEYS, "account")
    times = _array(obj.get("equityTimeMs", []), "account.equityTimeMs", integer=True, length=None)
    equity = _array(obj.get("equity", []), "account.equity", integer=False, length=len(times))
    sod = obj.get("startOfDayEquity")
    readable = obj.get("readable", True)
    if not isinstance(readable, bool):
        raise WireError("account.readable", f"expected true or false, got {_kind(readable)}")
    return AccountState(
        account_id=_account_id(obj.get("accountId"), "account.accountId"),
        equity_time_ms=times,
        equity=equity,
        open_exposure=_number(obj.get("openExposure", 0.0), "account.openExposure"),
        start_of_day_equity=None if sod is None else _number(sod, "account.startOfDayEquity"),
        readable=readable,
        error=_text(obj.get("error"), "account.error", optional=True),
        risk=_account_risk(obj.get("risk")),
    )


def _account_id(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not ACCOUNT_ID_PATTERN.match(value):
        raise WireError(field, f"expected null or an id matching {ACCOUNT_ID_PATTERN.pattern}")
    return value


def check_timeframe(value: Any, field: str = "timeframe") -> str:
    """``value`` as a known timeframe name; `WireError` naming ``field`` otherwise."""
    return _timeframe(value, field).name


def _timeframe(value: Any, field: str) -> Timeframe:
    tf = _TIMEFRAMES.get(value) if type(value) is str else None
    if tf is not None:
        return tf
    try:
        return Timeframe.parse(value)
    except InvalidTimeframeError as exc:
        raise WireError(field, str(exc)) from None


def decode_context(data: Any) -> WireContext:
    """Check a parsed JSON context field by field; `WireError` names the first bad one."""
    obj = _mapping(data, "body")
    symbol = obj.get("symbol")
    if not isinstance(symbol, str) or not SYMBOL_PATTERN.match(symbol):
        raise WireError(
            "symbol", f"expected an upper-case symbol matching {SYMBOL_PATTERN.pattern}"
        )
    timeframe = check_timeframe(obj.get("timeframe"))
    account_id = _account_id(obj.get("accountId"), "accountId")
    raw_as_of = obj.get("asOf")
    as_of_ms = None if raw_as_of is None else _instant_ms(raw_as_of, "asOf")
    if obj.get("candles") is None:
        return WireContext(account_id, symbol, timeframe, as_of_ms, None)
    if as_of_ms is None:
        raise WireError("asOf", "required when the candles are inline")
    source = _text(obj.get("source", "wire"), "source", limit=200)
    simulated = obj.get("simulated", False)
    if not isinstance(simulated, bool):
        raise WireError("simulated", f"expected true or false, got {_kind(simulated)}")
    by_tf = _mapping(obj["candles"], "candles")
    if timeframe not in by_tf:
        raise WireError(f"candles.{timeframe}", "missing (the run's timeframe is required)")
    frames: dict[str, Candles] = {}
    for key, value in by_tf.items():
        tf = _timeframe(key, f"candles.{str(key)[:20]}")
        frames[tf.name] = _candles(value, f"candles.{tf.name}", symbol, tf, source, simulated)
    base = frames.pop(timeframe)
    news, account = _news(obj.get("news")), _account_state(obj.get("account"))
    agent_input = AgentInput(symbol, timeframe, as_of_ms, base, frames, news, account)
    return WireContext(account_id, symbol, timeframe, as_of_ms, agent_input)
