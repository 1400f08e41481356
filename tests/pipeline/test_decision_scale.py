"""The decision's scale: a confidence-weighted mean of scores, no_data agents left out,
default weights for redundant voters, thresholds on the measured scale (issue 10, 4-5)."""

from __future__ import annotations

import math

import pytest

from conclave.pipeline import DecisionConfig, StepResult, decide
from conclave.pipeline.context import STEP_STATUSES
from conclave.pipeline.decision import DEFAULT_WEIGHTS
from tests.pipeline.helpers import step, steps

CONFIG = DecisionConfig()
NO_NEWS = StepResult.failed("news-sentiment", "no_data", "no news source configured")


def test_conviction_is_the_confidence_weighted_mean_of_scores() -> None:
    """sum w c s / sum w c, worked by hand: market-structure 0.5 x 60 x 0.9 = 27,
    order-flow 1 x 20 x -0.5 = -10, momentum 1 x 40 x 0.25 = 10, multi-timeframe
    0.5 x 80 x 0.5 = 20, pattern 1 x 0 x 1 = 0, statistical-edge 1 x 10 x -1 = -10, news
    no data: 37 / (30 + 20 + 40 + 40 + 0 + 10) = 37 / 140."""
    s = steps(
        market_structure=step("market-structure", 0.9, 60.0),
        order_flow=step("order-flow", -0.5, 20.0),
        momentum=step("momentum", 0.25, 40.0),
        news_sentiment=NO_NEWS,
        multi_timeframe=step("multi-timeframe", 0.5, 80.0),
        pattern_recognition=step("pattern-recognition", 1.0, 0.0),
        statistical_edge=step("statistical-edge", -1.0, 10.0),
    )
    d = decide(s, CONFIG)
    assert d.conviction == pytest.approx(37 / 140, abs=1e-15)
    # agreement 37 / (27 + 10 + 10 + 20 + 0 + 10) = 37 / 77; mean confidence 140 / 5.0
    assert d.confidence == pytest.approx(140 / 5.0 * 37 / 77, abs=1e-12)
    parts = {c.agent: c.contribution for c in d.contributions}
    assert parts["market-structure"] == pytest.approx(27 / 140)
    assert parts["pattern-recognition"] == 0.0
    assert parts["news-sentiment"] is None
    assert math.fsum(p for p in parts.values() if p is not None) == pytest.approx(37 / 140)


@pytest.mark.parametrize("factor", [0.1, 0.5, 1.0])
def test_scaling_every_confidence_alike_leaves_the_conviction(factor: float) -> None:
    """Confidence weighs agents against each other; strength enters once, through the
    score (the former formula multiplied it by the confidence a second time)."""
    confs = {"market-structure": 90.0, "order-flow": 30.0, "momentum": 60.0,
             "news-sentiment": 45.0, "multi-timeframe": 80.0, "pattern-recognition": 20.0,
             "statistical-edge": 70.0}  # fmt: skip
    scores = dict(zip(confs, (0.8, -0.3, 0.4, 0.1, 0.6, -0.9, 0.2), strict=True))
    base = steps() | {a: step(a, scores[a], confs[a]) for a in confs}
    scaled = steps() | {a: step(a, scores[a], factor * confs[a]) for a in confs}
    assert decide(scaled, CONFIG).conviction == pytest.approx(
        decide(base, CONFIG).conviction, rel=1e-12
    )


def test_every_confidence_zero_is_conviction_zero_and_hold() -> None:
    """Agents that are all unsure give no conviction at all, not a division by zero."""
    d = decide(steps(0.9, 0.0), CONFIG)
    assert (d.status, d.action, d.conviction, d.confidence) == ("ok", "HOLD", 0.0, 0.0)
    assert all(c.contribution in (None, 0.0) for c in d.contributions)


def test_no_data_is_a_step_status_of_its_own() -> None:
    """no_data sits beside ok and error in the statuses a step may have."""
    assert "no_data" in STEP_STATUSES
    assert {"ok", "error"} < set(STEP_STATUSES)
    assert NO_NEWS.ok is False
    assert (NO_NEWS.score, NO_NEWS.confidence, NO_NEWS.error) == (
        None, None, "no news source configured",
    )  # fmt: skip


