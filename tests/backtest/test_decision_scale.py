"""The backtest's decision on the new scale: no_data bars left out as live, the vectorized
decision equal to `decide` bit for bit, and ``--weights`` overriding the default weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conclave import cli
from conclave.agents import REGISTRY
from conclave.agents.outputs import HAS_DATA
from conclave.backtest.history import History
from conclave.backtest.result import ACTIONS, NONE, AgentSeries
from conclave.backtest.signals import agent_series, pre_decide
from conclave.news.headline import Headline
from conclave.pipeline import ANALYSIS_AGENTS, DecisionConfig, decide
from tests.agents.helpers import candles_from_close
from tests.backtest.helpers import live_steps

BTC_1H = "binance_BTCUSDT_1h_20170817-20221011.csv"
HOUR = 3_600_000


def _history(news: tuple[Headline, ...] | None, n: int = 300) -> History:
    c = candles_from_close(100.0 + np.sin(np.arange(n) / 7.0))
    return History("BTCUSDT", "1h", c, 0, {}, frozenset(), news, "test", False)


def test_news_is_usable_only_at_bars_with_headlines() -> None:
    """agent_series: news-sentiment is usable exactly where it had headlines in its horizon
    (its has_data column), and nowhere without a news source, as the live step would be
    no_data there."""
    agents = {"news-sentiment": REGISTRY["news-sentiment"]()}
    base = _history(None)
    close = base.candles.close_time
    news = (Headline(int(close[100]), "Bitcoin soars to a record high", assets=("BTC",)),)
    got = agent_series(_history(news), agents)["news-sentiment"]
    want = (close >= close[100]) & (close - close[100] < 72 * HOUR)
    assert np.array_equal(got.usable, want)
    assert np.array_equal(got.columns[HAS_DATA], want.astype(np.float64))
    assert got.confidence[~want].max() == 0.0
    none = agent_series(base, agents)["news-sentiment"]
    assert (none.status, none.reason) == ("no_data", "no news source configured")
    assert not none.usable.any()


def _series(n: int, seed: int) -> dict[str, AgentSeries]:
    """Random scores; each agent fails at some bars, news-sentiment has no data at half,
    and at some bars every confidence is 0."""
    rng = np.random.default_rng(seed)
    zero_conf = rng.random(n) < 0.05
    out = {}
    for name in ANALYSIS_AGENTS:
        usable = rng.random(n) > (0.5 if name == "news-sentiment" else 0.08)
        score = np.where(usable, rng.uniform(-1, 1, n), 0.0)
        conf = np.where(usable & ~zero_conf, rng.uniform(0, 100, n), 0.0)
        cols = {"size_multiplier": rng.choice([1.0, 0.6, 0.25], n)}
        out[name] = AgentSeries(name, score, conf, usable, columns=cols)
    return out


@pytest.mark.parametrize(
    "config",
    [DecisionConfig(), DecisionConfig(weights={"momentum": 2.0, "order-flow": 0.0}, quorum=5)],
    ids=["default", "weights"],
)
def test_the_vectorized_decision_equals_decide_bit_for_bit(config: DecisionConfig) -> None:
    """pre_decide's conviction, confidence, action and strength are decide()'s exactly
    (same operations in the same order) at 3,000 random bars, the unusable news steps
    recorded as no_data as the live pipeline does."""
    n = 3000
    series = _series(n, 11)
    pre = pre_decide(series, config, n)
    made = 0
    for i in range(n):
        d = decide(live_steps(series, i, no_data=["news-sentiment"]), config)
        if d.action is None:
            assert pre.action[i] == NONE, i
            continue
        made += 1
        assert ACTIONS[pre.action[i]] == d.action, i
        assert pre.conviction[i] == d.conviction, i
        assert pre.confidence[i] == d.confidence, i
        assert pre.strength[i] == d.strength, i
    assert 300 < made < n  # both branches were exercised


@pytest.mark.shared_data
def test_weights_override_the_defaults(runner: CliRunner, candles_dir: Path) -> None:
    """--weights sets the weights given and keeps the defaults of the others; the settings
    shown are the ones used, and the conviction moves with them."""
    base = ["backtest", "--source", f"file:{candles_dir / BTC_1H}", "--symbol", "BTCUSDT",
            "--timeframe", "1h", "--from", "2021-01-01", "--to", "2021-02-01",
            "--json"]  # fmt: skip
    default = runner.invoke(cli.app, base)
    given = runner.invoke(cli.app, [*base, "--weights", "market-structure=1,momentum=3"])
    assert default.exit_code == 0, default.output
    assert given.exit_code == 0, given.output
    d, g = json.loads(default.stdout), json.loads(given.stdout)
    dw, gw = d["settings"]["decision"]["weights"], g["settings"]["decision"]["weights"]
    assert (dw["market-structure"], dw["multi-timeframe"], dw["momentum"]) == (0.5, 0.5, 1.0)
    assert (gw["market-structure"], gw["multi-timeframe"], gw["momentum"]) == (1.0, 0.5, 3.0)
    assert d["settings"]["decision"]["buy_threshold"] == 0.59
    skill = {s["name"]: s for s in d["skill"]}["decision"]
    given_skill = {s["name"]: s for s in g["skill"]}["decision"]
    assert skill["ic"] != given_skill["ic"]
