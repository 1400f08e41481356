"""The backtest's decision and account loop against a plain replay of the live code.

For random stretches of real BTC 1h history and random account terms (tight limits, so
that halts, resumes, cooldowns and the streak guard all happen), a reference replays the
period bar by bar with the live functions themselves and nothing vectorized or cached:
`decide` on `StepResult`s, the `RiskManager` agent on an `AccountState` built from the
curve so far, `accounts.paper` sizing and fills (lot rules included),
`accounts.risk.assess`/`transition`/`auto_resume` (a halted, flat account resumes after
``halt_resume_s`` and its curve restarts there, as `accounts.ledger.record` and the reader's
``risk_since_ms`` do)/`after_trade`/`order_blocked` (entries only), and the ``flatten``
halt action as `accounts.ledger.decide` applies it. The engine must give the
same action, size, risk level, equity, halt status and fills.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conclave.accounts import AccountConfig, paper
from conclave.accounts.paper import Bar, Position
from conclave.accounts.risk import (
    Protections,
    Status,
    after_trade,
    assess,
    auto_resume,
    order_blocked,
    start_of_day,
    transition,
)
from conclave.agents import AccountState, AgentInput
from conclave.agents.risk_manager import RiskManager
from conclave.backtest.engine import run_backtest
from conclave.backtest.history import History, load_history
from conclave.backtest.result import ACTIONS, LEVELS, AgentSeries
from conclave.backtest.settings import BacktestSettings
from conclave.backtest.signals import agent_series
from conclave.market.sources.files import FileSource
from conclave.pipeline.context import StepResult
from conclave.pipeline.decision import decide
from conclave.pipeline.orchestrator import default_agents

BTC_1H = "binance_BTCUSDT_1h_20170817-20221011.csv"
FIRST, LAST = 1_514_764_800_000, 1_660_000_000_000  # 2018-01-01 .. 2022-08
BARS = 240


@dataclass
class Replay:
    actions: list[str] = field(default_factory=list)
    sizes: list[float] = field(default_factory=list)
    levels: list[str] = field(default_factory=list)
    equity: list[float] = field(default_factory=list)
    halted: list[bool] = field(default_factory=list)
    fills: list[tuple[Any, ...]] = field(default_factory=list)
    vetoed_sells: int = 0


def _steps(series: dict[str, AgentSeries], j: int) -> dict[str, StepResult]:
    steps: dict[str, StepResult] = {}
    for name, s in series.items():
        if s.usable[j]:
            payload = {k: float(v[j]) for k, v in s.columns.items()}
            steps[name] = StepResult(name, "ok", float(s.score[j]), float(s.confidence[j]),
                                     payload, 0.0)  # fmt: skip
        else:
            steps[name] = StepResult.failed(name, "insufficient_data", "warm-up or stale")
    return steps


def reference(history: History, bt: BacktestSettings) -> Replay:
    """The live path, bar by bar, with the live functions (see the module docstring)."""
    cfg = bt.account
    series = agent_series(history, default_agents())
    period = history.period
    out = Replay()
    times: list[int] = []
    values: list[float] = []
    cash, pos, mark = bt.starting_balance, Position(), 0.0
    status: Status = "active"
    prot = Protections()
    halted_at: int | None = None
    pending: tuple[paper.Order, int] | None = None
    lots = {"min_order_notional": cfg.min_order_notional, "qty_step": cfg.qty_step}
    bar_ms = period.timeframe.ms
    for i in range(len(period)):
        j = history.start + i
        as_of = int(period.close_time[i])
        o, c = float(period.open[i]), float(period.close[i])
        # the run: the account reader's state, the risk manager agent, decide()
        blocked = f"account {status}" if status != "active" else prot.paused(as_of)
        state = AccountState(
            account_id="ref", equity_time_ms=np.asarray(times, dtype=np.int64),
            equity=np.asarray(values, dtype=np.float64), open_exposure=abs(pos.qty * mark),
            start_of_day_equity=start_of_day(times, values, as_of) if times else None,
            risk=cfg.agent_risk(blocked),
        )  # fmt: skip
        one = period.take(slice(i, i + 1))
        risk = RiskManager().run(AgentInput("BTCUSDT", "1h", as_of, one, account=state),
                                 now_iso="")  # fmt: skip
        steps = _steps(series, j)
        steps["risk-manager"] = StepResult.from_result(risk)
        d = decide(steps, bt.decision)
        out.actions.append(d.action or "NONE")
        out.sizes.append(d.size_multiplier)
        out.levels.append(str(risk.payload["level"]))
        out.vetoed_sells += d.action == "SELL" and d.risk_veto
        # process_run: settle at this open, record at the close, transition, order
        if pending is not None:
            order, decided = pending
            side = order.side
            pending = None
            fill, _ = paper.fill_at_open(order, Bar(int(period.open_time[i]), as_of, o, c),
                                         slippage=bt.slippage, fee_rate=bt.fee_rate, cash=cash,
                                         position=pos, **lots)  # fmt: skip
            if fill is not None:
                pos, delta, pnl = paper.apply_fill(pos, fill)
                cash += delta
                mark = o
                out.fills.append((int(period.open_time[i]), decided, side, fill.qty, fill.price,
                                  fill.fee))  # fmt: skip
                if side == "SELL":
                    prot = after_trade(prot, pnl, int(period.open_time[i]), bar_ms, cfg)[0]
        if pos.qty > 0:
            mark = c
        equity = cash + pos.qty * mark
        times.append(as_of)
        values.append(equity)
        snap = assess(times, values, exposure=abs(pos.qty * mark), config=cfg,
                      starting_balance=bt.starting_balance)  # fmt: skip
        status, why = transition(status, snap, cfg)
        if why and status == "halted":
            halted_at = as_of
        elif not why and auto_resume(status, halted_at, as_of, pos.qty <= paper.QTY_EPS, cfg):
            # `accounts.ledger.record`: resumed, the risk window restarts at this point
            status, times, values = "active", [as_of], [equity]
        out.equity.append(equity)
        out.halted.append(status == "halted")
        if status == "halted" and cfg.halt_action == "flatten" and pos.qty > paper.QTY_EPS:
            pending = (paper.sell_all(pos.qty, c, "flatten"), int(period.open_time[i]))
        elif (
            d.tradable
            and (d.action == "BUY" or d.action == "SELL")
            and not order_blocked(d.action, status, prot, as_of)
        ):
            placed, _ = paper.size_order(
                d.action, equity=equity, size_multiplier=d.size_multiplier,
                max_position_fraction=cfg.max_position_fraction, position_qty=pos.qty,
                price=c, **lots,
            )  # fmt: skip
            if placed is not None:
                pending = (placed, int(period.open_time[i]))
    return out


@pytest.fixture(scope="module")
def btc(candles_dir: Path) -> FileSource:
    return FileSource(candles_dir / BTC_1H)


limits = st.sampled_from([(0.01, 0.02, 0.03), (0.02, 0.04, 0.06), (0.05, 0.1, 0.2)])
daily = st.sampled_from([(0.005, 0.01, 0.015), (0.01, 0.02, 0.03), (0.02, 0.03, 0.05)])


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    start=st.integers(FIRST // 3_600_000, LAST // 3_600_000),
    dd=limits,
    loss=daily,
    fraction=st.sampled_from([0.25, 0.5, 1.0]),
    hysteresis=st.sampled_from([0.0, 0.005, 0.01]),
    streak=st.integers(1, 3),
    fee=st.sampled_from([0.0, 0.001, 0.0075]),
    buy=st.sampled_from([0.05, 0.1, 0.15]),
    halt_action=st.sampled_from(["block_entries", "flatten"]),
    resume_s=st.sampled_from([0, 6 * 3600, 86_400]),
    minimum=st.sampled_from([10.0, 300.0]),
)
def test_the_engine_is_a_plain_replay_of_the_live_code(
    btc: FileSource, start: int, dd: tuple[float, float, float],
    loss: tuple[float, float, float], fraction: float, hysteresis: float, streak: int,
    fee: float, buy: float, halt_action: str, resume_s: int, minimum: float,
) -> None:  # fmt: skip
    cfg = AccountConfig(drawdown_limits=dd, daily_loss_limits=loss, max_position_fraction=fraction,
                        hysteresis=hysteresis, stoploss_streak=streak, stoploss_pause_bars=5,
                        cooldown_bars=2, max_exposure=0.9, halt_action=halt_action,
                        halt_resume_s=resume_s, min_order_notional=minimum,
                        qty_step=1e-5)  # fmt: skip
    from conclave.pipeline.decision import DecisionConfig

    decision = DecisionConfig(buy_threshold=buy, sell_threshold=buy, strong_threshold=0.5)
    bt = BacktestSettings(account=cfg, decision=decision, fee_rate=fee, slippage=0.0005,
                          resample="resample")  # fmt: skip
    start_ms = start * 3_600_000
    history = asyncio.run(load_history(btc, "BTCUSDT", "1h", default_agents(),
                                       start_ms=start_ms, end_ms=start_ms + BARS * 3_600_000,
                                       now_ms=0, resample_policy="resample"))  # fmt: skip
    result = run_backtest(history, default_agents(), bt)
    ref = reference(history, bt)
    assert [ACTIONS[a] for a in result.action] == ref.actions
    assert [LEVELS[v] for v in result.risk_level] == ref.levels
    np.testing.assert_allclose(result.size_multiplier, ref.sizes, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.equity, ref.equity, rtol=1e-12)
    assert list(result.trace.halted) == ref.halted
    got = [(f.time_ms, f.decision_ms, f.side) for f in result.fills]
    assert got == [r[:3] for r in ref.fills]
    np.testing.assert_allclose([f.qty for f in result.fills], [r[3] for r in ref.fills],
                               rtol=1e-12)  # fmt: skip
    resumed = any(a and not b for a, b in zip(ref.halted, ref.halted[1:], strict=False))
    event(f"fills: {'some' if ref.fills else 'none'}")
    event(f"halted: {'yes' if any(ref.halted) else 'no'}")
    event(f"resumed: {'yes' if resumed else 'no'}")
    event(f"streak guard: {'yes' if (result.trace.paused_until_ms > 0).any() else 'no'}")
    event(f"vetoed SELL decisions: {'some' if ref.vetoed_sells else 'none'}")
