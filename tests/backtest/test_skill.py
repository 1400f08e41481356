"""Per-agent skill on series whose answers are known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conclave.backtest.skill import (
    DECISION,
    AgentSkill,
    agent_skill,
    next_returns,
    rankdata,
    score_correlation,
    score_skill,
    spearman,
)

from .helpers import agent, make_result, synthetic


def _walk(n: int, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))


def _by_name(skills: list[AgentSkill], name: str) -> AgentSkill:
    return next(s for s in skills if s.name == name)


def test_perfect_and_inverted_predictors() -> None:
    close = _walk(200)
    r = close[1:] / close[:-1] - 1.0
    score = np.append(np.tanh(50 * r), 0.7)  # the last bar has no next bar
    res = make_result(close, agents=[agent("good", score), agent("bad", -score)])
    good = _by_name(agent_skill(res), "good")
    bad = _by_name(agent_skill(res), "bad")
    assert good.signals == 199
    assert good.hit_rate == 1.0
    assert good.ic == pytest.approx(1.0)
    assert good.mean_signed_return == pytest.approx(np.mean(np.abs(r)))
    assert bad.hit_rate == 0.0
    assert bad.ic == pytest.approx(-1.0)
    assert bad.mean_signed_return == pytest.approx(-np.mean(np.abs(r)))


def test_decision_comes_last_and_skips_bars_without_decision() -> None:
    close = np.array([100.0, 101.0, 100.0, 102.0, 103.0, 101.0])
    conviction = np.array([0.5, -0.2, np.nan, 0.3, 0.1, 0.9])
    confidence = np.array([90.0, 10.0, np.nan, 50.0, 30.0, 70.0])
    res = make_result(close, conviction=conviction, confidence=confidence)
    skills = agent_skill(res)
    assert [s.name for s in skills] == [DECISION]
    d = skills[0]
    # bars 0, 1, 3, 4 (bar 2 has no decision, bar 5 no next bar): all right but bar 4
    assert d.signals == 4
    assert d.hit_rate == pytest.approx(3 / 4)
    r = np.array([0.01, -1 / 101, 103 / 102 - 1, 101 / 103 - 1])
    signed = np.array([1, -1, 1, 1]) * r
    assert d.mean_signed_return == pytest.approx(signed.mean())
    assert [b.count for b in d.buckets] == [1, 1, 1, 0, 1]


def test_zero_scores_unusable_bars_and_zero_returns() -> None:
    close = np.array([100.0, 100.0, 101.0, 100.0, 102.0, 103.0, 103.0])
    score = np.array([1.0, 1.0, 0.0, -1.0, 1.0, 0.5, -1.0])
    usable = np.array([True, True, True, True, False, True, True])
    res = make_result(
        close, agents=[agent("a", score, usable=usable), agent("volatility-regime", np.zeros(7))]
    )
    a = _by_name(agent_skill(res), "a")
    # signals: bars 0 (r=0), 1 (+), 3 (+, wrong), 5 (r=0); bar 2 scores 0, bar 4 unusable
    assert a.signals == 4
    assert a.hit_rate == pytest.approx(1 / 2)  # r == 0 bars left out: 1 of bars 1 and 3
    signed = [0.0, 0.01, -0.02, 0.0]
    assert a.mean_signed_return == pytest.approx(np.mean(signed))
    flat = _by_name(agent_skill(res), "volatility-regime")
    assert flat.signals == 0
    assert flat.hit_rate is None
    assert flat.ic is None
    assert flat.mean_signed_return is None
    assert [b.count for b in flat.buckets] == [0] * 5
    assert all(b.hit_rate is None for b in flat.buckets)
    json.dumps(flat.to_json(), allow_nan=False)


def test_calibration_buckets() -> None:
    conf = np.array([5.0, 25.0, 25.0, 45.0, 65.0, 85.0, 100.0, 19.999, 20.0, 79.99])
    score = np.array([1.0, 1.0, -1.0, 1.0, -1.0, 1.0, 1.0, -1.0, 1.0, 1.0])
    r = np.array([0.01, 0.02, 0.03, -0.01, -0.02, 0.01, -0.03, -0.01, 0.0, 0.04])
    skill = score_skill(
        "a", np.append(score, 0.0), np.append(conf, 0.0), np.ones(11, dtype=np.bool_), r
    )
    counts = [b.count for b in skill.buckets]
    assert counts == [2, 3, 1, 2, 2]
    assert [(b.lower, b.upper) for b in skill.buckets] == [
        (0.0, 20.0), (20.0, 40.0), (40.0, 60.0), (60.0, 80.0), (80.0, 100.0),
    ]  # fmt: skip
    b0, b1, b2, b3, b4 = skill.buckets
    assert b0.hit_rate == 1.0  # +/+ and -/-
    assert b0.mean_signed_return == pytest.approx(0.01)
    assert b1.hit_rate == pytest.approx(1 / 2)  # the r == 0 bar is left out
    assert b1.mean_signed_return == pytest.approx((0.02 - 0.03 + 0.0) / 3)
    assert b2.hit_rate == 0.0
    assert b3.hit_rate == 1.0
    assert b3.mean_signed_return == pytest.approx((0.02 + 0.04) / 2)
    assert b4.hit_rate == pytest.approx(1 / 2)  # 85 and 100 (the top edge belongs here)
    assert b4.mean_signed_return == pytest.approx(-0.01)
    assert skill.signals == 10
    assert skill.hit_rate == pytest.approx(6 / 9)
    out = skill.to_json()
    assert out["buckets"][1] == {
        "lower": 20.0, "upper": 40.0, "count": 3, "hitRate": 0.5,
        "meanSignedReturn": pytest.approx(-0.01 / 3),
    }  # fmt: skip


def test_rankdata_averages_ties() -> None:
    np.testing.assert_array_equal(rankdata(np.array([3.0, 1.0, 2.0, 2.0])), [4, 1, 2.5, 2.5])
    np.testing.assert_array_equal(rankdata(np.array([5.0, 5.0, 5.0])), [2, 2, 2])
    np.testing.assert_array_equal(
        rankdata(np.array([0.0, -1.0, 0.0, 7.0, -1.0])), [3.5, 1.5, 3.5, 5, 1.5]
    )


def test_spearman_with_ties_by_hand() -> None:
    # ranks x: 1, 2.5, 2.5, 4 ; y: 1, 2, 3, 4 -> 4.5 / sqrt(4.5 * 5)
    rho = spearman(np.array([1.0, 2.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert rho == pytest.approx(4.5 / np.sqrt(4.5 * 5.0))


def _slow_average_ranks(x: np.ndarray) -> np.ndarray:
    values = x.tolist()
    out = []
    for v in values:
        below = sum(1 for w in values if w < v)
        equal = sum(1 for w in values if w == v)
        out.append(below + (equal + 1) / 2)
    return np.array(out)


def test_spearman_matches_references() -> None:
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=500), rng.normal(size=500) + 0.5 * rng.normal(size=500)
    y = y + x
    rx = np.argsort(np.argsort(x)).astype(float)
    ry = np.argsort(np.argsort(y)).astype(float)
    assert spearman(x, y) == pytest.approx(np.corrcoef(rx, ry)[0, 1], abs=1e-12)
    # with many ties: against a slow average-rank reference
    xt, yt = rng.integers(0, 5, 200).astype(float), rng.integers(0, 7, 200).astype(float)
    ref = np.corrcoef(_slow_average_ranks(xt), _slow_average_ranks(yt))[0, 1]
    assert spearman(xt, yt) == pytest.approx(ref, abs=1e-12)
    np.testing.assert_array_equal(rankdata(xt), _slow_average_ranks(xt))


def test_ic_through_the_shared_return_order_equals_direct() -> None:
    close = _walk(300, seed=5)
    rng = np.random.default_rng(2)
    score = rng.integers(-3, 4, 300).astype(float)  # ties and zeros
    usable = rng.random(300) < 0.8
    r = next_returns(close)
    direct = score_skill("a", score, np.full(300, 50.0), usable, r)
    shared = score_skill("a", score, np.full(300, 50.0), usable, r, np.argsort(r))
    mask = usable[:299] & (score[:299] != 0)
    assert direct.ic == pytest.approx(spearman(score[:299][mask], r[mask]), abs=1e-12)
    assert shared.ic == pytest.approx(direct.ic, abs=1e-12)
    assert (shared.signals, shared.hit_rate, shared.buckets) == (
        direct.signals, direct.hit_rate, direct.buckets,
    )  # fmt: skip


def test_ic_none_with_few_signals_or_constant_returns() -> None:
    res = make_result([100.0, 101.0, 100.0], agents=[agent("a", [1.0, -1.0, 1.0])])
    a = _by_name(agent_skill(res), "a")
    assert a.signals == 2
    assert a.ic is None
    assert a.hit_rate == 1.0
    growth = 100.0 * 2.0 ** np.arange(6)  # every return is exactly +100%
    res = make_result(growth, agents=[agent("b", [1.0, -0.5, 0.2, 0.9, -0.1, 0.0])])
    b = _by_name(agent_skill(res), "b")
    assert b.signals == 5
    assert b.ic is None
    assert b.hit_rate == pytest.approx(3 / 5)


def test_skill_and_performance_of_a_long_run() -> None:
    """On 100,000 bars every agent gets a skill row (the most skilled one a high IC) and the
    performance is plain JSON; the speed is in benchmarks/backtest_figures.py."""
    res = synthetic(100_000)
    skills = agent_skill(res)
    assert len(skills) == 10
    assert _by_name(skills, "risk-manager").signals == 0
    stat = _by_name(skills, "statistical-edge")  # built with the most skill
    assert stat.ic is not None
    assert stat.ic > 0.3


def test_score_correlation_over_bars_where_both_are_usable() -> None:
    """Pearson's r of two directional agents' scores over the bars both are usable, by
    hand; the same vote cast twice is 1, a mirrored one -1; non-directional agents and an
    agent that never had data are left out or None."""
    close = _walk(8)
    x = np.array([0.1, 0.4, -0.2, 0.3, 0.0, -0.5, 0.9, 5.0])
    y = np.array([0.2, 0.1, -0.4, 0.5, 0.1, -0.3, 0.7, -9.0])
    usable = np.array([True] * 7 + [False])  # the wild last pair is never compared
    res = make_result(close, agents=[
        agent("market-structure", x, usable=usable),
        agent("multi-timeframe", x, usable=np.ones(8, dtype=bool)),
        agent("momentum", y, usable=usable),
        agent("statistical-edge", -x, usable=usable),
        agent("news-sentiment", np.zeros(8), usable=np.zeros(8, dtype=bool)),
        agent("volatility-regime", y),
    ])  # fmt: skip
    m = score_correlation(res)
    assert list(m) == ["market-structure", "momentum", "news-sentiment", "multi-timeframe",
                       "statistical-edge"]  # fmt: skip
    xs, ys = x[:7] - x[:7].mean(), y[:7] - y[:7].mean()
    want = float(xs @ ys / np.sqrt((xs @ xs) * (ys @ ys)))
    assert m["market-structure"]["momentum"] == pytest.approx(want, abs=1e-12)
    assert m["momentum"]["market-structure"] == m["market-structure"]["momentum"]
    assert m["market-structure"]["multi-timeframe"] == pytest.approx(1.0)
    assert m["market-structure"]["statistical-edge"] == pytest.approx(-1.0)
    assert m["market-structure"]["market-structure"] == pytest.approx(1.0)
    assert m["news-sentiment"]["momentum"] is None
    assert m["news-sentiment"]["news-sentiment"] is None
    assert json.loads(json.dumps(m)) == m


def test_score_correlation_is_none_for_a_constant_score() -> None:
    """A constant score has no correlation (not rounding noise around 0)."""
    close = _walk(50)
    res = make_result(close, agents=[agent("momentum", np.full(50, 0.1)),
                                     agent("order-flow", np.linspace(-1, 1, 50))])  # fmt: skip
    assert score_correlation(res)["momentum"]["order-flow"] is None
