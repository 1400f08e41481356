"""The agent contract: declarations, typed parameters, inputs, outputs and the base class.

An agent declares its name, version, description, what it `Needs` and its frozen `Params`,
and implements one pure method, `Agent.compute`, vectorized over the candle window: a score
in [-1, 1] and a confidence in [0, 100] for every bar, plus the evidence for the last bar.
The base class owns the rest (the framework owns the lifecycle): `Agent.run` checks the
window is long enough (too short gives status ``insufficient_data``, never an exception),
calls `compute`, validates the output, times the call and wraps any exception in an
`AgentError` naming the agent. `Agent.series` is the backtester's entry: one pass over the
whole history, same maths, so the live result is the last bar of that series.

Point in time: an agent reads no clock and does no I/O. Every per-bar value depends only on
the bars of a bounded trailing window (``Needs.min_bars`` long), computed with operations
whose rounding does not depend on where the array starts, so the live result on the last
``lookback`` bars equals the backtester's value at that bar exactly.
"""

from __future__ import annotations

import difflib
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar, Literal, Self

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, ValidationError

from conclave.agents.plain import check_plain, wire_answer
from conclave.errors import (
    AgentConfigError,
    AgentError,
    AgentOutputError,
    InsufficientDataError,
)
from conclave.market.candles import Candles
from conclave.timeframes import BINANCE_INTERVALS, Timeframe

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Status = Literal["ok", "insufficient_data", "stale_data", "error"]


@lru_cache(maxsize=4096)  # pure, and the same bar times recur from run to run
def iso_ms(t_ms: int) -> str:
    """ISO 8601 UTC text with milliseconds, e.g. ``2025-12-06T10:30:00.000Z``."""
    y, mo, d, h, mi, s = time.gmtime(t_ms // 1000)[:6]
    return f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}.{t_ms % 1000:03d}Z"


