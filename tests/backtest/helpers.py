"""Hand-built `BacktestResult`s for the metrics, skill, export and report tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from conclave.backtest.result import (
    BUY,
    HOLD,
    SELL,
    AgentSeries,
    BacktestResult,
    Fill,
    Gap,
)
from conclave.pipeline.context import StepResult
from conclave.pipeline.decision import ALL_AGENTS
from conclave.timeframes import Timeframe

T0 = 1_609_459_200_000  # 2021-01-01T00:00:00.000Z
F64 = npt.NDArray[np.float64]


def f64(values: Sequence[float] | npt.ArrayLike) -> F64:
    return np.asarray(values, dtype=np.float64)


def agent(
    name: str,
    score: npt.ArrayLike,
    confidence: npt.ArrayLike | None = None,
    usable: npt.ArrayLike | None = None,
) -> AgentSeries:
    """An agent series; confidence defaults to 50 and usable to True everywhere."""
    s = f64(score)
    c = np.full(s.size, 50.0) if confidence is None else f64(confidence)
    u = np.ones(s.size, dtype=np.bool_) if usable is None else np.asarray(usable, dtype=np.bool_)
    return AgentSeries(name=name, score=s, confidence=c, usable=u)


def make_result(
    close: npt.ArrayLike,
    *,
    open_: npt.ArrayLike | None = None,
    equity: npt.ArrayLike | None = None,
    position_qty: npt.ArrayLike | None = None,
    exposure: npt.ArrayLike | None = None,
    conviction: npt.ArrayLike | None = None,
    confidence: npt.ArrayLike | None = None,
    action: npt.ArrayLike | None = None,
    agents: Sequence[AgentSeries] = (),
    fills: Sequence[Fill] = (),
    gaps: Sequence[Gap] = (),
    timeframe: str = "1h",
    start_ms: int = T0,
    starting_balance: float = 1000.0,
    fee_rate: float = 0.0,
    slippage: float = 0.0,
    symbol: str = "BTCUSDT",
    source: str = "test",
    simulated: bool = False,
    settings: Mapping[str, Any] | None = None,
    timings: Mapping[str, float] | None = None,
) -> BacktestResult:
    """A result over ``close``; bars are contiguous from ``start_ms`` (close time = open +
    bar length), open defaults to close, equity to a flat ``starting_balance``, no position,
    conviction 0 and confidence 50, HOLD everywhere."""
    c = f64(close)
    n = c.size
    ms = Timeframe.parse(timeframe).ms
    open_time = start_ms + ms * np.arange(n, dtype=np.int64)
    eq = np.full(n, starting_balance) if equity is None else f64(equity)
    qty = np.zeros(n) if position_qty is None else f64(position_qty)
    expo = (qty * c / eq) if exposure is None else f64(exposure)
    return BacktestResult(
        symbol=symbol,
        timeframe=timeframe,
        source=source,
        simulated=simulated,
        open_time=open_time,
        close_time=open_time + ms,
        open=c.copy() if open_ is None else f64(open_),
        close=c,
        agents={a.name: a for a in agents},
        conviction=np.zeros(n) if conviction is None else f64(conviction),
        confidence=np.full(n, 50.0) if confidence is None else f64(confidence),
        action=(
            np.full(n, HOLD, dtype=np.int8) if action is None else np.asarray(action, dtype=np.int8)
        ),
        size_multiplier=np.zeros(n),
        risk_level=np.zeros(n, dtype=np.int8),
        allowed=np.ones(n, dtype=np.bool_),
        equity=eq,
        cash=eq - qty * c,
        position_qty=qty,
        exposure=expo,
        fills=tuple(fills),
        gaps=tuple(gaps),
        starting_balance=starting_balance,
        fee_rate=fee_rate,
        slippage=slippage,
        settings=dict(settings or {}),
        timings=dict(timings or {}),
    )


AGENT_NAMES = ALL_AGENTS


def synthetic(n: int, *, seed: int = 7, n_fills: int = 400) -> BacktestResult:
    """A realistic-sized result: a random walk, nine agents (volatility-regime and
    risk-manager always 0), a decision, ``n_fills`` alternating fills, some gaps."""
    rng = np.random.default_rng(seed)
    close = 30_000.0 * np.exp(np.cumsum(rng.normal(0.0, 0.004, n)))
    open_ = np.concatenate([[close[0]], close[:-1]])
    nxt = np.concatenate([close[1:] / close[:-1] - 1.0, [0.0]])
    agents = []
    for k, name in enumerate(AGENT_NAMES):
        if name in ("volatility-regime", "risk-manager"):
            score = np.zeros(n)
        else:
            score = np.tanh(0.2 * k * nxt / 0.004 + rng.normal(0, 1, n))
        usable = np.arange(n) >= 50 * k
        score[~usable] = 0.0
        agents.append(agent(name, score, rng.uniform(0, 100, n), usable))
    conviction = np.clip(rng.normal(0, 0.3, n), -1, 1)
    conviction[:100] = np.nan
    qty = np.zeros(n)
    fills = []
    bars = np.sort(rng.choice(np.arange(1, n), size=n_fills, replace=False))
    t = T0 + 3_600_000 * np.arange(n, dtype=np.int64)
    for j, i in enumerate(bars.tolist()):
        buy = j % 2 == 0
        q = 0.01
        if buy:
            qty[i:] += q
        else:
            qty[i:] = 0.0
        fills.append(
            Fill(
                time_ms=int(t[i]),
                decision_ms=int(t[i - 1]),
                side="BUY" if buy else "SELL",
                qty=q,
                price=float(open_[i]),
                fee=q * float(open_[i]) * 0.001,
                realised_pnl=None if buy else float(rng.normal(0, 5)),
                reason="synthetic",
            )
        )
    equity = 10_000.0 + np.cumsum(qty * (close - open_))
    action = np.where(np.isnan(conviction), 0, np.where(conviction > 0.15, BUY, HOLD))
    action = np.where(conviction < -0.15, SELL, action)
    gaps = [Gap(int(t[i]), int(t[i + 1]), 3) for i in (1_000, n // 2)]
    return make_result(
        close,
        open_=open_,
        equity=equity,
        position_qty=qty,
        conviction=conviction,
        confidence=np.where(np.isnan(conviction), np.nan, rng.uniform(0, 100, n)),
        action=action,
        agents=agents,
        fills=fills,
        gaps=gaps,
        starting_balance=10_000.0,
        fee_rate=0.001,
        slippage=0.0005,
        settings={"fee_rate": 0.001, "max_position_fraction": np.float64(0.25)},
        timings={"agents": 1.5, "replay": 0.25},
    )


RISK_ALLOWS = StepResult("risk-manager", "ok", 0.0, 100.0,
                         {"allowed": True, "size_multiplier": 1.0}, 0.0)  # fmt: skip


def live_steps(
    series: Mapping[str, AgentSeries], i: int, *, no_data: Sequence[str] = ()
) -> dict[str, StepResult]:
    """The steps a live run records at bar ``i`` of ``series``: ok where usable (with the
    volatility multiplier), else ``no_data`` for the agents named so, else an error; the risk
    manager allowing at 1.0."""
    steps: dict[str, StepResult] = {"risk-manager": RISK_ALLOWS}
    for name, s in series.items():
        if s.usable[i]:
            payload = {"size_multiplier": float(s.columns["size_multiplier"][i])}
            steps[name] = StepResult(name, "ok", float(s.score[i]), float(s.confidence[i]),
                                     payload, 0.0)  # fmt: skip
        elif name in no_data:
            steps[name] = StepResult.failed(name, "no_data", "no headlines")
        else:
            steps[name] = StepResult.failed(name, "error", "boom")
    return steps
