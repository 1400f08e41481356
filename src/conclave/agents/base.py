"""The agent base class: an agent declares, implements `Agent.compute`; the base runs it.

An agent declares its name, version, description, what it `Needs` and its frozen `Params`
(`conclave.agents.params`), and implements one pure method, `Agent.compute`, vectorized over
the candle window (`conclave.agents.inputs`): a score in [-1, 1] and a confidence in
[0, 100] for every bar, plus the evidence for the last bar (`conclave.agents.outputs`).
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

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np

from conclave.agents.inputs import AgentInput, Needs
from conclave.agents.outputs import AgentResult, SeriesOutput
from conclave.agents.params import AgentParams
from conclave.agents.plain import check_plain
from conclave.agents.scoring import iso_time
from conclave.errors import (
    AgentConfigError,
    AgentError,
    AgentOutputError,
    InsufficientDataError,
)
from conclave.market.candles import Candles
from conclave.timeframes import Timeframe


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
        keep, need = self._sizes(data.timeframe)
        if n > keep:
            data = data.window(n, keep)
            n = keep
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
                score, conf = self._validate_last(out)
        as_of = _close_iso(data.candles) if n else None
        took = (time.perf_counter() - t0) * 1000.0
        return AgentResult(score, conf, out.evidence, self.name, self.version, took, now_iso,
                            as_of, out.status, out.reason)  # fmt: skip

    def _sizes(self, timeframe: str) -> tuple[int, int]:
        """``(lookback, min_bars)`` for ``timeframe``, asked once per (frozen) parameter
        object: the live step reads them on every call."""
        memo: tuple[AgentParams, dict[str, tuple[int, int]]] | None
        memo = self.__dict__.get("_sizes_memo")
        if memo is None or memo[0] is not self.params:
            memo = (self.params, {})
            self.__dict__["_sizes_memo"] = memo
        got = memo[1].get(timeframe)
        if got is None:
            got = memo[1][timeframe] = (self.lookback(timeframe), self.min_bars(timeframe))
        return got

    def _validate_last(self, out: SeriesOutput) -> tuple[float, float]:
        """`_validate` of the live bar (``n`` 1); its score and confidence as floats.

        The common case (exact arrays of one value in range) is checked inline; anything
        else goes through `_validate`, which raises the error naming what is wrong.
        """
        s, c = out.score, out.confidence
        if type(s) is np.ndarray and type(c) is np.ndarray and s.shape == c.shape == (1,):
            s_, c_ = float(s.item()), float(c.item())
            # NaN fails every comparison and infinities the bounds: finite and inside
            ok = -1.0 <= s_ <= 1.0 and 0.0 <= c_ <= 100.0
            for col in out.columns.values():
                ok = ok and type(col) is np.ndarray and col.shape == (1,)
            if ok:
                try:
                    check_plain(out.evidence, "payload")
                except TypeError as exc:
                    raise AgentOutputError(f"{self.name}: {exc}", agent=self.name) from exc
                return s_, c_
        self._validate(out, 1)  # raises: something above failed
        return float(s[0]), float(c[0])


#: `bar_ms` by timeframe name (a str hashes and compares in C; a `Timeframe` key would
#: call its dataclass ``__hash__`` and ``__eq__``: most of the live step's ``as_of``).
_BAR_MS: dict[str, int] = {}


def bar_ms(tf: Timeframe) -> int:
    """A bar's length in ms, 0 for months (their length varies): then a bar's close time
    is its open time plus this (`Timeframe.close_time` without its arrays)."""
    step = _BAR_MS.get(tf.name)
    if step is None:
        step = _BAR_MS[tf.name] = 0 if tf.is_monthly else tf.ms
    return step


def close_ms(tf: Timeframe, open_ms: int) -> int:
    """`Timeframe.close_time` of one bar (ms), quickly where bars have a fixed length."""
    step = bar_ms(tf)
    return open_ms + step if step else tf.close_time(open_ms)


def _close_iso(cd: Candles) -> str:
    """The close time of the last bar of ``cd`` as ISO text (``as_of`` of the answer)."""
    return iso_time(close_ms(cd.timeframe, cd.open_time.item(-1)))