def test_a_no_data_agent_is_out_of_both_sums_and_the_quorum_but_not_missing() -> None:
    """news-sentiment with no data: the conviction is the other six's, it is not counted
    healthy, and the run is not degraded (it had nothing to read; nothing failed)."""
    s = steps(0.65, 80.0, news_sentiment=NO_NEWS)
    s["order-flow"] = step("order-flow", -0.2, 50.0)
    d = decide(s, CONFIG)
    # 0.65 x 80 x (0.5 + 1 + 0.5 + 1 + 1) - 0.2 x 50 = 208 - 10 over 320 + 50
    assert d.conviction == pytest.approx(198 / 370, abs=1e-15)
    assert (d.healthy_analysis, d.degraded, d.missing_agents) == (7, False, ())
    news = next(c for c in d.contributions if c.agent == "news-sentiment")
    assert (news.status, news.score, news.confidence, news.contribution) == (
        "no_data", None, None, None,
    )  # fmt: skip
    assert d.to_wire()["quorum"] == {"healthy": 7, "required": 6}


def test_quorum_counts_agents_with_data() -> None:
    """Without news (no data) the seven others decide, and still with one of them down;
    with two down five remain and there is no decision, the reason naming both kinds."""
    one = steps(0.65, 80.0, news_sentiment=NO_NEWS,
                momentum=StepResult.failed("momentum", "error", "down"))  # fmt: skip
    d = decide(one, CONFIG)
    assert (d.status, d.action, d.healthy_analysis, d.missing_agents) == (
        "ok", "BUY", 6, ("momentum",),
    )  # fmt: skip
    two = one | {"order-flow": StepResult.failed("order-flow", "timeout", "timeout")}
    d = decide(two, CONFIG)
    assert (d.status, d.action) == ("failed", None)
    assert d.reason.startswith("insufficient_agents: 5 of 8 analysis agents healthy with data")
    assert "missing order-flow, momentum" in d.reason
    assert "no data news-sentiment" in d.reason


def test_a_no_data_sizing_agent_falls_back_without_degrading() -> None:
    """volatility-regime with no data sizes by the fallback like a failed one, but the run
    is not degraded; it is not counted in the quorum."""
    vol = StepResult.failed("volatility-regime", "no_data", "no bars with a range")
    d = decide(steps(0.9, 90.0, volatility_regime=vol), DecisionConfig(volatility_fallback=0.25))
    assert d.size_multiplier == pytest.approx(0.25)
    assert (d.degraded, d.healthy_analysis) == (False, 7)


def test_default_weights_give_the_trend_pair_one_vote() -> None:
    """market-structure and multi-timeframe (scores correlated 0.82) weigh 0.5 each; the
    other directional agents 1; a weight given overrides only that agent's default."""
    assert dict(DEFAULT_WEIGHTS) == {"market-structure": 0.5, "multi-timeframe": 0.5}
    assert CONFIG.weight("market-structure") == CONFIG.weight("multi-timeframe") == 0.5
    assert CONFIG.weight("momentum") == 1.0
    assert CONFIG.weight("volatility-regime") == 0.0
    given = DecisionConfig(weights={"market-structure": 1.0})
    assert given.weights["market-structure"] == 1.0
    assert given.weights["multi-timeframe"] == 0.5
    s = steps(0.0, 50.0, market_structure=step("market-structure", 1.0, 50.0))
    # sum w is 6 with the defaults, 6.5 with market-structure at 1
    assert decide(s, CONFIG).conviction == pytest.approx(0.5 * 50 / (50 * 6.0))
    assert decide(s, given).conviction == pytest.approx(1.0 * 50 / (50 * 6.5))


def test_thresholds_sit_on_the_measured_scale() -> None:
    """Buy/sell at p80 and strong at p97 of |conviction| on BTC and ETH 1h (README): 0.59
    and 0.72; a conviction at the strong threshold trades at full strength."""
    assert (CONFIG.buy_threshold, CONFIG.sell_threshold, CONFIG.strong_threshold) == (
        0.59, 0.59, 0.72,
    )  # fmt: skip
    d = decide(steps(0.72, 60.0), CONFIG)
    assert (d.action, d.strength) == ("BUY", 1.0)
    assert decide(steps(0.58, 60.0), CONFIG).action == "HOLD"
