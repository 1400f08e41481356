"""Contract tests over the registry (issue item 15): every agent, same rules."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conclave.agents import REGISTRY, AccountState, Agent, SeriesOutput
from conclave.market.candles import Candles
from conclave.news.headline import Headline
from tests.agents.helpers import T0, load, make_input, random_candles

AGENTS = list(REGISTRY)
NOW = "2025-01-01T00:00:00.000Z"
# a few real files of different kinds for the (costlier) lookahead checks
LOOKAHEAD_FILES = (
    "binance_BTCUSDT_1h_20170817-20221011.csv",
    "binance_ETHUSDT_4h_20170817-20221011.csv",
    "bittrex_NXTBTC_5m_20180110-20180130.csv",
    "stock_ORCL_1d_19950103-20141231.csv",
)
NEWS = [
    Headline(T0 - 30 * 3_600_000, "Bitcoin rallies to an all-time high", assets=("BTC",)),
    Headline(T0 + 200 * 3_600_000, "Exchange hacked, bitcoin stolen", assets=("BTC",)),
    Headline(T0 + 420 * 3_600_000, "China bans bitcoin mining", assets=("BTC",)),
]


def extras(name: str) -> dict[str, object]:
    """News and an account for the agents that use them, so their maths is exercised."""
    if name == "news-sentiment":
        return {"news": NEWS}
    if name == "risk-manager":
        t = T0 + 3_600_000 * np.arange(0, 2000, 7, dtype=np.int64)
        eq = 10_000 * (1 + 0.1 * np.sin(np.arange(t.shape[0]) / 9.0))
        return {"account": AccountState("acct-1", t, eq, open_exposure=5_000.0)}
    return {}


def check_ranges(out: SeriesOutput, n: int) -> None:
    assert out.score.shape == (n,)
    assert out.confidence.shape == (n,)
    assert np.isfinite(out.score).all()
    assert np.isfinite(out.confidence).all()
    assert (np.abs(out.score) <= 1).all()
    assert ((out.confidence >= 0) & (out.confidence <= 100)).all()


@pytest.fixture(scope="module")
def real_files(candles_dir: Path) -> list[Path]:
    files = sorted(candles_dir.glob("*.csv"))
    assert len(files) >= 50
    return files


@pytest.mark.parametrize("name", AGENTS)
def test_registry_declares_everything(name: str) -> None:
    """Each agent declares name, version, description, needs and frozen typed parameters."""
    cls = REGISTRY[name]
    agent = cls()
    assert cls.name == name
    assert cls.version
    assert cls.description
    assert agent.min_bars("1h") >= 1
    assert agent.lookback("1h") >= agent.min_bars("1h")
    assert cls.__doc__
    assert cls.__module__
    module_doc = __import__(cls.__module__, fromlist=["_"]).__doc__ or ""
    assert "Score" in module_doc or "score" in module_doc
    info = agent.info()
    assert info["name"] == name
    assert "properties" in info["parameters_schema"]


def test_registry_order_and_ports() -> None:
    """The registry lists the nine in port order 5001..5009."""
    from conclave.agents import PORTS

    assert AGENTS == [
        "market-structure", "order-flow", "momentum", "volatility-regime", "news-sentiment",
        "multi-timeframe", "pattern-recognition", "statistical-edge", "risk-manager",
    ]  # fmt: skip
    assert PORTS["market-structure"] == 5001
    assert PORTS["risk-manager"] == 5009


@pytest.mark.shared_data
@pytest.mark.parametrize("name", AGENTS)
def test_ranges_on_every_real_file(name: str, real_files: list[Path]) -> None:
    """Scores stay in [-1, 1] and confidences in [0, 100], finite, on every real file."""
    agent = REGISTRY[name]()
    for path in real_files:
        c = load(path)
        out = agent.series(make_input(c, **extras(name)))
        check_ranges(out, len(c))


@pytest.mark.parametrize("name", AGENTS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 700),
    flat=st.sampled_from([0.0, 0.2, 0.9]),
    zero_vol=st.sampled_from([0.0, 0.5]),
)
def test_ranges_on_random_series(
    name: str, seed: int, n: int, flat: float, zero_vol: float
) -> None:
    """Random walks with flat bars and zero volume never give NaN or out-of-range values."""
    c = random_candles(seed, n, flat_share=flat, zero_vol=zero_vol)
    agent = REGISTRY[name]()
    res = agent.run(make_input(c, **extras(name)), now_iso=NOW)
    assert -1 <= res.score <= 1
    assert 0 <= res.confidence <= 100
    check_ranges(agent.series(make_input(c, **extras(name))), n)


@pytest.mark.parametrize("name", AGENTS)
def test_flat_data_is_neutral(name: str) -> None:
    """O=H=L=C bars with zero volume give score 0 and confidence 0 rather than NaN (B5);
    news-sentiment, given no news source here, has no data."""
    n = 800
    t = T0 + 3_600_000 * np.arange(n, dtype=np.int64)
    p = np.full(n, 100.0)
    c = Candles.from_arrays("BTCUSDT", "1h", t, p, p, p, p, np.zeros(n))
    res = REGISTRY[name]().run(make_input(c), now_iso=NOW)
    assert res.status == ("no_data" if name == "news-sentiment" else "ok")
    assert res.score == 0.0
    if name != "risk-manager":  # a fresh account is assessed with full confidence
        assert res.confidence == 0.0


@pytest.mark.parametrize("name", AGENTS)
def test_deterministic(name: str) -> None:
    """The same input gives the same score, confidence and payload."""
    c = random_candles(7, 600)
    agent = REGISTRY[name]()
    a = agent.run(make_input(c, **extras(name)), now_iso=NOW).to_wire()
    b = REGISTRY[name]().run(make_input(c, **extras(name)), now_iso=NOW).to_wire()
    a["meta"].pop("duration_ms")
    b["meta"].pop("duration_ms")
    assert a == b


@pytest.mark.parametrize("name", AGENTS)
def test_no_io(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Agents do no network I/O: connecting a socket fails inside the test, runs still work."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access from an agent")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    c = random_candles(11, 600)
    res = REGISTRY[name]().run(make_input(c, **extras(name)), now_iso=NOW)
    # the last of NEWS is 179 h before the last bar: news-sentiment has no data there
    assert res.status == ("no_data" if name == "news-sentiment" else "ok")


@pytest.mark.parametrize("name", AGENTS)
def test_too_short_is_insufficient_data(name: str) -> None:
    """Fewer bars than the agent needs give status insufficient_data, never an exception."""
    agent: Agent = REGISTRY[name]()
    need = agent.min_bars("1h")
    for n in sorted({0, need - 1, need // 2} - {-1}):
        if n >= need:
            continue
        c = random_candles(3, n)
        res = agent.run(make_input(c), now_iso=NOW)
        assert res.status == "insufficient_data", (n, need)
        assert res.score == 0.0
        assert res.confidence == 0.0
        assert str(need) in res.reason
        assert str(n) in res.reason
    ok = agent.run(make_input(random_candles(3, need + 1), **extras(name)), now_iso=NOW)
    assert ok.status == "ok"


@pytest.mark.shared_data
@pytest.mark.parametrize("file", LOOKAHEAD_FILES)
@pytest.mark.parametrize("name", AGENTS)
def test_no_lookahead(name: str, file: str, candles_dir: Path) -> None:
    """At sampled bars t, the value from data up to t equals the full series' value at t,
    both from the whole prefix and from just the last ``lookback`` bars (live parity)."""
    c = load(candles_dir / file)
    agent = REGISTRY[name]()
    tf = c.timeframe.name
    full = agent.series(make_input(c, **extras(name)))
    need = agent.min_bars(tf)
    if len(c) <= need + 1:
        pytest.skip(f"{file} is shorter than {name} needs")
    rng = np.random.default_rng(abs(hash((name, file))) % 2**32)
    sample = np.unique(np.r_[rng.integers(need, len(c), 18), need - 1, len(c) - 1])
    for t in sample:
        t = int(t)
        prefix = agent.series(make_input(c.take(slice(0, t + 1)), **extras(name)))
        assert prefix.score[-1] == full.score[t], (t, "prefix score")
        assert prefix.confidence[-1] == full.confidence[t], (t, "prefix confidence")
        start = max(0, t + 1 - agent.lookback(tf))
        live = agent.series(make_input(c.take(slice(start, t + 1)), **extras(name)))
        assert live.score[-1] == full.score[t], (t, "live score")
        assert live.confidence[-1] == full.confidence[t], (t, "live confidence")
        assert live.evidence == prefix.evidence, (t, "live evidence")
