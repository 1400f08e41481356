"""The decision: weighted, confidence-aware, with quorum, veto and degraded runs (C4-C6)."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from conclave.pipeline import (
    ALL_AGENTS,
    ANALYSIS_AGENTS,
    DIRECTIONAL_AGENTS,
    DecisionConfig,
    StepResult,
    decide,
)
from tests.pipeline.helpers import risk, step, steps

CONFIG = DecisionConfig()


def test_all_healthy_buy_by_threshold_and_contributions_sum_to_conviction() -> None:
    """Seven agents at +0.65 with confidence 80 give conviction 0.65 (unanimous: the mean of
    their scores): BUY, strength 0.65/0.72; market-structure (weight 0.5) pulls 0.5 x 80 x
    0.65 out of sum w c = 80 x (5 + 2 x 0.5) = 480."""
    d = decide(steps(0.65, 80.0), CONFIG)
    assert (d.status, d.action, d.degraded, d.missing_agents) == ("ok", "BUY", False, ())
    assert d.conviction == pytest.approx(0.65)
    assert d.strength == pytest.approx(0.65 / 0.72)
    assert d.size_multiplier == pytest.approx(0.65 / 0.72)
    assert d.tradable is True
    parts = [c.contribution for c in d.contributions if c.contribution is not None]
    assert math.fsum(parts) == pytest.approx(d.conviction, abs=1e-12)
    ms = next(c for c in d.contributions if c.agent == "market-structure")
    assert (ms.weight, ms.contribution) == (0.5, pytest.approx(26.0 / 480.0))
    assert [c.agent for c in d.contributions] == list(ALL_AGENTS)
    assert d.confidence == pytest.approx(80.0)  # all agree: the mean confidence


@pytest.mark.parametrize(
    ("score", "action"), [(0.7, "BUY"), (0.5, "HOLD"), (-0.5, "HOLD"), (-0.7, "SELL")]
)
def test_thresholds_map_conviction_to_action(score: float, action: str) -> None:
    """Unanimous agents give conviction = their score, against thresholds +/-0.59: BUY,
    HOLD or SELL."""
    d = decide(steps(score, 80.0), CONFIG)
    assert d.action == action
    assert d.tradable is (action != "HOLD")
    if action == "HOLD":
        assert d.strength == 0.0
        assert d.size_multiplier == 0.0


def test_a_less_sure_dissenter_pulls_less() -> None:
    """Confidence weighs an agent against the others (an unsure agent pulls less), it does
    not scale the conviction: every confidence alike gives the same conviction. Six at +0.6
    (sum w = 5) and momentum at -0.6: with confidence 90 all, (54 x 5 - 54) / 540 = 0.4;
    momentum at 30, (54 x 5 - 18) / (450 + 30) = 0.525."""
    assert decide(steps(0.6, 90.0), CONFIG).conviction == pytest.approx(0.6)
    assert decide(steps(0.6, 30.0), CONFIG).conviction == pytest.approx(0.6)
    sure = decide(steps(0.6, 90.0, momentum=step("momentum", -0.6, 90.0)), CONFIG)
    unsure = decide(steps(0.6, 90.0, momentum=step("momentum", -0.6, 30.0)), CONFIG)
    assert sure.conviction == pytest.approx(0.4)
    assert unsure.conviction == pytest.approx(0.525)


BAD_STEPS = {
    "score 7": step("momentum", 7.0, 80.0),
    "score NaN": step("momentum", math.nan, 80.0),
    "confidence NaN": step("momentum", 0.5, math.nan),
    "confidence 150": step("momentum", 0.5, 150.0),
    "status error (500)": StepResult.failed("momentum", "error", "http_500: server error"),
    "status error (non-JSON)": StepResult.failed("momentum", "error", "invalid_json"),
    "timeout": StepResult.failed("momentum", "timeout", "timeout: no answer within 2000 ms"),
}


@pytest.mark.parametrize("bad", list(BAD_STEPS), ids=list(BAD_STEPS))
def test_c4_invalid_or_failed_step_is_left_out_and_named(bad: str) -> None:
    """C4: an invalid value never reaches the decision; the run is degraded and names it."""
    d = decide(steps(0.65, 80.0, momentum=BAD_STEPS[bad]), CONFIG)
    assert d.degraded is True
    assert d.missing_agents == ("momentum",)
    momentum = next(c for c in d.contributions if c.agent == "momentum")
    assert (momentum.score, momentum.confidence, momentum.contribution) == (None, None, None)
    # the six remaining directional agents (a 0 for the missing one: 0.65 x 400 / 480)
    assert d.conviction == pytest.approx(0.65)
    assert math.isfinite(d.conviction)
    assert math.isfinite(d.confidence)
    assert d.action == "BUY"


RISK_DOWN = {
    "missing": None,
    "error": StepResult.failed("risk-manager", "error", "connection refused"),
    "timeout": StepResult.failed("risk-manager", "timeout", "timeout"),
    "stale data": StepResult.failed("risk-manager", "stale_data", "stale_data"),
    "NaN confidence": step("risk-manager", 0.0, math.nan, payload=risk().payload),
    "allowed not a boolean": risk(allowed="yes"),
    "size multiplier 2": risk(mult=2.0),
    "size multiplier NaN": risk(mult=math.nan),
    "no verdict": step("risk-manager", 0.0, 100.0, payload={}),
}


@pytest.mark.parametrize("score", [0.9, 0.0, -0.9])
@pytest.mark.parametrize("variant", list(RISK_DOWN), ids=list(RISK_DOWN))
def test_c5_risk_manager_down_blocks_every_run(variant: str, score: float) -> None:
    """C5: without a usable risk verdict the decision is BLOCKED and never tradable."""
    s = steps(score, 90.0)
    if RISK_DOWN[variant] is None:
        del s["risk-manager"]
    else:
        s["risk-manager"] = RISK_DOWN[variant]  # type: ignore[assignment]
    d = decide(s, CONFIG)
    assert (d.status, d.action, d.tradable, d.size_multiplier) == ("blocked", "BLOCKED", False, 0)
    assert d.reason.startswith("risk_manager_unavailable")
    assert "risk-manager" in d.missing_agents
    assert d.degraded


@pytest.mark.parametrize(
    "gone",
    [
        ("market-structure", "order-flow", "momentum", "news-sentiment"),
        ("momentum", "volatility-regime", "multi-timeframe", "risk-manager"),
        ("order-flow", "pattern-recognition", "statistical-edge", "multi-timeframe"),
    ],
)
def test_c6_four_of_nine_missing_fails_with_no_action(gone: tuple[str, ...]) -> None:
    """C6: more than 3 of 9 agents missing -> failed:insufficient_agents, no decision."""
    s = steps(0.9, 90.0)
    for name in gone:
        s[name] = StepResult.failed(name, "error", "down")
    d = decide(s, CONFIG)
    assert (d.status, d.action, d.tradable) == ("failed", None, False)
    assert d.reason.startswith("insufficient_agents")
    assert set(d.missing_agents) == set(gone)
    assert d.to_wire()["action"] is None


def test_quorum_is_six_of_the_eight_analysis_agents() -> None:
    """Two analysis agents down still decides (degraded); three down does not."""
    two = steps(0.5, 80.0)
    for name in ("order-flow", "momentum"):
        two[name] = StepResult.failed(name, "error", "down")
    assert decide(two, CONFIG).status == "ok"
    two["news-sentiment"] = StepResult.failed("news-sentiment", "error", "down")
    assert decide(two, CONFIG).status == "failed"
    assert decide(two, DecisionConfig(quorum=5)).status == "ok"


def test_risk_veto_holds_with_the_risk_managers_reason() -> None:
    """allowed false on a BUY: HOLD, not tradable, the risk manager's reason."""
    d = decide(steps(0.9, 90.0, risk_manager=risk(False, 0.0, "drawdown 25% from peak")), CONFIG)
    assert (d.status, d.action, d.tradable, d.size_multiplier) == ("ok", "HOLD", False, 0.0)
    assert d.risk_veto is True
    assert d.reason.startswith("risk_veto")
    assert "drawdown 25% from peak" in d.reason


