"""The compiled account loop equals the pure-Python reference, bit for bit, on random terms."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from conclave.accounts.config import AccountConfig
from conclave.backtest.account_loop import AccountTrace, simulate
from conclave.backtest.engine import run_backtest
from conclave.backtest.fast_loop import simulate_compiled
from conclave.backtest.history import load_history
from conclave.backtest.result import BUY, HOLD, NONE, SELL
from conclave.backtest.settings import BacktestSettings
from conclave.backtest.signals import PreDecision
from conclave.market.candles import Candles
from conclave.market.sources.files import FileSource
from conclave.pipeline.orchestrator import default_agents
from conclave.timeframes import HOUR_MS

T0 = 1_600_000_000_000 // HOUR_MS * HOUR_MS


def _market(rng: np.random.Generator, n: int, price: float) -> Candles:
    """A volatile walk with crashes (to reach the halt levels) and missing bars (gaps)."""
    r = rng.normal(0, rng.uniform(0.002, 0.04), n)
    r[rng.random(n) < 0.01] -= rng.uniform(0.05, 0.3)  # crashes
    c = price * np.exp(np.cumsum(r))
    o = np.r_[price, c[:-1]] * np.exp(rng.normal(0, 0.002, n))
    h = np.maximum(o, c) * 1.001
    lo = np.minimum(o, c) * 0.999
    keep = np.sort(rng.choice(n + n // 10, size=n, replace=False))  # about 9 % of bars missing
    step = int(rng.choice([1, 1, 2, 4]))  # 1h, 2h or 4h bars, across 00:00 UTC alike
    tf = {1: "1h", 2: "2h", 4: "4h"}[step]
    t = T0 + step * HOUR_MS * keep.astype(np.int64)
    return Candles.from_arrays("BTCUSDT", tf, t, o, h, lo, c, np.full(n, 10.0))


def _pre(rng: np.random.Generator, n: int) -> PreDecision:
    action = rng.choice([NONE, HOLD, BUY, SELL], size=n, p=[0.2, 0.3, 0.3, 0.2]).astype(np.int8)
    strength = np.where(rng.random(n) < 0.1, 1.0, rng.uniform(0.0, 1.0, n))
    strength[rng.random(n) < 0.05] = 0.0
    vol = rng.choice([0.0, 0.5, 0.75, 1.0, 1.25], size=n)
    zeros = np.zeros(n)
    return PreDecision(action != NONE, zeros, zeros, action, strength, vol)


def _settings(rng: np.random.Generator) -> BacktestSettings:
    dd = np.sort(rng.uniform(0.01, 0.5, 3))
    ls = np.sort(rng.uniform(0.005, 0.2, 3))
    cfg = AccountConfig(
        max_position_fraction=float(rng.choice([0.1, 0.25, 0.5, 1.0])),
        min_order_notional=float(rng.choice([0.0, 1.0, 10.0, 200.0])),
        qty_step=float(rng.choice([1e-8, 1e-5, 1e-3, 0.1])),
        drawdown_limits=(float(dd[0]), float(dd[1]), float(dd[2])),
        daily_loss_limits=(float(ls[0]), float(ls[1]), float(ls[2])),
        max_exposure=float(rng.choice([0.2, 1.0, 3.0])),
        warn_multiplier=float(rng.uniform(0, 1)),
        reduce_multiplier=float(rng.uniform(0, 1)),
        hysteresis=float(rng.choice([0.0, 0.01, 0.02])),
        stoploss_streak=int(rng.integers(1, 5)),
        stoploss_pause_bars=int(rng.integers(0, 30)),
        cooldown_bars=int(rng.integers(0, 5)),
        halt_action="flatten" if rng.random() < 0.5 else "block_entries",
        halt_resume_s=int(rng.choice([0, 3600, 86_400, 3 * 86_400])),
    )
    return BacktestSettings(
        starting_balance=float(rng.choice([100.0, 10_000.0, 1e6])),
        fee_rate=float(rng.choice([0.0, 0.001, rng.uniform(0, 0.05)])),
        slippage=float(rng.choice([0.0, 0.0005, rng.uniform(0, 0.05)])),
        account=cfg,
    )


def _assert_same(a: AccountTrace, b: AccountTrace) -> None:
    for f in fields(AccountTrace):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "fills":
            assert len(x) == len(y), "number of fills"
            for fx, fy in zip(x, y, strict=True):
                assert repr(fx) == repr(fy)  # repr of floats round-trips: bit for bit
            continue
        assert (x.dtype, x.shape) == (y.dtype, y.shape), f.name
        assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), f.name


@pytest.mark.parametrize("block", range(8))
def test_the_compiled_loop_equals_the_reference_on_random_terms(block: int) -> None:
    """On 25 seeded markets, signals and account terms per block, every array of the trace
    and every fill (time, side, quantity, price, fee, P&L, reason) are identical; each
    block halts, trips the streak guard and fills orders somewhere."""
    seen: Counter[str] = Counter()
    for seed in range(block * 25, block * 25 + 25):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(50, 1500))
        period = _market(rng, n, float(rng.choice([0.05, 30.0, 20_000.0])))
        pre, settings = _pre(rng, n), _settings(rng)
        ref = simulate(period, pre, settings)
        _assert_same(simulate_compiled(period, pre, settings), ref)
        seen["halted"] += int(ref.halted.any())
        seen["resumed"] += int((ref.risk_since_ms >= 0).any())
        seen["paused"] += int((ref.paused_until_ms >= 0).any())
        seen["levels"] += len(set(ref.risk_level.tolist()))
        seen["fills"] += len(ref.fills)
    assert min(seen["halted"], seen["paused"], seen["fills"]) > 0, seen
    assert seen["levels"] > 25, seen  # more than one risk level on average


def _kind(reason: str) -> str:
    if "halt_action flatten" in reason:
        return "flatten"
    if "remainder" in reason:
        return "sell all dust"
    return "sell all" if reason.startswith("sell all") else reason.split(" ")[0]


def test_the_random_terms_cover_every_path() -> None:
    """Over the first blocks' seeds the reference halts, resumes after a halt, flattens, and
    places every kind of order (buy, partial sell, sell-all, dust sell-all)."""
    reasons: Counter[str] = Counter()
    resumed = 0
    for seed in range(50):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(50, 1500))
        period = _market(rng, n, float(rng.choice([0.05, 30.0, 20_000.0])))
        trace = simulate(period, _pre(rng, n), _settings(rng))
        resumed += int((trace.risk_since_ms >= 0).any())
        reasons.update(_kind(f.reason) for f in trace.fills)
    assert resumed > 0
    assert set(reasons) == {"buy", "sell", "sell all", "sell all dust", "flatten"}, reasons


def test_a_ratio_beyond_exact_float_range_falls_back_to_the_reference() -> None:
    """A quantity ratio above 2**52 (tiny price, fine step) is left to the reference, so
    the answer is still the reference's."""
    rng = np.random.default_rng(5)
    n = 200
    period = _market(rng, n, 1e-9)
    pre = PreDecision(np.ones(n, bool), np.zeros(n), np.zeros(n), np.full(n, BUY, np.int8),
                      np.ones(n), np.ones(n))  # fmt: skip
    settings = BacktestSettings(
        starting_balance=1e9, account=AccountConfig(qty_step=1e-8, min_order_notional=0.0)
    )
    ref = simulate(period, pre, settings)
    assert ref.fills
    _assert_same(simulate_compiled(period, pre, settings), ref)


