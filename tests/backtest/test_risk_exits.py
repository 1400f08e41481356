"""Risk never traps a position, exits are sized by the decision, no dust (issue 10).

Properties of the backtest's account loop (`account_loop.simulate`) over random price
paths (moves up to 8 % a bar, gaps between a close and the next open) and random signal
sequences, with tight limits so that halts, the stop-loss streak guard, cooldowns and the
risk manager's veto all happen; and of a real 5-minute backtest.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from conclave.accounts import AccountConfig, paper
from conclave.accounts.paper import Bar, Position
from conclave.backtest.account_loop import AccountTrace, simulate
from conclave.backtest.engine import run_backtest
from conclave.backtest.history import load_history
from conclave.backtest.result import BUY, HOLD, NONE, SELL
from conclave.backtest.settings import BacktestSettings
from conclave.backtest.signals import PreDecision
from conclave.market.candles import Candles
from conclave.market.sources.files import FileSource
from conclave.pipeline.orchestrator import default_agents
from conclave.timeframes import DAY_MS, HOUR_MS

T0 = 1_600_000_000_000 - 1_600_000_000_000 % DAY_MS + 20 * HOUR_MS  # 4 bars before midnight
BTC_5M = "binance_BTCUSDT_5m_20201201-20210717.csv"

Scenario = tuple[Candles, PreDecision, BacktestSettings]


def build(
    moves: Sequence[float],
    gaps: Sequence[float],
    actions: Sequence[int],
    strengths: Sequence[float],
    vol: Sequence[float],
    cfg: AccountConfig,
    fee: float,
    slippage: float,
) -> Scenario:
    """1h bars from 100: each opens at the last close x (1 + gap), closes at open x (1 + move)."""
    n = len(moves)
    opens, closes, last = np.empty(n), np.empty(n), 100.0
    for i in range(n):
        opens[i] = last * (1.0 + gaps[i])
        closes[i] = last = opens[i] * (1.0 + moves[i])
    period = Candles.from_arrays("BTCUSDT", "1h", T0 + HOUR_MS * np.arange(n), opens,
                                 np.maximum(opens, closes), np.minimum(opens, closes), closes,
                                 np.ones(n))  # fmt: skip
    action = np.asarray(actions, dtype=np.int8)
    made = action != NONE
    strength = np.where((action == BUY) | (action == SELL), np.asarray(strengths), 0.0)
    pre = PreDecision(made=made, conviction=np.where(made, 0.0, np.nan),
                      confidence=np.where(made, 50.0, np.nan), action=action,
                      strength=strength, vol_mult=np.asarray(vol, dtype=np.float64))  # fmt: skip
    return period, pre, BacktestSettings(account=cfg, fee_rate=fee, slippage=slippage)


@st.composite
def scenarios(draw: st.DrawFn, halt_action: str | None = None) -> Scenario:
    n = draw(st.integers(20, 160))

    def per_bar(elements: st.SearchStrategy[float] | st.SearchStrategy[int]) -> list[float]:
        return draw(st.lists(elements, min_size=n, max_size=n))  # type: ignore[arg-type]

    moves = per_bar(st.floats(-0.08, 0.08))
    gaps = per_bar(st.sampled_from([0.0, 0.0, 0.0, 0.002, -0.002, 0.03, -0.03]))
    actions = per_bar(st.sampled_from([NONE, HOLD, BUY, BUY, SELL, SELL]))
    strengths = per_bar(st.floats(0.02, 1.0))
    vol = per_bar(st.sampled_from([0.25, 0.5, 1.0]))
    cfg = AccountConfig(
        max_position_fraction=draw(st.sampled_from([0.25, 0.5, 1.0])),
        min_order_notional=draw(st.sampled_from([0.0, 10.0, 200.0])),
        qty_step=draw(st.sampled_from([1e-8, 1e-3])),
        drawdown_limits=draw(st.sampled_from([(0.01, 0.02, 0.04), (0.05, 0.1, 0.2)])),
        daily_loss_limits=draw(st.sampled_from([(0.01, 0.02, 0.03), (0.1, 0.2, 0.5)])),
        hysteresis=draw(st.sampled_from([0.0, 0.005, 0.02])),
        stoploss_streak=draw(st.integers(1, 3)),
        stoploss_pause_bars=draw(st.integers(0, 8)),
        cooldown_bars=draw(st.integers(0, 4)),
        halt_action=halt_action or draw(st.sampled_from(["block_entries", "flatten"])),
    )
    fee = draw(st.sampled_from([0.0, 0.001, 0.0075]))
    slippage = draw(st.sampled_from([0.0, 0.0005, 0.005]))
    return build(moves, gaps, actions, strengths, vol, cfg, fee, slippage)


def risk_states(trace: AccountTrace, period: Candles, cfg: AccountConfig, i: int) -> list[str]:
    """What blocked entries at bar i's decision: veto, halt, streak guard, cooldown."""
    t = int(period.close_time[i])
    states = []
    if trace.risk_level[i] == 3:
        states.append("veto")
    if trace.halted[i]:
        states.append("halted")
    if trace.paused_until_ms[i] > t:
        states.append("streak guard")
    losses = [f.time_ms for f in trace.fills if f.realised_pnl is not None and f.realised_pnl < 0]
    if any(t < tf + cfg.cooldown_bars * HOUR_MS for tf in losses if tf <= t):
        states.append("cooldown")
    return states


