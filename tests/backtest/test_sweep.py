"""Sweeps: each configuration's figures are a plain backtest's, and the ranking is fixed."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conclave.backtest.engine import run_backtest
from conclave.backtest.history import History, load_history
from conclave.backtest.metrics import Headline, Performance, performance
from conclave.backtest.settings import BacktestSettings
from conclave.backtest.sweep import (
    METRICS,
    SweepRow,
    rank,
    run_sweep,
    spread,
)
from conclave.backtest.sweep_file import read_sweep
from conclave.backtest.sweep_space import SweepConfig
from conclave.market.sources.files import FileSource
from conclave.pipeline.orchestrator import default_agents

BTC_1H = "binance_BTCUSDT_1h_20170817-20221011.csv"
START_MS, END_MS = 1_590_969_600_000, 1_622_505_600_000  # 2020-06-01 .. 2021-06-01


@pytest.fixture(scope="module")
def history(candles_dir: Path) -> History:
    """A year of real BTC 1h (mid-2020 to mid-2021: a rally, a crash and chop)."""
    load = load_history(FileSource(candles_dir / BTC_1H), "BTCUSDT", "1h", default_agents(),
                        start_ms=START_MS, end_ms=END_MS, now_ms=0,
                        resample_policy="resample")  # fmt: skip
    return asyncio.run(load)


def _random_sweep(tmp_path: Path, seed: int) -> Path:
    """A sweep file of seeded random configurations touching every kind of key: costs,
    thresholds, quorum, weights, and the account's terms (tight limits halt the account,
    short streaks pause it), as a list, plus a small grid."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(10):
        dd = np.sort(rng.uniform(0.01, 0.4, 3)).round(4).tolist()
        dl = np.sort(rng.uniform(0.005, 0.1, 3)).round(4).tolist()
        buy, sell = rng.uniform(0.2, 0.7, 2).round(3).tolist()
        strong = round(float(rng.uniform(max(buy, sell), 1.0)), 3)
        weights = ", ".join(f'"{a}" = {w}' for a, w in
                            zip(("momentum", "market-structure", "order-flow",
                                 "statistical-edge"), rng.choice([0.0, 0.5, 1.0, 3.0], 4),
                                strict=True))  # fmt: skip
        halt = "flatten" if rng.random() < 0.5 else "block_entries"
        lines += [
            "[[configs]]",
            f'name = "random {i}"',
            f"fee_rate = {rng.choice([0.0, 0.001, 0.004])}",
            f"slippage = {rng.choice([0.0, 0.0005, 0.003])}",
            f"starting_balance = {rng.choice([500.0, 10_000.0, 2e6])}",
            f"decision = {{ buy_threshold = {buy}, sell_threshold = {sell},"
            f" strong_threshold = {strong}, quorum = {int(rng.integers(3, 8))},"
            f" volatility_fallback = {rng.uniform(0, 1):.3f} }}",
            f"weights = {{ {weights} }}",
            f"account = {{ max_position_fraction = {rng.choice([0.1, 0.5, 1.0])},"
            f" drawdown_limits = {dd}, daily_loss_limits = {dl},"
            f" min_order_notional = {rng.choice([0.0, 10.0, 100.0])},"
            f" qty_step = {rng.choice([1e-8, 1e-4])}, max_exposure = {rng.choice([0.5, 3.0])},"
            f" warn_multiplier = {rng.uniform(0, 1):.3f},"
            f" reduce_multiplier = {rng.uniform(0, 1):.3f}, hysteresis = 0.01,"
            f" stoploss_streak = {int(rng.integers(1, 5))},"
            f" stoploss_pause_bars = {int(rng.integers(0, 48))},"
            f" cooldown_bars = {int(rng.integers(0, 6))}, halt_action = \"{halt}\","
            f" halt_resume_s = {rng.choice([0, 3600, 86_400])} }}",
        ]  # fmt: skip
    lines += ["[grid]", "decision.buy_threshold = [0.4, 0.59]", "weights.momentum = [0.5, 2.0]",
              "account.halt_action = ['block_entries', 'flatten']"]  # fmt: skip
    path = tmp_path / f"random-{seed}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _same(got: Any, want: Any, where: str = "") -> None:
    """Equal JSON trees, floats to 1e-9 (relative, or absolute near 0)."""
    if isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for k in want:
            _same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, float) and isinstance(got, float):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-9), where
    else:
        assert got == want, where


@pytest.mark.shared_data
@pytest.mark.parametrize("seed", [1, 2])
def test_each_row_is_the_plain_backtest_of_its_configuration(
    history: History, tmp_path: Path, seed: int
) -> None:
    """For every seeded random configuration (and half the grid's), the sweep's figures
    equal `performance(run_backtest(...))` with that configuration's settings to 1e-9:
    the agents computed once and the compiled decision change nothing. The runs trade,
    halt and differ from one another."""
    configs = read_sweep(_random_sweep(tmp_path, seed)).configurations(
        BacktestSettings(resample="resample")
    )
    found = run_sweep(history, default_agents(), configs, workers=2)
    assert [r.config.number for r in found.rows] == [c.number for c in configs]
    assert all(r.compiled for r in found.rows)
    halted = 0
    for row in found.rows[:: 1 if seed == 1 else 2]:
        result = run_backtest(history, default_agents(), row.config.settings)
        _same(row.performance.to_json(), performance(result).to_json(), row.config.name)
        halted += bool(result.trace.halted.any())
    trades = [r.performance.trades for r in found.rows]
    assert sum(t > 0 for t in trades) >= len(trades) // 2
    assert halted > 0
    assert len({r.performance.final_equity for r in found.rows}) > len(found.rows) // 2


