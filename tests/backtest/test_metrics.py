"""Performance figures against hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conclave.backtest.metrics import (
    bar_returns,
    bars_per_year,
    buy_and_hold_equity,
    drawdown,
    performance,
)
from conclave.backtest.result import Fill

from .helpers import T0, make_result, synthetic

DAY = 86_400_000
HOUR = 3_600_000


def test_bars_per_year_is_calendar_time() -> None:
    assert bars_per_year("1h") == 8766.0
    assert bars_per_year("1d") == 365.25
    assert bars_per_year("15m") == 4 * 8766.0


def test_constant_growth() -> None:
    g, n = 1.001, 730
    equity = 1000.0 * g ** np.arange(1, n + 1)
    res = make_result(np.full(n, 10.0), equity=equity, timeframe="1d")
    perf = performance(res)
    assert perf.total_return == pytest.approx(g**n - 1.0, rel=1e-12)
    # n daily bars span n days = n / 365.25 years
    assert perf.years == pytest.approx(n / 365.25)
    assert perf.cagr == pytest.approx(g**365.25 - 1.0, rel=1e-9)
    assert perf.max_drawdown == 0.0
    assert perf.sharpe is None  # every return is the same: zero variance
    assert perf.sortino is None  # no downside at all
    assert perf.final_equity == pytest.approx(1000.0 * g**n)


def test_sharpe_and_sortino_by_hand() -> None:
    # returns +10%, -5%, +10%, -5%: mean 0.025, population std 0.075
    equity = 1000.0 * np.cumprod([1.1, 0.95, 1.1, 0.95])
    res = make_result(np.ones(4), equity=equity, timeframe="1d")
    np.testing.assert_allclose(
        bar_returns(res.equity, 1000.0), [0.1, -0.05, 0.1, -0.05], rtol=1e-12
    )
    perf = performance(res)
    root = math.sqrt(365.25)
    assert perf.sharpe == pytest.approx(0.025 / 0.075 * root, rel=1e-9)
    downside = math.sqrt((0.05**2 + 0.05**2) / 4)
    assert perf.sortino == pytest.approx(0.025 / downside * root, rel=1e-9)
    assert perf.max_drawdown == pytest.approx(0.05)
    assert perf.cagr is not None  # 4 days is over one day


def test_known_drawdown() -> None:
    equity = [1000.0, 1200.0, 900.0, 1100.0, 1300.0, 1040.0]
    res = make_result(np.ones(6), equity=equity)
    np.testing.assert_allclose(
        drawdown(res.equity, 1000.0), [0.0, 0.0, 0.25, 1 - 1100 / 1200, 0.0, 0.2]
    )
    assert performance(res).max_drawdown == pytest.approx(0.25)


def test_drawdown_peak_starts_at_the_starting_balance() -> None:
    res = make_result(np.ones(3), equity=[900.0, 950.0, 800.0])
    assert performance(res).max_drawdown == pytest.approx(0.2)
    np.testing.assert_allclose(drawdown(res.equity, 1000.0), [0.1, 0.05, 0.2])


def test_flat_curve() -> None:
    res = make_result(np.full(48, 5.0), timeframe="1h")
    perf = performance(res)
    assert perf.total_return == 0.0
    assert perf.sharpe is None
    assert perf.sortino is None
    assert perf.max_drawdown == 0.0
    assert perf.cagr == 0.0  # two days
    assert perf.win_rate is None
    assert perf.trades == 0
    assert perf.round_trips == 0
    assert perf.time_in_market == 0.0


def test_cagr_none_under_one_day() -> None:
    res = make_result(np.ones(23), equity=np.full(23, 1100.0), timeframe="1h")
    perf = performance(res)
    assert perf.years == pytest.approx(23 / (365.25 * 24))
    assert perf.cagr is None
    assert perf.total_return == pytest.approx(0.1)


def _fill(bar: int, side: str, qty: float, pnl: float | None, fee: float = 1.0) -> Fill:
    return Fill(
        time_ms=T0 + bar * HOUR,
        decision_ms=T0 + (bar - 1) * HOUR,
        side="BUY" if side == "BUY" else "SELL",
        qty=qty,
        price=100.0,
        fee=fee,
        realised_pnl=pnl,
        reason="test",
    )


def test_fills_win_rate_round_trips_and_exposure() -> None:
    #          bar: 0  1    2    3    4    5  6    7    8  9
    qty = np.array([0, 1.0, 1.0, 0.5, 0.5, 0, 2.0, 2.0, 0, 0])
    fills = [
        _fill(1, "BUY", 1.0, None),
        _fill(3, "SELL", 0.5, 5.0),  # partial: the position stays open
        _fill(5, "SELL", 0.5, -3.0),  # closes
        _fill(6, "BUY", 2.0, None),
        _fill(8, "SELL", 2.0, 1.0, fee=0.5),  # closes
    ]
    exposure = np.array([0, 0.1, 0.1, 0.05, 0.05, 0, 0.2, 0.2, 0, 0])
    res = make_result(np.full(10, 100.0), position_qty=qty, exposure=exposure, fills=fills)
    perf = performance(res)
    assert perf.trades == 5
    assert perf.buys == 2
    assert perf.sells == 3
    assert perf.win_rate == pytest.approx(2 / 3)
    assert perf.round_trips == 2
    assert perf.time_in_market == pytest.approx(0.6)
    assert perf.mean_exposure == pytest.approx(0.07)
    assert perf.fees_paid == pytest.approx(4.5)


def test_buy_and_hold_pays_slippage_and_fee() -> None:
    close = np.array([100.0, 120.0, 90.0, 150.0])
    open_ = np.array([100.0, 100.0, 120.0, 90.0])
    res = make_result(
        close, open_=open_, equity=[1000.0, 1010.0, 1020.0, 1030.0],
        fee_rate=0.001, slippage=0.002, timeframe="1d",
    )  # fmt: skip
    qty = 1000.0 / (100.0 * 1.002 * 1.001)
    np.testing.assert_allclose(buy_and_hold_equity(res), qty * close, rtol=1e-14)
    perf = performance(res)
    bh = perf.buy_and_hold
    assert bh.total_return == pytest.approx(qty * 150.0 / 1000.0 - 1.0, rel=1e-12)
    assert bh.final_equity == pytest.approx(qty * 150.0)
    assert bh.max_drawdown == pytest.approx(0.25)  # 120 -> 90
    assert bh.cagr == pytest.approx((qty * 150.0 / 1000.0) ** (365.25 / 4) - 1.0, rel=1e-9)
    r = np.array([qty * 100.0 / 1000.0 - 1.0, 0.2, -0.25, 150.0 / 90.0 - 1.0])
    assert bh.sharpe == pytest.approx(r.mean() / r.std() * math.sqrt(365.25), rel=1e-9)
    assert perf.total_return == pytest.approx(0.03)
    assert perf.excess == pytest.approx(0.03 - bh.total_return, rel=1e-12)


def test_to_json_is_camel_case_plain_json() -> None:
    res = make_result(np.full(5, 1.0), timeframe="1d")
    out = performance(res).to_json()
    json.dumps(out, allow_nan=False)
    assert {"totalReturn", "maxDrawdown", "winRate", "roundTrips", "buyAndHold", "excess"} <= set(
        out
    )
    assert out["sharpe"] is None
    assert out["buyAndHold"]["totalReturn"] == 0.0
    assert set(out["buyAndHold"]) == {
        "totalReturn", "cagr", "sharpe", "sortino", "maxDrawdown", "finalEquity",
    }  # fmt: skip


def test_performance_of_a_long_run_counts_every_fill() -> None:
    """On 100,000 bars every bar and fill is counted; the speed is in
    benchmarks/backtest_figures.py."""
    perf = performance(synthetic(100_000))
    assert perf.bars == 100_000
    assert perf.trades == 400
    assert perf.round_trips == 200
