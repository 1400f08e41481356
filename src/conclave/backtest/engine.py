"""The backtest: the live agents, decision, paper execution and risk rules over history.

`run_backtest` runs three phases over a `history.History`, each the live code's own
arithmetic:

1. **Agents, vectorized** (`signals.agent_series`): every analysis agent's `Agent.series`
   once over the whole history, usable where the live step would be ok.
2. **The decision, vectorized** (`signals.pre_decide`): conviction, confidence, action and
   strength before the risk manager's verdict.
3. **The account, bar by bar** (`account_loop.simulate`): the risk manager's verdict, the
   fill at the next open, equity at the close, halt / resume, the next order. It runs
   compiled (`fast_loop.simulate_compiled`, numba) unless ``loop="python"`` asks for the
   pure-Python reference, which a test holds it equal to bit for bit.

Gaps in the history are reported (`BacktestResult.gaps`), never filled: a bar's order fills
at the next bar that exists, as in live trading.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Literal

import numpy as np

from conclave.agents import Agent
from conclave.backtest.account_loop import simulate
from conclave.backtest.fast_loop import simulate_compiled
from conclave.backtest.history import History
from conclave.backtest.result import BLOCKED, NONE, AgentSeries, BacktestResult, Gap
from conclave.backtest.settings import BacktestSettings, Progress
from conclave.backtest.signals import PreDecision, agent_series, fresh_mask, pre_decide
from conclave.market.validation import find_gaps
from conclave.pipeline.decision import RISK_AGENT


def run_backtest(
    history: History,
    agents: Mapping[str, Agent],
    settings: BacktestSettings,
    *,
    progress: Progress | None = None,
    loop: Literal["compiled", "python"] = "compiled",
    series: Mapping[str, AgentSeries] | None = None,
) -> BacktestResult:
    """Agents, decision and account over ``history``'s period (see the module docstring);
    ``loop`` picks the account loop's implementation (the same result either way).

    ``series``: the agents' series `signals.agent_series` already computed over this
    ``history`` with these ``agents`` (a sweep computes them once); None computes them.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    fresh = fresh_mask(history)
    if series is None:
        series = agent_series(history, agents, progress, fresh=fresh)
    timings["agents_s"] = time.perf_counter() - t0
    n_all = len(history.candles)

    t1 = time.perf_counter()
    pre_all = pre_decide(series, settings.decision, n_all)
    s = history.start
    pre = PreDecision(*(getattr(pre_all, f)[s:] for f in PreDecision.__slots__))
    timings["decision_s"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    period = history.period
    account = simulate_compiled if loop == "compiled" else simulate
    trace = account(period, pre, settings, progress)
    timings["account_s"] = time.perf_counter() - t2
    timings["total_s"] = time.perf_counter() - t0

    cut = {name: _cut(a, s) for name, a in series.items()}
    if RISK_AGENT in agents:
        m, ok = len(period), fresh[s:]
        cut[RISK_AGENT] = AgentSeries(RISK_AGENT, np.zeros(m), np.where(ok, 100.0, 0.0), ok)
    action = trace.action
    if RISK_AGENT not in agents:  # never tradable without the risk manager (RELIABILITY C5)
        action = np.where(pre.made, BLOCKED, NONE).astype(np.int8)
    gaps = find_gaps(period)
    equity = trace.equity
    exposure = np.divide(trace.exposure_abs, equity, out=np.zeros_like(equity),
                         where=equity > 0)  # fmt: skip
    return BacktestResult(
        symbol=history.symbol,
        timeframe=history.timeframe,
        source=history.source,
        simulated=history.simulated,
        open_time=period.open_time,
        close_time=period.close_time,
        open=period.open,
        close=period.close,
        agents=cut,
        conviction=pre.conviction,
        confidence=pre.confidence,
        action=action,
        size_multiplier=np.where(action == BLOCKED, 0.0, trace.size_multiplier),
        risk_level=trace.risk_level,
        allowed=trace.allowed,
        equity=equity,
        cash=trace.cash,
        position_qty=trace.qty,
        exposure=exposure,
        fills=trace.fills if RISK_AGENT in agents else (),
        gaps=tuple(Gap(g.after_open_ms, g.before_open_ms, g.missing_bars) for g in gaps.gaps),
        starting_balance=settings.starting_balance,
        fee_rate=settings.fee_rate,
        slippage=settings.slippage,
        settings=settings.to_json()
        | {"agents": list(agents), "warmupBars": s, "resampled": sorted(history.resampled)},
        timings=timings,
        trace=trace,
    )


def _cut(a: AgentSeries, s: int) -> AgentSeries:
    return AgentSeries(
        a.name, a.score[s:], a.confidence[s:], a.usable[s:], a.status, a.reason, a.min_bars,
        a.seconds, columns={k: v[s:] for k, v in a.columns.items()},
    )  # fmt: skip
