"""The live path (`Agent.run`, `Agent.compute_last`) equals the backtester's series exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conclave.agents import REGISTRY
from conclave.market.resample import resample
from tests.agents.helpers import load, make_input, random_candles
from tests.agents.test_contract import LOOKAHEAD_FILES, extras

AGENTS = list(REGISTRY)
NOW = "2025-01-01T00:00:00.000Z"


@pytest.mark.shared_data
@pytest.mark.parametrize("file", LOOKAHEAD_FILES[:2])
@pytest.mark.parametrize("name", AGENTS)
def test_run_equals_the_full_series_bit_for_bit(name: str, file: str, candles_dir: Path) -> None:
    """At sampled bars t, `run` on the data up to t gives the full series' score and
    confidence at t exactly, and the evidence of the series on its own lookback window."""
    c = load(candles_dir / file)
    agent = REGISTRY[name]()
    tf = c.timeframe.name
    full = agent.series(make_input(c, **extras(name)))
    need = agent.min_bars(tf)
    rng = np.random.default_rng(abs(hash((name, file, "live"))) % 2**32)
    sample = np.unique(np.r_[rng.integers(need, len(c), 40), need - 1, len(c) - 1])
    for t in sample.tolist():
        res = agent.run(make_input(c.take(slice(0, t + 1)), **extras(name)), now_iso=NOW)
        assert res.status == ("ok" if full.has_data()[t] else "no_data"), (t, res.reason)
        assert res.score == full.score[t], (t, "score")
        assert res.confidence == full.confidence[t], (t, "confidence")
        start = max(0, t + 1 - agent.lookback(tf))
        window = agent.series(make_input(c.take(slice(start, t + 1)), **extras(name)))
        assert res.payload == window.evidence, (t, "evidence")


@pytest.mark.parametrize("name", AGENTS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_compute_last_is_the_last_bar_of_compute(name: str, seed: int) -> None:
    """`compute_last` gives exactly the last bar of `compute`, on random walks too."""
    agent = REGISTRY[name]()
    c = random_candles(seed, agent.lookback("1h") + 40, flat_share=0.1)
    data = make_input(c.take(slice(len(c) - agent.lookback("1h"), None)), **extras(name))
    whole = agent.compute(data)
    last = agent.compute_last(data)
    assert last.score.shape == last.confidence.shape == (1,)
    assert last.score[0] == whole.score[-1]
    assert last.confidence[0] == whole.confidence[-1]
    assert last.evidence == whole.evidence


@pytest.mark.shared_data
def test_multi_timeframe_with_higher_bars_passed_in(candles_dir: Path) -> None:
    """Given the 4h and 1d bars (as the pipeline passes them) the live result equals the
    series that resamples them itself, at sampled bars."""
    c = load(candles_dir / LOOKAHEAD_FILES[0])
    agent = REGISTRY["multi-timeframe"]()
    full = agent.series(make_input(c))
    keep = agent.lookback("1h")
    for t in np.linspace(keep, len(c) - 1, 25).astype(int).tolist():
        upto = c.take(slice(0, t + 1))
        higher = {tf: resample(upto, tf) for tf in ("4h", "1d")}
        res = agent.run(make_input(upto, higher=higher), now_iso=NOW)
        assert (res.score, res.confidence) == (full.score[t], full.confidence[t]), t
