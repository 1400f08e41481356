"""Proofs that the backtest is honest: parity with the live pipeline, and no lookahead.

`check_parity` picks bars (seeded), runs the LIVE in-process pipeline at each with
``as_of`` at that bar's close: the gateway over the same source reads only the bars the
live path would have, the account reader gives the state the backtest's account had then,
and every agent runs through its live `Agent.run` (its own lookback, last bar only). Every
agent's score and confidence, whether it was usable, and the decision (action, conviction,
confidence, size multiplier) are compared with the backtest's values at that bar. Besides
the random bars it checks each agent's first usable bar and the bar before it, where a
too-short warm-up would show.

`check_lookahead` recomputes every agent's series on the history cut at bar t (only the
candles, higher bars and headlines known at t's close) and requires it to equal the full
history's series up to t exactly, bit for bit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from conclave.agents import AccountState, Agent
from conclave.backtest.account_loop import account_state_at
from conclave.backtest.history import History
from conclave.backtest.result import ACTIONS, BacktestResult
from conclave.backtest.settings import BacktestSettings
from conclave.market.gateway import MarketGateway
from conclave.market.resample import resample
from conclave.market.sources.base import CandleSource
from conclave.news.sources import NewsSource
from conclave.pipeline.orchestrator import Pipeline
from conclave.timeframes import iso_ms

#: Largest absolute difference parity tolerates.
TOLERANCE = 1e-9
ACCOUNT_ID = "backtest"


@dataclass(slots=True)
class ParityReport:
    """What `check_parity` compared and found.

    ``max_abs_diff`` is the largest absolute difference of any score, confidence,
    conviction or size multiplier; ``mismatches`` lists bars where a status or the action
    differed (those count as failures whatever the numbers say).
    """

    bars: list[int] = field(default_factory=list)
    compared: int = 0
    max_abs_diff: float = 0.0
    worst: str = ""
    per_agent: dict[str, float] = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def ok(self, tolerance: float = TOLERANCE) -> bool:
        """True when every value agrees within ``tolerance`` and no status or action differs."""
        return not self.mismatches and self.max_abs_diff <= tolerance

    def note(self, what: str, diff: float, key: str) -> None:
        diff = float(diff)
        self.compared += 1
        if diff > self.per_agent.get(key, 0.0):
            self.per_agent[key] = diff
        if diff > self.max_abs_diff or (math.isnan(diff) and not math.isnan(self.max_abs_diff)):
            self.max_abs_diff = diff
            self.worst = what

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "bars": len(self.bars),
            "valuesCompared": self.compared,
            "maxAbsDiff": self.max_abs_diff,
            "tolerance": TOLERANCE,
            "worst": self.worst,
            "perAgent": dict(sorted(self.per_agent.items())),
            "mismatches": self.mismatches[:20],
            "mismatchCount": len(self.mismatches),
            "ok": self.ok(),
            "seconds": self.seconds,
        }


class TraceReader:
    """An `AccountReader` giving the backtest account's state at each bar of ``result``."""

    def __init__(self, result: BacktestResult, settings: BacktestSettings) -> None:
        self.result = result
        self.settings = settings
        self._index = {int(t): i for i, t in enumerate(result.close_time.tolist())}

    async def read(self, account_id: str, *, as_of_ms: int) -> AccountState:
        i = self._index.get(as_of_ms)
        if i is None:
            raise LookupError(f"no bar of the backtest closes at {iso_ms(as_of_ms)}")
        return account_state_at(self.result, i, account_id, self.settings.account)


def parity_bars(result: BacktestResult, n: int, seed: int) -> list[int]:
    """``n`` bars of the period drawn with ``seed``, plus each agent's warm-up edge."""
    m = len(result)
    rng = np.random.default_rng(seed)
    picked = set(rng.choice(m, size=min(n, m), replace=False).tolist()) if n > 0 else set()
    for series in result.agents.values():
        first = np.flatnonzero(series.usable)
        if first.size and n > 0:
            picked.update(i for i in (int(first[0]) - 1, int(first[0])) if 0 <= i < m)
    return sorted(picked)


async def check_parity(
    result: BacktestResult,
    agents: Mapping[str, Agent],
    settings: BacktestSettings,
    source: CandleSource,
    *,
    n: int,
    seed: int = 0,
    news_source: NewsSource | None = None,
    progress: Any = None,
) -> ParityReport:
    """Compare the live pipeline with ``result`` at ``n`` seeded bars (module docstring)."""
    t0 = time.perf_counter()
    report = ParityReport(bars=parity_bars(result, n, seed))
    gateway = MarketGateway(source, resample=settings.resample)
    pipeline = Pipeline(
        gateway,
        agents=agents,
        news_source=news_source,
        account_reader=TraceReader(result, settings),
        decision_config=settings.decision,
        parallel=False,
    )
    try:
        for k, i in enumerate(report.bars):
            as_of = int(result.close_time[i])
            run = await pipeline.run(
                ACCOUNT_ID, result.symbol, result.timeframe, as_of_ms=as_of, now_iso=iso_ms(as_of)
            )
            _compare(report, result, i, run)
            if progress is not None:
                progress("parity", k + 1, len(report.bars))
    finally:
        await pipeline.aclose()
    report.seconds = time.perf_counter() - t0
    return report


