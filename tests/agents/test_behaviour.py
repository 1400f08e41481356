"""Each agent's behaviour on price paths whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from conclave.agents import REGISTRY
from conclave.agents.base import AccountState
from conclave.market.candles import Candles
from tests.agents.helpers import T0, candles_from_close, make_input, path

NOW = "2025-01-01T00:00:00.000Z"
H = 3_600_000


def zigzag(n: int, drift: float, seed: int = 0) -> np.ndarray:
    """A trending path with regular pullbacks, so swings form."""
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    return 100 * (1 + drift * t + 0.01 * np.sin(t / 4.0) + 0.001 * rng.normal(size=n))


def run(name: str, c: Candles, params: dict[str, object] | None = None, **extra: object):  # type: ignore[no-untyped-def]
    return REGISTRY[name](params).run(make_input(c, **extra), now_iso=NOW)


@pytest.mark.parametrize(("drift", "sign", "label"), [(0.002, 1, "up"), (-0.001, -1, "down")])
def test_market_structure_follows_the_trend(drift: float, sign: int, label: str) -> None:
    """An uptrend with higher highs and lows scores positive; a downtrend negative."""
    res = run("market-structure", candles_from_close(zigzag(400, drift)))
    assert res.score * sign > 0.5
    assert res.confidence > 50
    assert res.payload["trend"] == label
    assert len(res.payload["swing_highs"]) == 2
    assert res.payload["ma"]["sma200"] is not None


def test_order_flow_reads_volume_confirmation_and_taker_share() -> None:
    """Up moves on rising volume with buyers taking score positive; the mirror negative."""
    close = zigzag(200, 0.002)
    d = np.r_[0, np.diff(close)]
    vol = np.where(d > 0, 300.0, 100.0)
    up = candles_from_close(close, volume=vol)
    c = Candles.from_arrays(
        "BTCUSDT", "1h", up.open_time, up.open, up.high, up.low, up.close, up.volume,
        taker_buy_volume=up.volume * 0.7,
    )  # fmt: skip
    res = run("order-flow", c)
    assert res.score > 0.4
    assert res.payload["taker_buy_share"] == pytest.approx(0.7)
    down = candles_from_close(zigzag(200, -0.002), volume=np.where(d > 0, 100.0, 300.0))
    assert run("order-flow", down).score < -0.2


def test_momentum_finds_a_bearish_divergence() -> None:
    """A higher price high made on a weaker RSI is a bearish regular divergence."""
    base = list(100 + 0.5 * np.sin(np.arange(300) / 3.0))
    tail = path([(0, base[-1]), (15, 130), (25, 120), (45, 131), (49, 129)])
    c = candles_from_close(np.r_[base, tail[1:]], wick=0.0005)
    res = run("momentum", c)
    kinds = [d["kind"] for d in res.payload["divergences"]]
    assert kinds == ["bearish"], res.payload
    assert res.payload["divergences"][0]["rsi"][1] < res.payload["divergences"][0]["rsi"][0]


def test_momentum_finds_a_bullish_divergence() -> None:
    """A lower price low made on a stronger RSI is a bullish regular divergence."""
    base = list(100 + 0.5 * np.sin(np.arange(300) / 3.0))
    tail = path([(0, base[-1]), (15, 70), (25, 80), (45, 69), (49, 71)])
    res = run("momentum", candles_from_close(np.r_[base, tail[1:]], wick=0.0005))
    assert [d["kind"] for d in res.payload["divergences"]] == ["bullish"]
    assert res.score > 0


@pytest.mark.parametrize(
    ("last_vol", "regime", "mult"), [(0.05, "extreme", 0.25), (0.0005, "low", 1.0)]
)
def test_volatility_regimes(last_vol: float, regime: str, mult: float) -> None:
    """A volatility burst after a calm history is extreme; calm after turmoil is low."""
    rng = np.random.default_rng(1)
    vol = np.r_[np.full(420, 0.01), np.full(40, last_vol)]
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1, 460) * vol))
    res = run("volatility-regime", candles_from_close(close, wick=0.0))
    assert res.score == 0.0
    assert res.payload["regime"] == regime
    assert res.payload["size_multiplier"] == mult
    assert res.confidence > 50


@pytest.mark.parametrize("jump", [8.0, -8.0])
def test_statistical_edge_opposes_the_zscore(jump: float) -> None:
    """On a mean-reverting series a close far above the mean scores negative, below positive."""
    rng = np.random.default_rng(2)
    x = np.zeros(300)
    for i in range(1, 300):
        x[i] = 0.7 * x[i - 1] + rng.normal()
    close = 100 + x
    close[-1] = 100 + jump
    res = run("statistical-edge", candles_from_close(close))
    assert np.sign(res.score) == -np.sign(jump)
    assert np.sign(res.payload["zscore"]) == np.sign(jump)
    assert res.payload["mean_reverting"]
    assert res.payload["half_life_bars"] < 5
    assert res.confidence > 50


def test_statistical_edge_distrusts_a_trending_series() -> None:
    """A random walk with drift gives little mean-reversion evidence, so low confidence."""
    close = 100 + np.arange(300) * 0.5
    res = run("statistical-edge", candles_from_close(close))
    assert res.confidence < 10


def _account(final: float, *, exposure: float = 0.0) -> AccountState:
    t = T0 + H * np.arange(0, 48, dtype=np.int64)
    eq = np.r_[np.linspace(90, 100, 24), np.full(23, 100.0), final]
    return AccountState("acct-1", t, eq, open_exposure=exposure, start_of_day_equity=100.0)


@pytest.mark.parametrize(
    ("final", "level", "allowed", "mult"),
    [
        (99.0, "ok", True, 1.0),
        (94.0, "warn", True, 0.75),
        (89.0, "reduce", True, 0.5),
        (79.0, "halt", False, 0.0),
    ],
)
def test_risk_levels_on_drawdown(final: float, level: str, allowed: bool, mult: float) -> None:
    """Drawdown from peak against 5/10/20 % gives ok, warn, reduce or halt."""
    c = candles_from_close(np.full(48, 100.0))
    params = {"daily_loss_limits": (0.5, 0.6, 0.7)}
    res = run("risk-manager", c, params, account=_account(final))
    assert res.score == 0.0
    assert res.confidence == 100.0
    p = res.payload
    assert (p["level"], p["allowed"], p["size_multiplier"]) == (level, allowed, mult)


@pytest.mark.parametrize(("final", "level"), [(97.5, "warn"), (96.9, "reduce"), (94.0, "halt")])
def test_risk_levels_on_loss_today(final: float, level: str) -> None:
    """Today's loss against 2/3/5 % raises the level even when the drawdown alone would not."""
    c = candles_from_close(np.full(48, 100.0))
    res = run("risk-manager", c, account=_account(final))
    assert res.payload["level"] == level
    assert res.payload["loss_today"] == pytest.approx(1 - final / 100)


