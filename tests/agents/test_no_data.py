"""Status no_data: an agent with no input to speak from says so, bar by bar and live."""

from __future__ import annotations

import json

import numpy as np

from conclave.agents import REGISTRY, SeriesOutput
from conclave.agents.outputs import HAS_DATA
from conclave.news.headline import Headline
from conclave.pipeline.context import StepResult
from conclave.pipeline.http_runner import parse_answer
from tests.agents.helpers import candles_from_close, make_input

HOUR = 3_600_000
NOW = "2025-01-01T00:00:00.000Z"


def test_news_without_a_source_has_no_data_at_any_bar() -> None:
    """No news source: status no_data with the reason, score and confidence 0, no bar with
    data; the live answer carries the same status and reason on the wire."""
    c = candles_from_close(np.full(48, 100.0))
    agent = REGISTRY["news-sentiment"]()
    out = agent.series(make_input(c))
    assert (out.status, out.reason) == ("no_data", "no news source configured")
    assert not out.has_data().any()
    assert not out.score.any()
    assert not out.confidence.any()
    res = agent.run(make_input(c), now_iso=NOW)
    assert (res.status, res.score, res.confidence) == ("no_data", 0.0, 0.0)
    meta = res.to_wire()["meta"]
    assert (meta["status"], meta["reason"]) == ("no_data", "no news source configured")


def test_news_has_data_where_headlines_are_in_its_horizon() -> None:
    """The has_data column is 1 at the bars with a headline in the last 72 h and 0 at the
    others; the live run at each bar is no_data exactly where the column is 0."""
    c = candles_from_close(np.full(200, 100.0))
    close = c.close_time
    news = [Headline(int(close[20]) - 1, "Bitcoin rallies to a record", assets=("BTC",))]
    agent = REGISTRY["news-sentiment"]()
    out = agent.series(make_input(c, news=news))
    has = out.has_data()
    assert np.array_equal(out.columns[HAS_DATA], has.astype(np.float64))
    in_horizon = (close >= close[20] - 1) & (close - (close[20] - 1) <= 72 * HOUR)
    assert np.array_equal(has, in_horizon)
    assert out.status == "no_data"  # the last bar is 179 h after the headline
    for t in (19, 20, 50, 92, 93, 199):
        live = agent.run(make_input(c.take(slice(0, t + 1)), news=news), now_iso=NOW)
        assert live.status == ("ok" if has[t] else "no_data"), t
        assert live.confidence == out.confidence[t]


def test_has_data_defaults_follow_the_status() -> None:
    """Without the column every bar has data unless the status is no_data."""
    z = np.zeros(3)
    assert SeriesOutput(z, z, {}).has_data().all()
    assert not SeriesOutput(z, z, {}, "no_data", "why").has_data().any()


def test_a_no_data_answer_is_a_no_data_step_in_process_and_over_http() -> None:
    """The orchestrator records no_data with its reason and no values, whether the answer
    came in process or as JSON from an agent service."""
    c = candles_from_close(np.full(48, 100.0))
    res = REGISTRY["news-sentiment"]().run(make_input(c), now_iso=NOW)
    local = StepResult.from_result(res)
    raw = json.dumps(res.to_wire()).encode()
    http = parse_answer("news-sentiment", 200, raw, duration_ms=1.0, now_iso=NOW)
    for step in (local, http):
        assert (step.status, step.score, step.confidence, step.ok) == ("no_data", None, None,
                                                                       False)  # fmt: skip
        assert step.error == "no news source configured"
        assert step.to_wire()["meta"]["status"] == "no_data"
