"""`account_window`: a run's account context stays bounded, and the risk manager's values
do not change by a bit.

The recorded equity curve gains a point a bar; sent whole, a 1m account's context passed
the agent services' 1 MiB body limit in about three weeks. `account_window` keeps only the
points that can matter for bars closing at or after the window's first close.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from conclave.agents import REGISTRY, AccountState
from conclave.pipeline.context import InputPlan, PipelineContext, account_window
from tests.agents.helpers import T0, make_input, random_candles

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
NOW = "2026-01-01T00:00:00.000Z"


def _curve(seed: int, n: int, start_ms: int, step_ms: int, dup_share: float) -> AccountState:
    rng = np.random.default_rng(seed)
    steps = np.where(rng.random(n) < dup_share, 0, rng.integers(1, step_ms, n))
    times = start_ms + np.cumsum(steps).astype(np.int64)
    equity = 1000.0 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
    return AccountState("acct-w", times, equity, open_exposure=float(rng.uniform(0, 500)),
                        start_of_day_equity=float(equity[-1]) * 1.01)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    points=st.integers(1, 3000),
    days_before=st.integers(0, 20),
    step_h=st.sampled_from([0.25, 1.0, 6.0]),
    dup_share=st.sampled_from([0.0, 0.2]),
    bars=st.integers(30, 400),
)
def test_the_risk_manager_says_the_same_to_the_bit(
    seed: int, points: int, days_before: int, step_h: float, dup_share: float, bars: int
) -> None:
    """Random curves starting up to 20 days before the candles, with duplicate times:
    every bar's score and confidence and the evidence are equal with the whole curve and
    with its window, and the window never holds more points than the whole."""
    candles = random_candles(seed % 10_000, bars)
    curve = _curve(seed, points, T0 - days_before * DAY_MS, int(step_h * HOUR_MS), dup_share)
    window = account_window(curve, int(candles.close_time[0]))
    agent = REGISTRY["risk-manager"]()
    whole = agent.series(make_input(candles, account=curve))
    cut = agent.series(make_input(candles, account=window))
    assert np.array_equal(whole.score, cut.score, equal_nan=True)
    assert np.array_equal(whole.confidence, cut.confidence, equal_nan=True)
    assert whole.evidence == cut.evidence
    assert window.equity.shape[0] <= curve.equity.shape[0]
    assert np.all(np.diff(window.equity_time_ms) >= 0)


def test_a_long_curve_is_cut_to_the_window_and_a_day() -> None:
    """Three weeks of one-minute points (30,240) before 300 1h bars: what is sent is the
    points from 00:00 UTC of the first bar's day on, plus the first and the highest."""
    candles = random_candles(7, 300)
    first_close = int(candles.close_time[0])
    start = first_close - 21 * DAY_MS
    times = start + 60_000 * np.arange(21 * 1440 + 300 * 60, dtype=np.int64)
    equity = 1000.0 + np.sin(np.arange(times.shape[0]) / 500.0) * 50.0
    curve = AccountState("acct-w", times, equity)
    window = account_window(curve, first_close)
    day_start = (first_close // DAY_MS) * DAY_MS
    assert window.equity_time_ms[0] == times[0]
    assert window.equity[1] == equity[: np.searchsorted(times, day_start)].max()
    assert int(window.equity_time_ms[2]) <= day_start
    assert window.equity.shape[0] <= 2 + 1440 + 300 * 60 + 1
    assert window.equity.shape[0] < curve.equity.shape[0] // 2


def test_the_pipeline_context_sends_the_window() -> None:
    """`PipelineContext.input` cuts the account for the agent that reads it (and gives no
    account to the others)."""
    candles = random_candles(3, 600)
    times = T0 - 30 * DAY_MS + HOUR_MS * np.arange(30 * 24 + 600, dtype=np.int64)
    curve = AccountState("acct-w", times, np.linspace(900.0, 1100.0, times.shape[0]))
    ctx = PipelineContext(account_id="acct-w", symbol=candles.symbol, timeframe="1h",
                          as_of_ms=int(candles.close_time[-1]), candles={"1h": candles},
                          account=curve)  # fmt: skip
    risk = ctx.input(InputPlan.of(REGISTRY["risk-manager"](), "1h"))
    momentum = ctx.input(InputPlan.of(REGISTRY["momentum"](), "1h"))
    assert momentum.account is None
    assert risk.account is not None
    assert risk.account.equity.shape[0] < curve.equity.shape[0]
    first_close = int(risk.candles.close_time[0])
    expected = account_window(curve, first_close)
    assert np.array_equal(risk.account.equity_time_ms, expected.equity_time_ms)
