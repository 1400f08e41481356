"""The engine: the same decision, paper execution and risk rules as the live account path."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conclave.accounts import AccountConfig, AccountService, Bar, StoreAccountReader
from conclave.accounts.risk import assess, start_of_day
from conclave.agents import AgentInput
from conclave.agents.risk_manager import RiskManager
from conclave.backtest.account_loop import EquityCurve, account_risk, account_state_at
from conclave.backtest.engine import run_backtest
from conclave.backtest.history import History, load_history
from conclave.backtest.result import ACTIONS, BUY, LEVELS, NONE, SELL, AgentSeries
from conclave.backtest.settings import BacktestSettings
from conclave.backtest.signals import pre_decide
from conclave.market.candles import Candles
from conclave.market.resample import resample
from conclave.market.sources.files import FileSource
from conclave.market.validation import find_gaps
from conclave.pipeline.decision import ANALYSIS_AGENTS, DecisionConfig, decide
from conclave.pipeline.orchestrator import default_agents
from conclave.timeframes import DAY_MS, HOUR_MS
from tests.backtest.helpers import live_steps
from tests.store.conftest import Target, pg_url, target  # noqa: F401 - fixtures

BTC_1H = "binance_BTCUSDT_1h_20170817-20221011.csv"
NOW_MS = 1_700_000_000_000
START_MS = 1_600_000_000_000  # 2020-09-13T12:26:40Z


def _curve(seed: int, n: int) -> tuple[list[int], list[float]]:
    """Times (some exactly at midnight, some days skipped) and a wandering equity."""
    rng = random.Random(seed)
    t, times, values, eq = 1_600_000_000_000 - 1_600_000_000_000 % DAY_MS, [], [], 1000.0
    for _ in range(n):
        t += rng.choice((HOUR_MS, HOUR_MS, 4 * HOUR_MS, DAY_MS, 3 * DAY_MS))
        eq *= 1.0 + rng.uniform(-0.04, 0.035)
        times.append(t)
        values.append(eq)
    return times, values


@pytest.mark.parametrize("seed", range(20))
def test_the_incremental_curve_gives_the_same_risk_as_the_ledger(seed: int) -> None:
    """start_of_day, peak, drawdown, loss today and level equal `accounts.risk` at every
    point (the ledger rescans the whole curve each time; the engine does not)."""
    times, values = _curve(seed, 300)
    cfg = AccountConfig(drawdown_limits=(0.05, 0.1, 0.2), daily_loss_limits=(0.01, 0.02, 0.04))
    curve = EquityCurve()
    for k, (t, v) in enumerate(zip(times, values, strict=True)):
        # a query before the point arrives, at a later instant of its day (the next run)
        assert curve.start_of_day(t) == (start_of_day(times[:k], values[:k], t) if k else None)
        curve.append(t, v)
        dd, loss, level, _ = account_risk(curve, 0.0, cfg)
        want = assess(times[: k + 1], values[: k + 1], exposure=0.0, config=cfg,
                      starting_balance=1000.0)  # fmt: skip
        assert (dd, loss, LEVELS[level]) == (want.drawdown, want.loss_today, want.level)


def _series(n: int, seed: int) -> dict[str, AgentSeries]:
    rng = np.random.default_rng(seed)
    out = {}
    for name in ANALYSIS_AGENTS:
        usable = rng.random(n) > 0.15
        score = np.where(usable, rng.uniform(-1, 1, n), 0.0)
        conf = np.where(usable, rng.uniform(0, 100, n), 0.0)
        cols = {"size_multiplier": rng.choice([1.0, 0.6, 0.25], n)}
        out[name] = AgentSeries(name, score, conf, usable, columns=cols)
    return out


def test_the_vectorized_decision_is_decide_at_every_bar() -> None:
    """pre_decide over arrays gives decide()'s action, strength, conviction and confidence
    (risk manager allowing at 1.0) at each of 2,000 bars with random failures, and its size
    (strength alone for a SELL, x the volatility multiplier for a BUY)."""
    n = 2000
    series = _series(n, 3)
    config = DecisionConfig(weights={"momentum": 2.0, "order-flow": 0.5}, quorum=7)
    pre = pre_decide(series, config, n)
    made = 0
    for i in range(n):
        d = decide(live_steps(series, i), config)
        if d.action is None:
            assert pre.action[i] == NONE
            continue
        made += 1
        assert ACTIONS[pre.action[i]] == d.action
        assert pre.conviction[i] == pytest.approx(d.conviction, abs=1e-15)
        assert pre.confidence[i] == pytest.approx(d.confidence, abs=1e-12)
        # an exit is sized by the decision alone; an entry by the volatility regime too
        size = pre.strength[i] * (1.0 if d.action == "SELL" else pre.vol_mult[i])
        assert size == pytest.approx(d.size_multiplier, abs=1e-15)
    assert 200 < made < n  # both branches were exercised


def _bars(candles: Candles, i: int) -> list[Bar]:
    lo = max(0, i - 1)
    return [
        Bar(int(candles.open_time[k]), int(candles.close_time[k]), float(candles.open[k]),
            float(candles.close[k]))
        for k in range(lo, i + 1)
    ]  # fmt: skip


@pytest.fixture
async def service(target: Target) -> AsyncIterator[AccountService]:  # noqa: F811
    store = await target.open()
    yield AccountService(store)
    await store.aclose()


@pytest.mark.parametrize("halt_action", ["block_entries", "flatten"])
async def test_the_account_loop_is_the_live_account_path_bar_by_bar(
    candles_dir: Path, service: AccountService, halt_action: str
) -> None:
    """Replay the backtest's decisions through the real `AccountService` (SQLite and
    PostgreSQL) bar by bar: every fill, every bar's equity and halt status are the same, and
    the live reader + risk-manager agent give the level the backtest used at every bar.

    Tight limits over 25 days of September 2020 make the account halt, resume and trip
    the stop-loss streak guard, so all those paths are compared; SELLs decided under the
    risk manager's veto are executed in both, and with ``flatten`` the halt's sale too.
    """
    cfg = AccountConfig(
        max_position_fraction=1.0, drawdown_limits=(0.03, 0.06, 0.09),
        daily_loss_limits=(0.01, 0.02, 0.03), hysteresis=0.005, stoploss_streak=2,
        stoploss_pause_bars=6, cooldown_bars=3, halt_action=halt_action,
    )  # fmt: skip
    # thresholds fixed here so that the scenario (many trades) does not move with the defaults
    decision = DecisionConfig(buy_threshold=0.15, sell_threshold=0.15, strong_threshold=0.5)
    settings = BacktestSettings(account=cfg, decision=decision, resample="resample",
                                fee_rate=0.001, slippage=0.0005)  # fmt: skip
    agents = default_agents()
    src = FileSource(candles_dir / BTC_1H)
    history = await load_history(
        src, "BTCUSDT", "1h", agents, start_ms=START_MS, end_ms=START_MS + 600 * HOUR_MS,
        now_ms=NOW_MS, resample_policy="resample",
    )  # fmt: skip
    result = run_backtest(history, agents, settings)
    n = len(result)
    assert n == 599
    assert history.start > 0  # the warm-up is before the period, none traded
    acct_row = await service.create("bt", balance=settings.starting_balance, quote="USDT",
                                    fee_rate=settings.fee_rate, slippage=settings.slippage,
                                    config=cfg)  # fmt: skip
    acct = str(acct_row["id"])
    reader = StoreAccountReader(service)
    period = history.period
    fills: list[dict[str, Any]] = []
    statuses = []
    for i in range(n):
        as_of = int(period.close_time[i])
        state = await reader.read(acct, as_of_ms=as_of)
        one = period.take(slice(i, i + 1))
        live = RiskManager().run(AgentInput("BTCUSDT", "1h", as_of, one, account=state),
                                 now_iso="x")  # fmt: skip
        assert live.payload["level"] == LEVELS[result.risk_level[i]], i
        mine = account_state_at(result, i, acct, cfg)
        assert np.array_equal(mine.equity, state.equity)
        assert mine.open_exposure == pytest.approx(state.open_exposure, rel=1e-12, abs=1e-9)
        a = int(result.action[i])
        size = float(result.size_multiplier[i])
        decision = {
            "status": "ok" if a != NONE else "failed",
            "action": None if a == NONE else ACTIONS[a],
            "sizeMultiplier": size,
            "tradable": a in (BUY, SELL) and size > 0,
        }
        wire = {"runId": f"run{i}", "symbol": "BTCUSDT", "timeframe": "1h", "decision": decision}
        out = await service.process_run(acct, wire, bars=_bars(period, i))
        fills += out["fills"]
        statuses.append(out["status"])
    assert len(fills) == len(result.fills) > 10
    for got, want in zip(fills, result.fills, strict=True):
        assert (got["side"], got["fillOpenMs"]) == (want.side, want.time_ms)
        assert got["qty"] == pytest.approx(want.qty, rel=1e-12)
        assert got["price"] == pytest.approx(want.price, rel=1e-12)
        assert got["fee"] == pytest.approx(want.fee, rel=1e-12)
    # the reader's curve starts at the last automatic resume (``risk_since_ms``), as the
    # backtest's own window does
    since = int(result.trace.risk_since_ms[-1])
    first = int(np.searchsorted(period.close_time, since)) if since >= 0 else 0
    state = await reader.read(acct, as_of_ms=int(period.close_time[-1]))
    assert np.allclose(state.equity, result.equity[first:], rtol=1e-12, atol=0)
    resumes = [e for e in (await service.get(acct) or {})["riskEvents"] if e["kind"] == "resume"]
    auto = {e["tMs"] for e in resumes if e["reason"].startswith("resume: flat")}
    assert auto  # an automatic resume happened, at the same bars in both
    assert auto == {int(t) for t in set(result.trace.risk_since_ms.tolist()) - {-1}}
    assert statuses == ["halted" if h else "active" for h in result.trace.halted]
    assert {"halted", "active"} <= set(statuses)
    assert (result.trace.paused_until_ms > 0).any()  # the streak guard tripped
    vetoed_sells = (result.action == SELL) & (result.risk_level == 3)
    assert vetoed_sells.any()  # exits decided under the veto, executed in both
    if halt_action == "flatten":
        assert any(f.reason.startswith("sell all: halt_action flatten") for f in result.fills)


async def test_gaps_are_reported_not_filled_and_orders_fill_at_the_next_bar(
    candles_dir: Path,
) -> None:
    """A history with 30 bars cut out: the gap is reported with its size, no bar is
    invented, and an order decided before the gap fills at the first bar after it."""
    full = FileSource(candles_dir / BTC_1H).load("BTCUSDT", "1h").take(slice(20_000, 22_000))
    keep = np.ones(len(full), dtype=bool)
    keep[1_200:1_230] = False
    holed = full.take(keep)
    agents = default_agents()
    higher = {tf: resample(holed, tf, trim_leading=True) for tf in ("4h", "1d")}
    history = History("BTCUSDT", "1h", holed, 0, higher, frozenset(higher), None, "test", False)
    result = run_backtest(history, agents, BacktestSettings())
    assert len(result) == len(holed) == len(full) - 30
    before = {(g.after_open_ms, g.before_open_ms, g.missing_bars) for g in find_gaps(full).gaps}
    found = {(g.after_open_ms, g.before_open_ms, g.missing_bars) for g in result.gaps}
    cut = (int(full.open_time[1_199]), int(full.open_time[1_230]), 30)
    assert found == before | {cut}
    assert result.missing_bars == 30 + sum(g[2] for g in before)
    after = int(full.open_time[1_230])
    for f in result.fills:
        assert f.time_ms in set(holed.open_time.tolist())
        if f.decision_ms == int(full.open_time[1_199]):
            assert f.time_ms == after
    # right after 30 missing hours the newest 4h bar is stale: no signal, as live
    j = int(np.searchsorted(result.open_time, after))
    assert result.action[j] == NONE
    assert not any(a.usable[j] for a in result.agents.values())
    assert result.action[j - 1] != NONE
