"""What one pipeline run knows (`PipelineContext`) and what each step answered (`StepResult`).

A `PipelineContext` holds everything the agents of one run read: the account, symbol,
timeframe and point in time, the closed candles of the `MarketSnapshot` by timeframe, the
news and the account state. `PipelineContext.input_for` cuts it to one agent's own lookback
(``Agent.lookback``), so an agent sees exactly the window the backtester gives it at the
same bar and the live result equals the backtester's value bit for bit.

`PipelineContext.from_snapshot` fills each timeframe's window (RELIABILITY.md B3,
`conclave.market.validation.fill_window`): a bar the exchange did not give, up to the newest
one closed at ``as_of_ms``, is a flat bar at the previous close with volume 0, so every step
the agents see is exactly one timeframe; ``gaps`` says how many bars of each window were
filled. The backtest's `History` fills its series the same way.

A `StepResult` is one agent's answer as the orchestrator records it. A step that did not
give a usable answer (error, timeout, stale or insufficient data, values out of range) has
``score`` and ``confidence`` ``None``: it is never counted as a score of 0. Nor has a step
with status ``no_data`` (the agent had no input to speak from, e.g. news-sentiment without
a news source): not a failure, so the run is not degraded, but the decision leaves it out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import numpy as np

from conclave.agents import AccountState, Agent, AgentInput, AgentResult
from conclave.agents.plain import wire_answer
from conclave.market.candles import Candles
from conclave.market.gateway import MarketSnapshot
from conclave.market.validation import FillReport, fill_window
from conclave.news.headline import Headline
from conclave.slots import slot_setters
from conclave.timeframes import Timeframe

StepStatus = Literal["ok", "no_data", "insufficient_data", "stale_data", "error", "timeout"]
STEP_STATUSES: tuple[StepStatus, ...] = (
    "ok",
    "no_data",
    "insufficient_data",
    "stale_data",
    "error",
    "timeout",
)


class AccountReader(Protocol):
    """An account's state as of ``as_of_ms``; raises when it cannot be read."""

    async def read(self, account_id: str, *, as_of_ms: int) -> AccountState: ...


@dataclass(frozen=True, slots=True, eq=False)
class PipelineContext:
    """Everything the agents of one run read, point in time (``as_of_ms``, ms UTC).

    ``candles`` maps timeframe names to closed candles (the run's ``timeframe`` and the
    higher ones). ``news`` None means no news source; ``news_error`` says why reading the
    configured one failed (the news agent's step then fails with that reason). ``gaps``
    maps timeframe names to how many bars of that window were filled (B3).
    """

    account_id: str | None
    symbol: str
    timeframe: str
    as_of_ms: int
    candles: Mapping[str, Candles]
    news: Sequence[Headline] | None = None
    news_error: str = ""
    account: AccountState = field(default_factory=AccountState.fresh)
    source: str = ""
    simulated: bool = False
    gaps: Mapping[str, FillReport] = field(default_factory=dict)

    @classmethod
    def from_snapshot(
        cls,
        snapshot: MarketSnapshot,
        *,
        account_id: str | None,
        news: Sequence[Headline] | None = None,
        news_error: str = "",
        account: AccountState | None = None,
    ) -> PipelineContext:
        """A context over ``snapshot``'s candles, each window with its missing bars filled
        (fresh account state unless given)."""
        candles: dict[str, Candles] = {}
        gaps: dict[str, FillReport] = {}
        for name, window in snapshot.candles.items():
            candles[name], gaps[name] = fill_window(window, snapshot.as_of_ms)
        return cls(
            account_id=account_id,
            symbol=snapshot.symbol,
            timeframe=snapshot.timeframe,
            as_of_ms=snapshot.as_of_ms,
            candles=candles,
            news=news,
            news_error=news_error,
            account=account if account is not None else AccountState.fresh(),
            source=snapshot.source,
            simulated=snapshot.simulated,
            gaps=gaps,
        )

    @property
    def base(self) -> Candles:
        """The candles of the run's timeframe."""
        return self.candles[self.timeframe]

    @property
    def filled(self) -> dict[str, FillReport]:
        """The windows that had bars filled (B3), by timeframe name; empty when complete."""
        return {name: report for name, report in self.gaps.items() if report.filled}

    def input_for(self, agent: Agent) -> AgentInput:
        """The input ``agent`` sees: its own lookback of bars and only what it declares."""
        return self.input(InputPlan.of(agent, self.timeframe))

    def input(self, plan: InputPlan) -> AgentInput:
        """The input described by ``plan`` (see `InputPlan.of`); the bars are views."""
        candles = self.candles[self.timeframe].tail(plan.lookback)
        higher: dict[str, Candles] = {}
        if plan.higher:
            for i, tf in enumerate(plan.higher):
                got = self.candles.get(tf)
                if got is not None:
                    higher[tf] = got.tail(plan.higher_bars[i]) if plan.higher_bars else got
        account = None
        if plan.account:
            first_close = int(candles.close_time[0]) if len(candles) else self.as_of_ms
            account = account_window(self.account, first_close)
        news = self.news if plan.news else None
        return AgentInput(
            self.symbol, self.timeframe, self.as_of_ms, candles, higher, news, account
        )


