"""The signals over the whole history, vectorized: every agent's series, then the decision.

1. **Agents.** Every analysis agent's `Agent.series` runs ONCE over the whole history (the
   same classes and parameters the live pipeline runs; their per-bar values depend only on a
   bounded trailing window, so the value at bar t is what the live step computes at t).
   The agents are independent and pure, so ``workers`` threads may run them (the same
   values; the numpy work releases the GIL). One thread is the default: on a busy 2-core
   machine two threads measured slower, not faster (benchmarks/backtest.py prints both).
2. **The decision.** `conclave.pipeline.decision.decide`'s formula over arrays: which agents
   are usable at each bar (the live step would be ok; not where the agent had no data),
   conviction, confidence, action and strength before the risk manager's verdict (which
   `account_loop` gives bar by bar). The arithmetic is `decide`'s, operation for operation
   and in the same order, so the two agree bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from conclave.agents import Agent, SeriesOutput
from conclave.backtest.history import History
from conclave.backtest.result import BUY, F64, HOLD, NONE, SELL, AgentSeries, B
from conclave.backtest.settings import Progress
from conclave.market.resample import closed_index_at
from conclave.market.validation import stale_before
from conclave.pipeline.decision import (
    ANALYSIS_AGENTS,
    DIRECTIONAL_AGENTS,
    RISK_AGENT,
    SIZING_AGENT,
    DecisionConfig,
)
from conclave.timeframes import Timeframe

# -- phase 1: the agents -------------------------------------------------------------------


def fresh_mask(history: History) -> B:
    """Bars at whose close the live gateway would find every timeframe fresh.

    The bar itself is always the newest base bar; a higher timeframe is stale when its
    newest closed bar opened more than 2 bars + 5 min before (`validation.check_fresh`), as
    at the start of a history, or after a gap. There the live run has no signal at all.
    """
    close = history.candles.close_time
    ok = np.ones(len(close), dtype=bool)
    for name, hc in history.higher.items():
        htf = Timeframe.parse(name)
        if len(hc) == 0:
            return np.zeros(len(close), dtype=bool)
        idx = closed_index_at(hc, close)
        newest = np.where(idx >= 0, hc.open_time[np.maximum(idx, 0)], np.iinfo(np.int64).min)
        ok &= (idx >= 0) & (newest >= stale_before(htf, close))
    return ok


def agent_series(
    history: History,
    agents: Mapping[str, Agent],
    progress: Progress | None = None,
    *,
    fresh: B | None = None,
    workers: int = 1,
) -> dict[str, AgentSeries]:
    """Every analysis agent's series over the whole history, with where it is usable.

    An agent is usable at a bar when its window is long enough (``min_bars``), its series
    succeeded, it had input there (`SeriesOutput.has_data`; else the live step's status is
    ``no_data``) and the data is fresh there (`fresh_mask`; else the live run fails every
    step with ``stale_data``); pass ``fresh`` when it is already known. ``workers``
    threads run the agents (1: one after another in this thread); an agent's ``seconds``
    is its own wall time.
    """
    n = len(history.candles)
    idx = np.arange(n)
    if fresh is None:
        fresh = fresh_mask(history)
    out: dict[str, AgentSeries] = {}
    names = [a for a in agents if a != RISK_AGENT]
    pool = ThreadPoolExecutor(workers) if workers > 1 and len(names) > 1 else None
    try:
        pending = [pool.submit(_timed, agents[n], history) for n in names] if pool else []
        for k, name in enumerate(names):
            got = pending[k].result() if pool else _timed(agents[name], history)
            out[name] = _usable(name, agents[name], *got, history, idx, fresh)
            if progress is not None:
                progress("agents", k + 1, len(names))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return out


def _timed(agent: Agent, history: History) -> tuple[SeriesOutput, float]:
    """The agent's series over the history, and the wall time it took (s)."""
    t0 = time.perf_counter()
    res = history.series(agent)
    return res, time.perf_counter() - t0


