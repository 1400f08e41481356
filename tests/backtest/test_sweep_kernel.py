"""The sweep's compiled decision is `pre_decide`'s, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from conclave.backtest.result import AgentSeries
from conclave.backtest.signals import pre_decide
from conclave.backtest.sweep_kernel import decide
from conclave.pipeline.decision import (
    ANALYSIS_AGENTS,
    DIRECTIONAL_AGENTS,
    SIZING_AGENT,
    DecisionConfig,
)


def _series(rng: np.random.Generator, n: int, names: list[str]) -> dict[str, AgentSeries]:
    """Series as `agent_series` gives them: 0 where unusable, ties at the thresholds."""
    out = {}
    for name in names:
        usable = rng.random(n) > 0.2
        score = rng.choice([rng.uniform(-1, 1), 0.5, -0.5, 1.0, 0.0], n) * usable
        score = np.where(rng.random(n) < 0.5, rng.uniform(-1, 1, n), score) * usable
        conf = np.where(usable, rng.choice([0.0, 50.0, 100.0, 33.3], n), 0.0)
        cols = {"size_multiplier": rng.choice([1.0, 0.6, 0.25, 0.0], n)}
        out[name] = AgentSeries(name, score, conf, usable, columns=cols)
    return out


@pytest.mark.parametrize("seed", range(12))
def test_decide_is_pre_decide_bit_for_bit(seed: int) -> None:
    """Random weights (zeros included), thresholds, quorum and fallback, with some agents
    (the sizing one too, at times) absent: the same action, strength and volatility
    multiplier at every bar as `pre_decide`."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3000))
    names = [a for a in ANALYSIS_AGENTS if rng.random() < 0.8] or [DIRECTIONAL_AGENTS[0]]
    series = _series(rng, n, names)
    present = [a for a in DIRECTIONAL_AGENTS if a in series]
    weights = {a: float(rng.choice([0.0, 0.5, 1.0, rng.uniform(0, 3)])) for a in present}
    if not any(weights.values()):
        weights[present[0]] = 1.0
    buy, sell = (float(v) for v in rng.choice([0.5, rng.uniform(0.05, 0.9)], 2))
    config = DecisionConfig(weights=weights, buy_threshold=buy, sell_threshold=sell,
                            strong_threshold=max(buy, sell, float(rng.uniform(0, 1))),
                            quorum=int(rng.integers(1, len(names) // 2 + 2)),
                            volatility_fallback=float(rng.uniform(0, 1)))  # fmt: skip
    want = pre_decide(series, config, n)

    def rows(field: str, dtype: type) -> np.ndarray:
        return np.array([getattr(series[a], field) for a in present], dtype=dtype).reshape(
            len(present), n
        )

    healthy = sum(series[a].usable.astype(np.int64) for a in ANALYSIS_AGENTS if a in series)
    vol = series.get(SIZING_AGENT)
    vol_col = vol.columns["size_multiplier"] if vol is not None else np.zeros(n)
    vol_ok = vol.usable if vol is not None else np.zeros(n, dtype=bool)
    act, strength, vol_mult = np.empty(n, np.int8), np.empty(n), np.empty(n)
    decide(rows("score", np.float64), rows("confidence", np.float64), rows("usable", np.bool_),
           np.asarray(healthy, dtype=np.int64), vol_col, vol_ok,
           np.array([config.weight(a) for a in present]),
           np.array([buy, sell, config.strong_threshold, config.volatility_fallback]),
           config.quorum, act, strength, vol_mult, np.empty((4, n)))  # fmt: skip
    assert np.array_equal(act, want.action)
    assert np.array_equal(strength.view(np.uint64), want.strength.view(np.uint64))
    assert np.array_equal(vol_mult.view(np.uint64), want.vol_mult.view(np.uint64))
    assert len(set(act.tolist())) >= 3 or n < 50  # no decision, HOLD, BUY or SELL
