"""RELIABILITY B6: fewer candles than the warm-up needs is ``insufficient_data``, never an
exception.

Pass figure of the row: **0 exceptions across 9 agents x series of 0-250 candles.** Every
length from 0 to 250 for every agent, both the live step (`Agent.run`) and the full series
(`Agent.series`), with the news and account the agents read: below an agent's ``min_bars``
the live step is ``insufficient_data`` (score and confidence 0, the reason naming both
counts); from it on, a real answer (the news agent's ``no_data`` is one: no headline is
recent). Every series value is finite and in range at every length.
"""

from __future__ import annotations

import numpy as np
import pytest

from conclave.agents import REGISTRY, Agent
from tests.agents.helpers import make_input, random_candles
from tests.agents.test_contract import check_ranges, extras

NOW = "2025-01-01T00:00:00.000Z"
LENGTHS = range(0, 251)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_b6_every_length_from_0_to_250_bars(name: str) -> None:
    agent: Agent = REGISTRY[name]()
    need = agent.min_bars("1h")
    history = random_candles(17, 250)
    failures: list[str] = []
    statuses: dict[int, str] = {}
    for n in LENGTHS:
        candles = history.tail(n) if n else random_candles(17, 0)
        data = make_input(candles, **extras(name))
        try:
            live = agent.run(data, now_iso=NOW)
            series = agent.series(data)
        except Exception as exc:  # the row's figure: none at any length
            failures.append(f"{n} bars: {type(exc).__name__}: {exc}")
            continue
        statuses[n] = live.status
        check_ranges(series, n)
        assert np.isfinite([live.score, live.confidence]).all()
        if n < need:
            assert live.status == "insufficient_data", (n, need, live.reason)
            assert (live.score, live.confidence) == (0.0, 0.0)
            assert str(need) in live.reason
            assert str(n) in live.reason
        else:
            assert live.status in ("ok", "no_data"), (n, live.status, live.reason)
    assert failures == []
    assert len(statuses) == len(LENGTHS)