@pytest.mark.shared_data
def test_a_configuration_the_compiled_loop_cannot_take_runs_through_the_engine(
    history: History, tmp_path: Path
) -> None:
    """A quantity ratio beyond exact float range (a huge balance, a tiny lot step) is left
    to the engine's reference loop: that row says so and still equals the plain backtest."""
    path = tmp_path / "huge.toml"
    path.write_text("[grid]\nstarting_balance = [1e9]\naccount.qty_step = [1e-13, 1e-8]\n")
    configs = read_sweep(path).configurations(BacktestSettings(resample="resample"))
    found = run_sweep(history, default_agents(), configs)
    assert [r.compiled for r in found.rows] == [False, True]
    for row in found.rows:
        result = run_backtest(history, default_agents(), row.config.settings)
        _same(row.performance.to_json(), performance(result).to_json())


@pytest.mark.shared_data
def test_the_figures_do_not_depend_on_the_threads(history: History, tmp_path: Path) -> None:
    configs = read_sweep(_random_sweep(tmp_path, 3)).configurations(
        BacktestSettings(resample="resample")
    )
    one = run_sweep(history, default_agents(), configs, workers=1)
    two = run_sweep(history, default_agents(), configs, workers=3)
    assert [r.performance for r in one.rows] == [r.performance for r in two.rows]
    assert one.bars == two.bars == len(history.period)


def _row(number: int, *, sharpe: float | None, dd: float, total: float = 0.1) -> SweepRow:
    bh = Headline(total_return=0.5, cagr=None, sharpe=1.0, sortino=None, max_drawdown=0.3,
                  final_equity=1.5)  # fmt: skip
    perf = Performance(
        total_return=total, cagr=None, sharpe=sharpe, sortino=None, max_drawdown=dd,
        win_rate=None, trades=0, buys=0, sells=0, round_trips=0, time_in_market=0.0,
        mean_exposure=0.0, fees_paid=0.0, starting_balance=1.0, final_equity=1.0 + total,
        bars=10, years=1.0, bars_per_year=8766.0, buy_and_hold=bh, excess=total - 0.5,
    )  # fmt: skip
    return SweepRow(SweepConfig(number, "", {}, BacktestSettings()), perf)


def test_the_ranking_is_fixed_ties_and_missing_values_included() -> None:
    """Best first by the figure (lowest for max drawdown); an equal figure goes to the
    lower max drawdown, then to the lower number; a row without the figure comes last."""
    rows = [
        _row(1, sharpe=None, dd=0.0),
        _row(2, sharpe=1.5, dd=0.2),
        _row(3, sharpe=1.5, dd=0.1),
        _row(4, sharpe=2.0, dd=0.5),
        _row(5, sharpe=1.5, dd=0.1),
        _row(6, sharpe=-1.0, dd=0.05),
    ]
    numbers = [rows[i].config.number for i in rank(rows, METRICS["sharpe"])]
    assert numbers == [4, 3, 5, 2, 6, 1]
    backwards = rows[::-1]  # the order the rows come in does not matter
    assert [backwards[i].config.number for i in rank(backwards, METRICS["sharpe"])] == numbers
    by_dd = [rows[i].config.number for i in rank(rows, METRICS["max-drawdown"])]
    assert by_dd == [1, 6, 3, 5, 2, 4]


def test_the_spread_counts_what_beats_buy_and_hold() -> None:
    """Min, quartiles and max of the ranked figure over the rows that have it, and how
    many beat buy and hold (Sharpe 1.0, total return 0.5 here) on it and on total return."""
    sharpes = [None, 1.5, 0.5, 2.0, 1.0, -1.0]
    totals = [0.1, 0.6, 0.2, 0.9, 0.4, -0.2]
    rows = [_row(i, sharpe=s, dd=0.1, total=t)
            for i, (s, t) in enumerate(zip(sharpes, totals, strict=True), 1)]  # fmt: skip
    got = spread(rows, METRICS["sharpe"])
    values = [s for s in sharpes if s is not None]
    want = np.percentile(values, [0, 25, 50, 75, 100]).tolist()
    assert [got[k] for k in ("min", "q1", "median", "q3", "max")] == want
    assert (got["withValue"], got["configurations"], got["buyAndHold"]) == (5, 6, 1.0)
    assert got["beatBuyAndHold"] == 2  # 1.5 and 2.0; 1.0 only equals it
    assert got["beatBuyAndHoldTotalReturn"] == 2  # 0.6 and 0.9
    assert math.isclose(got["mean"], sum(values) / 5)
    assert spread(rows, METRICS["win-rate"])["beatBuyAndHold"] is None  # B&H has no win rate