def check_exits(period: Candles, pre: PreDecision, bt: BacktestSettings) -> Counter[str]:
    """Every SELL is sized by its strength alone and, on a held position, placed and filled
    whenever the lot rules allow it; the risk states it went through are counted."""
    cfg = bt.account
    trace = simulate(period, pre, bt)
    lots = {"min_order_notional": cfg.min_order_notional, "qty_step": cfg.qty_step}
    by_decision = {f.decision_ms: f for f in trace.fills}
    seen: Counter[str] = Counter()
    for i in range(len(period) - 1):
        if pre.action[i] != SELL:
            continue
        assert trace.action[i] == SELL
        assert trace.size_multiplier[i] == pre.strength[i]  # no volatility or risk multiplier
        qty = float(trace.qty[i])
        if qty <= paper.QTY_EPS:
            continue
        order, _ = paper.size_order(
            "SELL", equity=float(trace.equity[i]), size_multiplier=float(pre.strength[i]),
            max_position_fraction=cfg.max_position_fraction, position_qty=qty,
            price=float(period.close[i]), **lots,
        )  # fmt: skip
        nxt = Bar(int(period.open_time[i + 1]), int(period.close_time[i + 1]),
                  float(period.open[i + 1]), float(period.close[i + 1]))  # fmt: skip
        want = None
        if order is not None:
            want = paper.fill_at_open(order, nxt, slippage=bt.slippage, fee_rate=bt.fee_rate,
                                      cash=float(trace.cash[i]), position=Position(qty),
                                      **lots)[0]  # fmt: skip
        if want is None:
            continue  # the lot rules refuse it, not the risk rules
        got = by_decision.get(int(period.open_time[i]))
        assert got is not None, f"SELL at bar {i} on a held position was blocked"
        assert got.side == "SELL"
        assert got.qty >= want.qty * (1 - 1e-12)  # a flatten sells more, never less
        states = risk_states(trace, period, cfg, i)
        seen.update(states or ["no risk state"])
    return seen


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_no_sell_on_a_held_position_is_ever_blocked(scenario: Scenario) -> None:
    """Halt, veto, streak guard and cooldown never stop an exit, and its size is its
    strength: each SELL on a held position fills at the next open whenever the lot rules
    let the same order fill on an account free of risk state."""
    for state in check_exits(*scenario):
        event(f"SELL executed under: {state}")


def test_the_exit_property_meets_every_risk_state() -> None:
    """The scenarios of the property above do exercise it: across 40 seeded ones, SELLs on
    held positions were executed under a veto, a halt, the streak guard and a cooldown."""
    rng = np.random.default_rng(10)
    seen: Counter[str] = Counter()
    for _ in range(40):
        n = 160
        cfg = AccountConfig(max_position_fraction=1.0, drawdown_limits=(0.02, 0.05, 0.1),
                            daily_loss_limits=(0.01, 0.02, 0.03), stoploss_streak=2,
                            stoploss_pause_bars=6, cooldown_bars=3)  # fmt: skip
        seen += check_exits(*build(
            rng.uniform(-0.05, 0.05, n), rng.choice([0.0, 0.003, -0.003], n),
            rng.choice([HOLD, BUY, BUY, SELL], n).tolist(), rng.uniform(0.05, 1.0, n),
            rng.choice([0.25, 1.0], n), cfg, 0.001, 0.0005,
        ))  # fmt: skip
    assert {"veto", "halted", "streak guard", "cooldown"} <= set(seen), seen