def _compare(report: ParityReport, result: BacktestResult, i: int, run: Any) -> None:
    when = iso_ms(int(result.open_time[i]))
    for name, step in run.steps.items():
        bt = result.agents.get(name)
        if bt is None:
            report.mismatches.append(f"{when} {name}: ran live but not in the backtest")
            continue
        if bool(step.ok) != bool(bt.usable[i]):
            live = "ok" if step.ok else f"{step.status} ({step.error})"
            back = "usable" if bt.usable[i] else "not usable"
            report.mismatches.append(f"{when} {name}: live {live}, backtest {back}")
            continue
        if step.ok:
            report.note(f"{when} {name}.score", abs(step.score - bt.score[i]), name)
            report.note(f"{when} {name}.confidence", abs(step.confidence - bt.confidence[i]), name)
    d = run.decision
    back_action = ACTIONS[int(result.action[i])]
    live_action = d.action if d.action is not None else "NONE"
    if live_action != back_action:
        report.mismatches.append(
            f"{when} decision: live {live_action} ({d.reason}), backtest {back_action}"
        )
        return
    if d.conviction is not None:
        report.note(f"{when} decision.conviction", abs(d.conviction - result.conviction[i]),
                    "decision")  # fmt: skip
        report.note(f"{when} decision.confidence", abs(d.confidence - result.confidence[i]),
                    "decision")  # fmt: skip
    report.note(f"{when} decision.sizeMultiplier",
                abs(d.size_multiplier - result.size_multiplier[i]), "decision")  # fmt: skip


# -- no lookahead --------------------------------------------------------------------------


def history_until(history: History, t: int) -> History:
    """``history`` as known at bar ``t``'s close: bars to t, higher bars and news closed by it."""
    candles = history.candles.take(slice(0, t + 1))
    close = int(candles.close_time[-1])
    higher = {}
    for name, hc in history.higher.items():
        if name in history.resampled:
            higher[name] = resample(candles, name, trim_leading=True)
        else:
            higher[name] = hc.take(hc.close_time <= close)
    news = None
    if history.news is not None:
        news = tuple(h for h in history.news if h.published_ms <= close)
    return History(
        history.symbol, history.timeframe, candles, min(history.start, t), higher,
        history.resampled, news, history.source, history.simulated,
    )  # fmt: skip


@dataclass(slots=True)
class LookaheadReport:
    """Per agent: cut points checked, and bars where the cut series differed from the full."""

    cuts: list[int] = field(default_factory=list)
    differing: dict[str, int] = field(default_factory=dict)
    first_difference: dict[str, str] = field(default_factory=dict)
    agents: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def ok(self) -> bool:
        """True when every cut series equals the full series exactly."""
        return not any(self.differing.values())

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "cuts": len(self.cuts),
            "agents": self.agents,
            "differingBars": dict(self.differing),
            "firstDifference": dict(self.first_difference),
            "ok": self.ok(),
            "seconds": self.seconds,
        }


def lookahead_cuts(n_bars: int, k: int, seed: int) -> list[int]:
    """``k`` cut points (seeded) plus the first and last bars."""
    rng = np.random.default_rng(seed + 1)
    picked = set(rng.choice(n_bars, size=min(k, n_bars), replace=False).tolist())
    picked.update({0, n_bars - 1})
    return sorted(picked)


def check_lookahead(
    history: History,
    agents: Mapping[str, Agent],
    *,
    cuts: int,
    seed: int = 0,
    progress: Any = None,
) -> LookaheadReport:
    """Series on the history cut at each of ``cuts`` bars equals the full series up to it."""
    t0 = time.perf_counter()
    names = [a for a in agents if a != "risk-manager"]
    full = {a: history.series(agents[a]) for a in names}
    report = LookaheadReport(cuts=lookahead_cuts(len(history.candles), cuts, seed), agents=names)
    for a in names:
        report.differing[a] = 0
    for k, t in enumerate(report.cuts):
        known = history_until(history, t)
        for a in names:
            cut = known.series(agents[a])
            whole = full[a]
            arrays = [(cut.score, whole.score[: t + 1])]
            arrays.append((cut.confidence, whole.confidence[: t + 1]))
            arrays += [(cut.columns[c], whole.columns[c][: t + 1]) for c in cut.columns]
            bad = np.zeros(t + 1, dtype=bool)
            for got, want in arrays:
                bad |= ~((got == want) | (np.isnan(got) & np.isnan(want)))
            if bad.any():
                report.differing[a] += int(bad.sum())
                j = int(np.flatnonzero(bad)[0])
                report.first_difference.setdefault(
                    a, f"cut at {iso_ms(int(history.candles.open_time[t]))}: bar "
                    f"{iso_ms(int(history.candles.open_time[j]))} differs"
                )  # fmt: skip
        if progress is not None:
            progress("lookahead", k + 1, len(report.cuts))
    report.seconds = time.perf_counter() - t0
    return report