@pytest.mark.parametrize("score", [-0.95, -0.7])
def test_risk_veto_blocks_entries_only_a_sell_stays_tradable(score: float) -> None:
    """allowed false on a SELL: still a tradable SELL sized by its strength alone (no
    volatility or risk multiplier); the reason names the veto and says it blocks entries."""
    vol = step("volatility-regime", 0.0, 90.0, payload={"size_multiplier": 0.25})
    veto = risk(False, 0.0, "account halted")
    d = decide(steps(score, 90.0, volatility_regime=vol, risk_manager=veto), CONFIG)
    assert (d.status, d.action, d.tradable) == ("ok", "SELL", True)
    assert 0.0 < d.strength <= 1.0
    assert d.size_multiplier == d.strength
    assert d.risk_veto is True
    assert "risk_veto: account halted" in d.reason
    assert "entries only" in d.reason
    assert d.to_wire()["riskVeto"] is True


def test_size_multiplier_applies_volatility_and_risk_multipliers() -> None:
    """A BUY's size = strength x volatility multiplier x risk multiplier (fallback when vol
    failed); a SELL's = strength alone, whatever the multipliers."""
    vol = step("volatility-regime", 0.0, 90.0, payload={"size_multiplier": 0.6})
    d = decide(steps(0.9, 90.0, volatility_regime=vol, risk_manager=risk(True, 0.5)), CONFIG)
    assert d.strength == 1.0
    assert d.size_multiplier == pytest.approx(0.3)
    assert d.risk_veto is False
    sell = decide(steps(-0.9, 90.0, volatility_regime=vol, risk_manager=risk(True, 0.5)), CONFIG)
    assert (sell.action, sell.strength, sell.size_multiplier) == ("SELL", 1.0, 1.0)
    gone = StepResult.failed("volatility-regime", "error", "down")
    fallback = DecisionConfig(volatility_fallback=0.25)
    sell = decide(steps(-0.9, 90.0, volatility_regime=gone), fallback)
    assert (sell.action, sell.size_multiplier) == ("SELL", sell.strength)
    down = StepResult.failed("volatility-regime", "error", "down")
    d = decide(steps(0.9, 90.0, volatility_regime=down), DecisionConfig(volatility_fallback=0.25))
    assert d.size_multiplier == pytest.approx(0.25)
    assert d.degraded
    assert d.missing_agents == ("volatility-regime",)