def _usable(
    name: str,
    agent: Agent,
    res: SeriesOutput,
    took: float,
    history: History,
    idx: npt.NDArray[np.int64],
    fresh: B,
) -> AgentSeries:
    """The agent's series where the live step would be ok, zero elsewhere."""
    n = idx.shape[0]
    need = agent.min_bars(history.timeframe)
    answered = res.status in ("ok", "no_data")
    enough = history.bars_seen >= need  # the live window holds the filled bars (B3)
    usable = enough & fresh & res.has_data() if answered else np.zeros(n, bool)
    if name == SIZING_AGENT:
        mult = res.columns.get("size_multiplier")
        if mult is None:
            usable = np.zeros(n, dtype=bool)
        else:
            usable = usable & np.isfinite(mult) & (mult >= 0.0) & (mult <= 1.0)
    score = np.where(usable, res.score, 0.0)
    conf = np.where(usable, res.confidence, 0.0)
    return AgentSeries(
        name, score, conf, usable, res.status, res.reason, need, took,
        columns={k_: np.asarray(v) for k_, v in res.columns.items()},
    )  # fmt: skip


# -- phase 2: the decision before the risk verdict -------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class PreDecision:
    """`decide`'s arithmetic at every bar before the risk manager's verdict.

    ``made`` is false where no decision is made (quorum not met, or no directional weight).
    ``action`` holds BUY/SELL/HOLD codes where made, NONE elsewhere.
    """

    made: B
    conviction: F64
    confidence: F64
    action: npt.NDArray[np.int8]
    strength: F64
    vol_mult: F64


def pre_decide(series: Mapping[str, AgentSeries], config: DecisionConfig, n: int) -> PreDecision:
    """The decision's formula over arrays (`conclave.pipeline.decision` module docstring)."""
    zeros = np.zeros(n)
    never = np.zeros(n, dtype=bool)
    healthy = np.zeros(n, dtype=np.int64)
    for a in ANALYSIS_AGENTS:
        s = series.get(a)
        healthy += s.usable if s is not None else never
    total_w = zeros.copy()
    for a in DIRECTIONAL_AGENTS:
        s = series.get(a)
        if s is not None:
            total_w += np.where(s.usable, config.weight(a), 0.0)
    made = (healthy >= config.quorum) & (total_w > 0)
    safe_w = np.where(total_w > 0, total_w, 1.0)
    # decide's operations in decide's order (its agents in registry order): equal bits
    sum_wc, net, spread = zeros.copy(), zeros.copy(), zeros.copy()
    for a in DIRECTIONAL_AGENTS:
        s = series.get(a)
        if s is None:
            continue
        wc = np.where(s.usable, config.weight(a) * s.confidence, 0.0)
        pull = wc * s.score
        sum_wc += wc
        net += pull
        spread += np.abs(pull)
    has_wc = sum_wc > 0
    conviction = np.where(has_wc, net / np.where(has_wc, sum_wc, 1.0), 0.0)
    agreement = np.where(spread > 0, np.abs(net) / np.where(spread > 0, spread, 1.0), 0.0)
    confidence = np.minimum(100.0, sum_wc / safe_w * agreement)
    action = np.full(n, HOLD, dtype=np.int8)
    action[conviction >= config.buy_threshold] = BUY
    action[conviction <= -config.sell_threshold] = SELL
    strength = np.where(
        action != HOLD, np.minimum(1.0, np.abs(conviction) / config.strong_threshold), 0.0
    )
    vol = series.get(SIZING_AGENT)
    if vol is not None and "size_multiplier" in vol.columns:
        vol_mult = np.where(vol.usable, vol.columns["size_multiplier"],
                            config.volatility_fallback)  # fmt: skip
    else:
        vol_mult = np.full(n, config.volatility_fallback)
    action[~made] = NONE
    nan = np.full(n, np.nan)
    return PreDecision(
        made,
        np.where(made, conviction, nan),
        np.where(made, confidence, nan),
        action,
        np.where(made, strength, 0.0),
        vol_mult,
    )