def test_risk_exposure_limit() -> None:
    """Open exposure above max_exposure x equity is at least the reduce level."""
    c = candles_from_close(np.full(48, 100.0))
    res = run("risk-manager", c, account=_account(100.0, exposure=500.0))
    assert res.payload["level"] == "reduce"
    assert "exposure" in res.payload["reason"]


def test_risk_fresh_and_unreadable_accounts() -> None:
    """No account: a fresh account, allowed, and the payload says so; unreadable: not allowed."""
    c = candles_from_close(np.full(10, 100.0))
    fresh = run("risk-manager", c)
    assert fresh.payload["allowed"]
    assert "fresh account" in fresh.payload["reason"]
    bad = run("risk-manager", c, account=AccountState.unreadable("acct-9", "database locked"))
    assert not bad.payload["allowed"]
    assert bad.payload["size_multiplier"] == 0.0
    assert "database locked" in bad.payload["reason"]
    assert bad.score == 0.0


def test_multi_timeframe_alignment_uses_closed_higher_bars_only() -> None:
    """A steady uptrend aligns on 1h, 4h and 1d; the partial current day is never used."""
    n = 24 * 30 + 5  # the last day has only 5 closed hours
    res = run("multi-timeframe", candles_from_close(zigzag(n, 0.001)))
    assert res.score > 0.8
    assert res.payload["trends"]["1d"] == 1.0
    last_open = T0 + H * (n - 1)
    day_open = last_open // (24 * H) * (24 * H)
    from conclave.agents.base import iso_ms

    assert res.payload["last_closed_open"]["1d"] == iso_ms(day_open - 24 * H)
    down = run("multi-timeframe", candles_from_close(zigzag(n, -0.0008)))
    assert down.score < -0.8
