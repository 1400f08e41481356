"""The agent phase gives the same series on threads as one after another."""

from __future__ import annotations

import numpy as np

from conclave.backtest.history import load_history
from conclave.backtest.signals import agent_series
from conclave.market.sources.sim import SimSource
from conclave.pipeline.orchestrator import default_agents
from conclave.timeframes import DAY_MS

NOW_MS = 1_700_000_000_000


async def test_two_threads_give_the_series_of_one_in_order_with_progress() -> None:
    """On 120 days of the simulated market, `agent_series` with two threads gives every
    agent's score, confidence, usable mask and columns bit for bit as with one, in
    registry order, and reports progress once per agent in that order."""
    agents = default_agents()
    src = SimSource(5, now_ms=lambda: NOW_MS)
    end = NOW_MS - NOW_MS % DAY_MS
    history = await load_history(src, "BTCUSDT", "1h", agents, start_ms=end - 120 * DAY_MS,
                                 end_ms=end, now_ms=NOW_MS)  # fmt: skip
    heard: list[tuple[str, int, int]] = []
    one = agent_series(history, agents)
    two = agent_series(history, agents, lambda *a: heard.append(a), workers=2)
    assert list(two) == list(one) == [n for n in agents if n != "risk-manager"]
    assert heard == [("agents", k + 1, len(one)) for k in range(len(one))]
    for name, a in one.items():
        b = two[name]
        for x, y in [(a.score, b.score), (a.confidence, b.confidence), (a.usable, b.usable)]:
            assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), name
        assert a.columns.keys() == b.columns.keys(), name
        for key, col in a.columns.items():
            assert np.array_equal(col.view(np.uint8), b.columns[key].view(np.uint8)), key
        assert (a.status, a.reason) == (b.status, b.reason)