class AgentParams(BaseModel):
    """Typed, frozen agent parameters; unknown keys are errors. Build with `from_mapping`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None = None) -> Self:
        """Validate ``values``; raise `AgentConfigError` naming the key (and the nearest name)."""
        values = dict(values or {})
        known = list(cls.model_fields)
        for key in values:
            if key not in cls.model_fields:
                near = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else f"; known: {', '.join(known)}"
                raise AgentConfigError(f"unknown parameter {key!r} for {cls.__name__}{hint}")
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise AgentConfigError(
                f"invalid parameter {where!r} for {cls.__name__}: {first['msg']}"
            ) from exc


@dataclass(frozen=True, slots=True)
class Needs:
    """What an agent needs: bars, higher timeframes (multiples of the run's), news, account.

    ``min_bars`` is the trailing window every per-bar value depends on (fewer bars give
    ``insufficient_data``); ``lookback`` is how many bars the caller should fetch (at least
    ``min_bars``). ``higher`` lists multiples of the run's timeframe, mapped by
    `higher_timeframes` to the nearest exchange interval the run's timeframe tiles.
    ``higher_in_lookback`` declares that the higher bars read all lie within the time span
    of the ``lookback`` window (as when they are resampled from it), so a caller may send
    only those (`conclave.pipeline.context.InputPlan`); False (default): send them whole.
    """

    min_bars: int
    lookback: int
    higher: tuple[int, ...] = ()
    news: bool = False
    account: bool = False
    higher_in_lookback: bool = False

    def higher_timeframes(self, timeframe: Timeframe | str) -> tuple[str, ...]:
        """Concrete higher timeframes for a run on ``timeframe`` (1h with (4, 24): 4h, 1d)."""
        return _higher_timeframes(self.higher, str(timeframe))


@lru_cache(maxsize=256)
def _higher_timeframes(multiples: tuple[int, ...], timeframe: str) -> tuple[str, ...]:
    base = Timeframe.parse(timeframe)
    out: list[str] = []
    for mult in multiples:
        for name in BINANCE_INTERVALS:
            cand = Timeframe.parse(name)
            if cand.ms >= mult * base.ms and base.divides(cand) and name not in out:
                out.append(name)
                break
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Headline:
    """One news headline; ``published_ms`` is when it became public (ms UTC).

    ``assets`` lists the base assets it is about (``("BTC",)``); empty means the agent
    decides from the title.
    """

    published_ms: int
    title: str
    source: str = ""
    url: str = ""
    assets: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AccountRisk:
    """An account's own risk levels, overriding the risk-manager agent's parameters.

    Limits are fractions (warn, reduce, halt) as in `RiskManagerParams`; a non-empty
    ``blocked_reason`` (account paused or halted, streak guard) makes the level ``halt``.
    """

    drawdown_limits: tuple[float, float, float]
    daily_loss_limits: tuple[float, float, float]
    max_exposure: float
    warn_multiplier: float
    reduce_multiplier: float
    blocked_reason: str = ""


@dataclass(frozen=True, slots=True, eq=False)
class AccountState:
    """An account's state as of a run: equity history, open exposure, and whether it was read.

    ``equity_time_ms``/``equity`` are the equity curve (quote currency, ascending times).
    ``start_of_day_equity`` overrides the equity at 00:00 UTC of the last point's day.
    ``readable`` is false when the account is named but its state could not be read;
    ``error`` then says why. ``account_id`` None means no account was named. ``risk``,
    when given, carries the account's own risk levels (else the agent's parameters apply).
    """

    account_id: str | None
    equity_time_ms: I64 = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    equity: F64 = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    open_exposure: float = 0.0
    start_of_day_equity: float | None = None
    readable: bool = True
    error: str = ""
    risk: AccountRisk | None = None

    @classmethod
    def fresh(cls) -> AccountState:
        """No account named: assessed as a fresh account with no drawdown."""
        return cls(account_id=None)

    @classmethod
    def unreadable(cls, account_id: str, error: str) -> AccountState:
        """A named account whose state could not be read (not tradable)."""
        return cls(account_id=account_id, readable=False, error=error)


@dataclass(frozen=True, slots=True, eq=False)
class AgentInput:
    """Everything an agent sees: closed candles of the run's timeframe and its extras.

    ``candles`` holds closed bars only; ``higher`` maps timeframe names to closed higher
    bars (agents that need them resample ``candles`` when absent). ``news`` None means no
    news source is configured; ``account`` None means no account was named.
    """

    symbol: str
    timeframe: str
    as_of_ms: int
    candles: Candles
    higher: Mapping[str, Candles] = field(default_factory=dict)
    news: Sequence[Headline] | None = None
    account: AccountState | None = None

    def window(self, stop: int, length: int) -> AgentInput:
        """The same input cut to the ``length`` bars ending before index ``stop``."""
        start = max(0, stop - length)
        whole = stop >= len(self.candles) or stop <= 0
        return AgentInput(
            self.symbol,
            self.timeframe,
            self.as_of_ms if whole else int(self.candles.close_time[stop - 1]),
            self.candles.take(slice(start, stop)),
            self.higher,
            self.news,
            self.account,
        )


@dataclass(frozen=True, slots=True, eq=False)
class SeriesOutput:
    """Per-bar score (-1..1) and confidence (0..100), same length as the candles.

    ``evidence`` describes the last bar in plain JSON types. ``status``/``reason`` let an
    agent say why it has no view (news-sentiment without a source: confidence 0 and why).
    ``columns`` holds per-bar numbers the decision reads from the evidence (each the same
    length as ``score``; volatility-regime: ``size_multiplier``), so the backtester has
    every bar's value, not only the last one's.
    """

    score: F64
    confidence: F64
    evidence: dict[str, Any]
    status: Status = "ok"
    reason: str = ""
    columns: Mapping[str, F64] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AgentResult:
    """One agent's answer for the last bar, in the shape of the wire contract."""

    score: float
    confidence: float
    payload: dict[str, Any]
    agent: str
    version: str
    duration_ms: float
    timestamp: str
    as_of: str | None
    status: Status = "ok"
    reason: str = ""

    def to_wire(self) -> dict[str, Any]:
        """``{"score", "confidence", "payload", "meta": {...}}`` exactly as on the wire."""
        return wire_answer(
            self.score, self.confidence, self.payload,
            agent=self.agent, version=self.version, duration_ms=self.duration_ms,
            timestamp=self.timestamp, as_of=self.as_of, status=self.status, reason=self.reason,
        )  # fmt: skip


@lru_cache(maxsize=256)
def _own_last(cls: type) -> bool:
    """False when a subclass overrides `compute` but not `compute_last` (run uses compute)."""
    own = [next(k for k in cls.__mro__ if m in vars(k)) for m in ("compute_last", "compute")]
    return issubclass(own[0], own[1])