@pytest.mark.shared_data
@pytest.mark.parametrize("halt_action", ["block_entries", "flatten"])
def test_the_whole_btc_history_gives_the_same_backtest_either_way(
    candles_dir: Path, halt_action: str
) -> None:
    """`run_backtest` over the 45,024 real BTC 1h bars with tight risk limits (so halts,
    resumes and the streak guard happen) gives the same trace and fills with the compiled
    loop as with the pure-Python one."""
    source = FileSource(candles_dir / "binance_BTCUSDT_1h_20170817-20221011.csv")
    load = load_history(source, "BTCUSDT", "1h", default_agents(), start_ms=None, end_ms=None,
                        now_ms=0, resample_policy="resample")  # fmt: skip
    history = asyncio.run(load)
    cfg = AccountConfig(drawdown_limits=(0.02, 0.04, 0.06), daily_loss_limits=(0.01, 0.02, 0.03),
                        halt_action=halt_action, halt_resume_s=6 * 3600, qty_step=1e-5,
                        max_position_fraction=0.5)  # fmt: skip
    settings = BacktestSettings(account=cfg, resample="resample")
    compiled = run_backtest(history, default_agents(), settings)
    python = run_backtest(history, default_agents(), settings, loop="python")
    assert compiled.trace is not None
    assert python.trace is not None
    _assert_same(compiled.trace, python.trace)
    assert compiled.trace.halted.any()
    assert len(compiled.fills) > 100