_DAY_MS = 86_400_000


def account_window(account: AccountState, first_close_ms: int) -> AccountState:
    """``account`` with only the equity points that can change what the risk manager
    says about bars closing at ``first_close_ms`` or later, so a run's context stays
    bounded while the recorded curve grows (one point a bar: a 1m account passed the
    agent services' 1 MiB body limit in about three weeks).

    The risk manager reads, for each bar, the last point at or before its close, the
    running peak up to it, the last point at or before 00:00 UTC of that point's day,
    and the first point (its fallback when none precedes the day). Kept: every point from
    the last one at or before the day start of the first bar's point, the first point,
    and the highest point before them (it carries the peak); the values it computes are
    the same to the bit (``tests/pipeline/test_account_window.py``).
    """
    times, equity = account.equity_time_ms, account.equity
    n = int(times.shape[0])
    if n < 3:
        return account
    first = int(np.searchsorted(times, first_close_ms, side="right")) - 1
    if first <= 0:
        return account
    day_start = (int(times[first]) // _DAY_MS) * _DAY_MS
    keep_from = int(np.searchsorted(times, day_start, side="right")) - 1
    if keep_from <= 2:
        return account
    top = int(np.argmax(equity[1:keep_from])) + 1  # the first of the highest, after point 0
    index = np.concatenate(([0, top], np.arange(keep_from, n)))
    return replace(account, equity_time_ms=times[index], equity=equity[index])


@dataclass(frozen=True, slots=True)
class InputPlan:
    """What one agent reads on one timeframe: bars, higher timeframes, news, account.

    ``higher_bars`` gives, per entry of ``higher``, how many of the newest bars of that
    timeframe to pass; empty passes them whole (see `higher_bars`).
    """

    lookback: int
    higher: tuple[str, ...]
    news: bool
    account: bool
    higher_bars: tuple[int, ...] = ()

    @classmethod
    def of(cls, agent: Agent, timeframe: str) -> InputPlan:
        """``agent``'s declarations resolved for a run on ``timeframe``."""
        needs = agent.needs
        lookback = agent.lookback(timeframe)
        higher = needs.higher_timeframes(timeframe)
        bars = higher_bars(timeframe, higher, lookback) if needs.higher_in_lookback else ()
        return cls(lookback, higher, needs.news, needs.account, bars)


def fetch_plan(agents: Iterable[Agent], timeframe: str) -> tuple[int, tuple[str, ...]]:
    """Bars of ``timeframe`` to fetch for ``agents`` (their longest lookback) and the higher
    timeframes they read, in the order they name them."""
    limit, higher = 1, []
    for agent in agents:
        limit = max(limit, agent.lookback(timeframe))
        higher += [t for t in agent.needs.higher_timeframes(timeframe) if t not in higher]
    return limit, tuple(higher)


def higher_limits(plans: Sequence[InputPlan]) -> dict[str, int] | None:
    """Bars of each higher timeframe the ``plans`` read: per timeframe the most any plan
    uses, or None when a plan takes its higher timeframes whole (fetch them whole)."""
    counts: dict[str, int] = {}
    for plan in plans:
        if plan.higher and not plan.higher_bars:
            return None
        for tf, n in zip(plan.higher, plan.higher_bars, strict=True):
            counts[tf] = max(n, counts.get(tf, 0))
    return counts or None


def higher_bars(timeframe: str, higher: Sequence[str], lookback: int) -> tuple[int, ...]:
    """Bars of each of ``higher`` that cover ``lookback`` bars of ``timeframe``, with room.

    For an agent whose higher bars lie within the span of its lookback window
    (``Needs.higher_in_lookback``): the bars overlapping that span (at most
    ``ceil(span / bar) + 1``), a tenth more for calendar months shorter than the nominal 30
    days, and one more for a higher bar closed after the run's last bar. Passing only these
    leaves the agent's result unchanged (tests/services/test_parity.py checks it) and cuts
    multi-timeframe's request on 1h from 75 KB to 32 KB (4h: 109 bars, 1d: 20, not 399).
    """
    span = lookback * Timeframe.parse(timeframe).ms
    out: list[int] = []
    for name in higher:
        per = -(-span // Timeframe.parse(name).ms)  # ceil
        out.append(per + per // 10 + 2)
    return tuple(out)


def valid_values(score: object, confidence: object) -> bool:
    """True when ``score`` is a finite number in [-1, 1] and ``confidence`` one in [0, 100]."""
    for value, lo, hi in ((score, -1.0, 1.0), (confidence, 0.0, 100.0)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not (math.isfinite(value) and lo <= value <= hi):
            return False
    return True


@dataclass(frozen=True, slots=True, init=False)
class StepResult:
    """One agent's recorded answer; ``score``/``confidence`` are None unless it succeeded.

    ``status`` is ``ok``, ``no_data``, ``insufficient_data``, ``stale_data``, ``error`` or
    ``timeout``; ``error`` is the reason for any other status (empty when ok).
    ``duration_ms`` is the wall time the runner spent on the step (queueing in an executor
    included).
    """

    agent: str
    status: StepStatus
    score: float | None
    confidence: float | None
    payload: dict[str, Any]
    duration_ms: float
    version: str = ""
    timestamp: str = ""
    as_of: str | None = None
    error: str = ""

    def __init__(
        self,
        agent: str,
        status: StepStatus,
        score: float | None,
        confidence: float | None,
        payload: dict[str, Any],
        duration_ms: float,
        version: str = "",
        timestamp: str = "",
        as_of: str | None = None,
        error: str = "",
    ) -> None:
        # nine steps a pipeline run: the slots written through their descriptors, as
        # `conclave.agents.outputs` does, in about half the generated ``__init__``'s time
        _sr_agent(self, agent)
        _sr_status(self, status)
        _sr_score(self, score)
        _sr_confidence(self, confidence)
        _sr_payload(self, payload)
        _sr_duration_ms(self, duration_ms)
        _sr_version(self, version)
        _sr_timestamp(self, timestamp)
        _sr_as_of(self, as_of)
        _sr_error(self, error)

    @property
    def ok(self) -> bool:
        """True when the step succeeded with finite, in-range values."""
        return self.status == "ok" and valid_values(self.score, self.confidence)

    @classmethod
    def failed(
        cls,
        agent: str,
        status: StepStatus,
        reason: str,
        *,
        duration_ms: float = 0.0,
        timestamp: str = "",
        version: str = "",
        as_of: str | None = None,
    ) -> StepResult:
        """A step without a usable answer (``status`` other than ok), with why."""
        if status == "ok":
            raise ValueError("a failed step needs a status other than 'ok'")
        return cls(agent, status, None, None, {}, duration_ms, version, timestamp, as_of, reason)

    @classmethod
    def from_result(cls, result: AgentResult, *, duration_ms: float | None = None) -> StepResult:
        """Record an `AgentResult`; out-of-range or non-finite values make it an error."""
        took = result.duration_ms if duration_ms is None else duration_ms
        s, c = result.score, result.confidence
        # the common case first: exact floats in range (NaN fails every comparison and
        # the infinities the bounds), a dict payload; anything else is checked below
        if (
            result.status == "ok"
            and type(s) is float
            and type(c) is float
            and -1.0 <= s <= 1.0
            and 0.0 <= c <= 100.0
            and type(result.payload) is dict
        ):
            return cls(result.agent, "ok", s, c, result.payload, took, result.version,
                       result.timestamp, result.as_of)  # fmt: skip
        meta = (result.version, result.timestamp, result.as_of)
        if result.status != "ok":
            reason = result.reason or result.status
            return cls.failed(result.agent, result.status, reason, duration_ms=took,
                              version=meta[0], timestamp=meta[1], as_of=meta[2])  # fmt: skip
        if not valid_values(s, c) or not isinstance(result.payload, dict):
            reason = (
                f"invalid_output: score {s!r} must lie in [-1, 1] and confidence"
                f" {c!r} in [0, 100], payload an object"
            )
            return cls.failed(result.agent, "error", reason, duration_ms=took,
                              version=meta[0], timestamp=meta[1], as_of=meta[2])  # fmt: skip
        return cls(result.agent, "ok", float(s), float(c), result.payload, took, result.version,
                   result.timestamp, result.as_of)  # fmt: skip

    def to_wire(self) -> dict[str, Any]:
        """``{"score", "confidence", "payload", "meta": {...}}`` in the seed's shape."""
        return wire_answer(
            self.score, self.confidence, self.payload,
            agent=self.agent, version=self.version, duration_ms=round(self.duration_ms, 3),
            timestamp=self.timestamp, as_of=self.as_of, status=self.status, reason=self.error,
        )  # fmt: skip


(
    _sr_agent, _sr_status, _sr_score, _sr_confidence, _sr_payload, _sr_duration_ms,
    _sr_version, _sr_timestamp, _sr_as_of, _sr_error,
) = slot_setters(StepResult)  # fmt: skip