class Agent(ABC):
    """Base of the nine agents: declare, then implement `compute`; `run` does the rest."""

    name: ClassVar[str]
    version: ClassVar[str]
    description: ClassVar[str]
    needs: ClassVar[Needs]
    Params: ClassVar[type[AgentParams]]

    params: AgentParams

    def __init__(self, params: AgentParams | Mapping[str, Any] | None = None) -> None:
        if isinstance(params, AgentParams):
            if not isinstance(params, self.Params):
                raise AgentConfigError(
                    f"{self.name}: expected {self.Params.__name__}, got {type(params).__name__}"
                )
            self.params = params
        else:
            self.params = self.Params.from_mapping(params)

    def min_bars(self, timeframe: str) -> int:
        """Bars of ``timeframe`` the per-bar value depends on (the trailing window)."""
        return self.needs.min_bars

    def lookback(self, timeframe: str) -> int:
        """Bars the caller should fetch for a run on ``timeframe``."""
        return max(self.needs.lookback, self.min_bars(timeframe))

    @abstractmethod
    def compute(self, data: AgentInput) -> SeriesOutput:
        """Score and confidence for every bar of ``data.candles``; evidence for the last.

        Pure: no I/O, no clock. Bars before the first full window get score 0, confidence 0.
        """

    def info(self) -> dict[str, Any]:
        """Declarations for ``GET /info``: needs, parameters in effect and their schema."""
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "needs": {
                "min_bars": self.needs.min_bars,
                "lookback": self.needs.lookback,
                "higher": list(self.needs.higher),
                "news": self.needs.news,
                "account": self.needs.account,
            },
            "parameters": self.params.model_dump(mode="json"),
            "parameters_schema": self.Params.model_json_schema(),
        }

    def _validate(self, out: SeriesOutput, n: int) -> None:
        """Check shapes, ranges and evidence; ``n`` 1 checks with plain floats (the live bar)."""
        for label, arr in (("score", out.score), ("confidence", out.confidence)):
            if not isinstance(arr, np.ndarray) or arr.shape != (n,):
                shape = getattr(arr, "shape", None)
                raise AgentOutputError(
                    f"{self.name}: {label} must be an array of {n} values, got shape {shape}",
                    agent=self.name,
                )
        for key, col in out.columns.items():
            if not isinstance(col, np.ndarray) or col.shape != (n,):
                raise AgentOutputError(
                    f"{self.name}: column {key!r} must be an array of {n} values", agent=self.name
                )
        s, c = out.score, out.confidence
        if n == 1:
            s_, c_ = float(s[0]), float(c[0])
            finite = math.isfinite(s_) and math.isfinite(c_)
            inside = abs(s_) <= 1.0 and 0.0 <= c_ <= 100.0
        elif n:
            finite = bool(np.isfinite(s).all() and np.isfinite(c).all())
            inside = bool(np.abs(s).max() <= 1.0 and c.min() >= 0.0 and c.max() <= 100.0)
        if n and not finite:
            raise AgentOutputError(f"{self.name}: non-finite score or confidence", agent=self.name)
        if n and not inside:
            raise AgentOutputError(
                f"{self.name}: score must lie in [-1, 1] and confidence in [0, 100]"
                f" (last: {float(s[-1])}, {float(c[-1])})",
                agent=self.name,
            )
        try:
            check_plain(out.evidence, "payload")
        except TypeError as exc:
            raise AgentOutputError(f"{self.name}: {exc}", agent=self.name) from exc

    def _insufficient(self, n: int, reason: str) -> SeriesOutput:
        zeros = np.zeros(n, dtype=np.float64)
        return SeriesOutput(zeros, zeros.copy(), {}, "insufficient_data", reason)

    def series(self, data: AgentInput) -> SeriesOutput:
        """The whole history in one pass (the backtester's entry); validated like `run`."""
        n = len(data.candles)
        need = self.min_bars(data.timeframe)
        if n < need:
            return self._insufficient(n, f"needs {need} closed bars of {data.timeframe}, got {n}")
        try:
            out = self.compute(data)
        except InsufficientDataError as exc:
            return self._insufficient(n, str(exc))
        except AgentError:
            raise
        except Exception as exc:
            raise AgentError(f"{self.name} failed: {exc!r}", agent=self.name) from exc
        self._validate(out, n)
        return out

    def compute_last(self, data: AgentInput) -> SeriesOutput:
        """Score and confidence of the LAST bar only (arrays of length 1) and its evidence.

        Defaults to the last bar of `compute`. An agent may override it to skip per-bar work
        the last bar does not need, with the same arithmetic, so the result equals the last
        bar of `compute` bit for bit (tests/agents/test_live.py checks every agent). `run`
        ignores an override when a subclass overrides `compute` but not `compute_last`.
        """
        out = self.compute(data)
        last = {k: v[-1:] for k, v in out.columns.items()}
        return SeriesOutput(
            out.score[-1:], out.confidence[-1:], out.evidence, out.status, out.reason, last
        )

    def run(self, data: AgentInput, *, now_iso: str) -> AgentResult:
        """The live result for the last bar; `AgentError` (naming the agent) on failure.

        Only the last `lookback` bars are used and only the last bar is computed
        (`compute_last`): every per-bar value depends on its trailing ``min_bars`` window
        alone, so this equals the last bar of `series` over the whole history exactly (the
        contract and live tests check it). Only the returned bar is validated.
        """
        t0 = time.perf_counter()
        n = len(data.candles)
        keep = self.lookback(data.timeframe)
        if n > keep:
            data = data.window(n, keep)
            n = keep
        need = self.min_bars(data.timeframe)
        score = conf = 0.0
        if n < need:
            out = self._insufficient(0, f"needs {need} closed bars of {data.timeframe}, got {n}")
        else:
            try:
                own = _own_last(type(self))  # else a subclass overrode compute alone
                out = self.compute_last(data) if own else Agent.compute_last(self, data)
            except InsufficientDataError as exc:
                out = self._insufficient(0, str(exc))
            except AgentError:
                raise
            except Exception as exc:
                raise AgentError(f"{self.name} failed: {exc!r}", agent=self.name) from exc
            else:
                self._validate(out, 1)
                score, conf = float(out.score[0]), float(out.confidence[0])
        cd = data.candles
        as_of = iso_ms(cd.timeframe.close_time(int(cd.open_time[-1]))) if n else None
        took = (time.perf_counter() - t0) * 1000.0  # the fields in order: score .. as_of
        res = (score, conf, out.evidence, self.name, self.version, took, now_iso, as_of)
        return AgentResult(*res, status=out.status, reason=out.reason)