def flatten_bound(trace: AccountTrace, period: Candles, bt: BacktestSettings, k: int) -> float:
    """The most drawdown a ``flatten`` account can show from the bar k at whose close it
    became halted (bar k-1 closed active) until it is active again:

        DD <= 1 - (1 - H) x (1 - m) x ((1 - s) x (1 - f)) ** (1 + n)

    H the drawdown halt limit; m = 1 - min(1, o_k / c_k-1) x min(1, min(c_k, o_k+1) / o_k)
    the fall of the price from the last active close through bar k to the flatten's fill
    at the next open (the move of the bar on which the limit was crossed); s slippage, f
    the fee; n = 1 when an order also filled at bar k's open, else 0. It follows from
    DD_k-1 < H (active), a long-only account without leverage (cash >= 0, so equity moves
    by at most the price's move), each fill costing at most 1 - (1 - s)(1 - f) of equity,
    and a flat equity once the position is sold. To first order: DD <= H + m + (1 + n)(s + f).
    """
    o, c = period.open, period.close
    low = min(c[k], o[k + 1]) if k + 1 < len(period) else c[k]
    kept = min(1.0, o[k] / c[k - 1]) * min(1.0, low / o[k])
    filled = any(f.time_ms == int(period.open_time[k]) for f in trace.fills)
    cost = ((1 - bt.slippage) * (1 - bt.fee_rate)) ** (2 if filled else 1)
    return float(1.0 - (1.0 - bt.account.drawdown_limits[2]) * kept * cost)


def window_drawdown(trace: AccountTrace, period: Candles) -> np.ndarray:
    """Drawdown from the peak of the account's risk window: the running peak restarts at
    each automatic resume (``risk_since_ms``: the bar it resumed at), as the account's own."""
    equity, since = trace.equity, trace.risk_since_ms
    out = np.empty_like(equity)
    peak = -np.inf
    for t in range(len(equity)):
        if since[t] == int(period.close_time[t]):  # resumed here: the peak restarts
            peak = -np.inf
        peak = max(peak, float(equity[t]))
        out[t] = 1.0 - equity[t] / peak
    return out


def past_the_bound(scenario: Scenario) -> list[int]:
    """Bars where drawdown (from the risk window's peak) is above the halt limit while
    active, or above `flatten_bound` of the bar on which the account became halted while
    halted. A halt span lies within one window (it ends at a resume, where a window may
    start), so the bound measures against the peak in force when the halt limit was
    crossed."""
    period, pre, bt = scenario
    trace = simulate(period, pre, bt)
    drawdown = window_drawdown(trace, period)
    bound = halt = bt.account.drawdown_limits[2]
    bad = []
    for t in range(len(period)):
        if t > 0 and trace.halted[t] and not trace.halted[t - 1]:
            bound = flatten_bound(trace, period, bt, t)
        if drawdown[t] > (bound + 1e-12 if trace.halted[t] else halt * (1 - 1e-12)):
            bad.append(t)
    return bad


@settings(max_examples=200, deadline=None)
@given(scenarios(halt_action="flatten"))
def test_flatten_bounds_the_drawdown_by_the_crossing_bars_move_and_costs(
    scenario: Scenario,
) -> None:
    """With ``flatten``, drawdown stays under the halt limit on every active bar, and from a
    halt until the account is active again under `flatten_bound` of the bar that crossed."""
    period, pre, bt = scenario
    trace = simulate(period, pre, bt)
    assert not trace.halted[0]
    assert past_the_bound(scenario) == []
    if trace.halted.any():
        event("halted")
    if (trace.risk_since_ms >= 0).any():
        event("resumed automatically")
    drawdown = window_drawdown(trace, period)
    event(f"drawdown went past the halt limit: {drawdown.max() >= bt.account.drawdown_limits[2]}")
    if any(f.reason.startswith("sell all: halt_action flatten") for f in trace.fills):
        event("flattened")


@pytest.mark.parametrize("halt_action", ["block_entries", "flatten"])
def test_the_bound_is_flattens_doing(halt_action: str) -> None:
    """All in, then 5 % down a bar for 12 bars, halt at 10 %: ``flatten`` sells at the open
    after the crossing bar and stays within the bound; ``block_entries`` keeps the position
    (no SELL signal) and ends 40 % down."""
    n = 16
    cfg = AccountConfig(max_position_fraction=1.0, drawdown_limits=(0.02, 0.05, 0.1),
                        daily_loss_limits=(0.1, 0.2, 0.5), halt_action=halt_action)  # fmt: skip
    scenario = build([0.0] * 3 + [-0.05] * 12 + [0.0], [0.0] * n, [BUY] + [HOLD] * (n - 1),
                     [1.0] * n, [1.0] * n, cfg, 0.001, 0.0005)  # fmt: skip
    trace = simulate(*scenario)
    drawdown = 1.0 - trace.equity[-1] / trace.equity.max()
    if halt_action == "flatten":
        assert past_the_bound(scenario) == []
        assert trace.qty[-1] == 0.0
        assert 0.1 < drawdown < 0.16
    else:
        assert past_the_bound(scenario) != []
        assert drawdown > 0.4


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_no_dust_no_order_under_the_minimum(scenario: Scenario) -> None:
    """Every fill is on the quantity step and at least the minimum order, but the sale of
    a whole position worth less; after every sell-all nothing is left; a position is 0
    or worth at least the minimum at the price it was last traded."""
    period, pre, bt = scenario
    cfg = bt.account
    trace = simulate(period, pre, bt)
    index = {int(t): i for i, t in enumerate(period.open_time.tolist())}
    for f in trace.fills:
        after = float(trace.qty[index[f.time_ms]])
        steps = f.qty / cfg.qty_step
        assert abs(steps - round(steps)) <= 1e-6 * max(1.0, steps)
        if f.qty * f.price < cfg.min_order_notional:
            assert (f.side, after) == ("SELL", 0.0), f
            event("a whole position worth less than the minimum was sold")
        if f.reason.startswith("sell all"):
            assert after == 0.0, f
            event("sell all")
        assert after == 0.0 or after * f.price >= cfg.min_order_notional * (1 - 1e-12)