def test_weights_are_configurable() -> None:
    """A weight of 3 on one agent moves conviction by the documented formula: six at 0 with
    confidence 50 (sum w = 5.5 with market-structure's 0.5) and multi-timeframe at +1 with
    100: weight 0.5 gives 50 / (275 + 50), weight 3 gives 300 / (275 + 300). Weights not
    given keep their defaults."""
    s = steps(0.0, 50.0)
    s["multi-timeframe"] = step("multi-timeframe", 1.0, 100.0)
    plain = decide(s, CONFIG)
    heavy = decide(s, DecisionConfig(weights={"multi-timeframe": 3.0}))
    assert plain.conviction == pytest.approx(50 / 325)
    assert heavy.conviction == pytest.approx(300 / 575)
    assert DecisionConfig(weights={"momentum": 2}).weight("order-flow") == 1.0
    assert DecisionConfig(weights={"momentum": 2}).weight("market-structure") == 0.5


@pytest.mark.parametrize(
    ("weights", "named"),
    [
        ({"momentun": 1.0}, "momentun"),
        ({"volatility-regime": 1.0}, "volatility-regime"),
        ({"risk-manager": 1.0}, "risk-manager"),
        ({"momentum": -1.0}, "momentum"),
    ],
)
def test_bad_weight_key_is_an_error_naming_it(weights: dict[str, float], named: str) -> None:
    """An unknown, non-directional or negative weight fails loudly, naming the agent."""
    with pytest.raises(ValidationError, match=named):
        DecisionConfig(weights=weights)


def test_unknown_config_key_is_an_error() -> None:
    """DecisionConfig forbids unknown keys (a typo must not run with a default)."""
    with pytest.raises(ValidationError, match="buy_treshold"):
        DecisionConfig.model_validate({"buy_treshold": 0.2})


def test_wire_form_is_camel_case() -> None:
    """Decision.to_wire carries the documented camelCase keys and each contribution."""
    wire = decide(steps(), CONFIG).to_wire()
    assert {
        "action", "strength", "conviction", "confidence", "sizeMultiplier", "tradable",
        "degraded", "missingAgents", "reason", "contributions", "status",
    } <= wire.keys()  # fmt: skip
    assert set(wire["contributions"]) == set(ALL_AGENTS)
    assert wire["contributions"]["momentum"].keys() == {
        "status", "weight", "score", "confidence", "contribution",
    }  # fmt: skip


def test_agent_lists_match_the_registry() -> None:
    """The decision's agent names are the registry's, in order."""
    from conclave.agents import REGISTRY

    assert tuple(REGISTRY) == ALL_AGENTS
    assert len(ANALYSIS_AGENTS) == 8
    assert len(DIRECTIONAL_AGENTS) == 7