async def test_a_real_5m_backtest_fills_nothing_under_the_minimum(candles_dir: Path) -> None:
    """BTC 5m, December 2020 to July 2021, slippage 0 (where a sell-all sized at the close
    left a remainder whenever the next open was higher): no fill under the minimum order,
    no position left by a sell-all (before issue 10: dozens of each here, every one a fill,
    a fee and a win or a loss for the protections)."""
    agents = default_agents()
    history = await load_history(FileSource(candles_dir / BTC_5M), "BTCUSDT", "5m", agents,
                                 start_ms=None, end_ms=None, now_ms=1_700_000_000_000,
                                 resample_policy="resample")  # fmt: skip
    bt = BacktestSettings(slippage=0.0, resample="resample")
    result = await asyncio.to_thread(run_backtest, history, agents, bt)
    assert len(result.fills) > 500
    minimum = bt.account.min_order_notional
    assert [f for f in result.fills if f.qty * f.price < minimum] == []
    index = {int(t): i for i, t in enumerate(result.open_time.tolist())}
    sold_all = [f for f in result.fills if f.reason.startswith("sell all")]
    assert sold_all
    assert all(result.position_qty[index[f.time_ms]] == 0.0 for f in sold_all)


def test_a_setting_names_the_halt_action() -> None:
    """``halt_action`` is block_entries by default; anything else but flatten is refused."""
    assert AccountConfig().halt_action == "block_entries"
    assert AccountConfig(halt_action="flatten").halt_action == "flatten"
    with pytest.raises(ValueError, match="halt_action"):
        AccountConfig(halt_action="close")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="qty_step"):
        AccountConfig(qty_step=0.0)
    assert AccountConfig().qty_step == 1e-8


def fall_then_flat(halt_action: str, resume_s: int, n: int = 60) -> tuple[Scenario, AccountTrace]:
    """All in, three bars 5 % down (a halt at 10 %), then a flat price for the rest."""
    cfg = AccountConfig(max_position_fraction=1.0, drawdown_limits=(0.02, 0.05, 0.1),
                        daily_loss_limits=(0.1, 0.2, 0.5), halt_action=halt_action,
                        halt_resume_s=resume_s)  # fmt: skip
    moves = [0.0] * 3 + [-0.05] * 3 + [0.0] * (n - 6)
    actions = [BUY] + [HOLD] * (n - 1)
    scenario = build(moves, [0.0] * n, actions, [1.0] * n, [1.0] * n, cfg, 0.001, 0.0005)
    return scenario, simulate(*scenario)


@pytest.mark.parametrize("resume_s", [6 * 3600, 86_400])
def test_a_halted_flat_account_resumes_after_halt_resume_s(resume_s: int) -> None:
    """Halted at bar k's close and flat from k+1's open: active again at the first close
    ``halt_resume_s`` after bar k's, not before, with the peak restarted there."""
    scenario, trace = fall_then_flat("flatten", resume_s)
    period = scenario[0]
    k = int(np.argmax(trace.halted))
    assert trace.halted[k]
    assert trace.qty[k + 1] == 0.0
    wait = resume_s // 3600
    assert trace.halted[k : k + wait].all()
    assert not trace.halted[k + wait :].any()
    assert (trace.risk_since_ms[: k + wait] == -1).all()
    assert (trace.risk_since_ms[k + wait :] == int(period.close_time[k + wait])).all()
    drawdown = window_drawdown(trace, period)
    assert drawdown[k + wait - 1] > 0.1
    assert drawdown[k + wait] == 0.0
    assert past_the_bound(scenario) == []


@pytest.mark.parametrize(("halt_action", "resume_s"), [("block_entries", 3600),
                                                       ("flatten", 0)])  # fmt: skip
def test_no_automatic_resume_with_a_position_or_when_disabled(
    halt_action: str, resume_s: int
) -> None:
    """Still holding (no SELL signal, ``block_entries``), or with ``halt_resume_s`` 0, the
    account stays halted to the end."""
    _, trace = fall_then_flat(halt_action, resume_s)
    k = int(np.argmax(trace.halted))
    assert k > 0
    assert trace.halted[k:].all()
    assert (trace.risk_since_ms == -1).all()
