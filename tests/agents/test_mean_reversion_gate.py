"""statistical-edge's mean-reversion gate: a rolling ADF test on log prices.

The t-statistic equals statsmodels' ``adfuller`` (an independent reference, when installed)
and a plain least-squares fit; the live last bar equals the series bit for bit; the gate's
size on random walks and its power on Ornstein-Uhlenbeck series are measured on seeded
simulations (numpy ``default_rng``), one verdict per series: the gate at its last bar.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from conclave.agents import REGISTRY
from conclave.agents import indicators as ind
from conclave.agents.statistical_edge import StatisticalEdge
from conclave.errors import AgentConfigError
from tests.agents.helpers import candles_from_close, load, make_input, random_candles

F64 = npt.NDArray[np.float64]
NOW = "2025-01-01T00:00:00.000Z"
FILES = ("binance_BTCUSDT_1h_20170817-20221011.csv", "bittrex_NXTBTC_5m_20180110-20180130.csv")
SIGMA = 0.01  # sd of a bar's log-price shock
WALKS = 1000


def _agent() -> StatisticalEdge:
    agent = REGISTRY["statistical-edge"]()
    assert isinstance(agent, StatisticalEdge)
    return agent


def _lstsq_t(y: F64, k: int) -> float:
    """The ADF t-statistic of ``y`` (all of it: ``len(y) - k - 1`` rows) by numpy lstsq."""
    dy = np.diff(y)
    m = len(y) - 1 - k
    x = np.column_stack(
        [np.ones(m), y[k : k + m]] + [dy[k - j : k - j + m] for j in range(1, k + 1)]
    )
    rhs = dy[k:]
    beta, *_ = np.linalg.lstsq(x, rhs, rcond=None)
    resid = rhs - x @ beta
    s2 = resid @ resid / (m - x.shape[1])
    return float(beta[1] / math.sqrt(s2 * np.linalg.inv(x.T @ x)[1, 1]))


def _adfuller_t(y: F64, k: int) -> float | None:
    try:
        from statsmodels.tsa.stattools import adfuller
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the tuple-or-object return change
        res = adfuller(y, maxlag=k, regression="c", autolag=None)
    assert res[3] == len(y) - k - 1  # nobs: the rows our window counts
    return float(res[0])


@pytest.mark.shared_data
@pytest.mark.parametrize("file", FILES)
@pytest.mark.parametrize("lags", [0, 1, 3])
def test_adf_t_equals_the_references(file: str, lags: int, candles_dir: Path) -> None:
    """On real log closes, the rolling t-statistic equals statsmodels' adfuller (maxlag=k,
    regression "c", autolag None) and a numpy least-squares fit to 1e-9 on sampled windows,
    NaN exactly before bar w + k."""
    y = ind.log_prices(load(candles_dir / file).close)
    w = 580
    t, gamma = ind.adf(y, w, lags)
    assert np.isnan(t[: w + lags]).all()
    assert np.isfinite(t[w + lags])
    for bar in np.linspace(w + lags, len(y) - 1, 12).astype(int).tolist():
        win = y[bar - w - lags : bar + 1]
        for ref in (_lstsq_t(win, lags), _adfuller_t(win, lags)):
            if ref is not None:
                assert abs(t[bar] - ref) <= 1e-9 * max(1.0, abs(ref)), (bar, t[bar], ref)
        if lags == 0:  # the plain Dickey-Fuller slope is the AR(1) fit's
            assert abs(gamma[bar] - np.polyfit(win[:-1], np.diff(win), 1)[0]) <= 1e-9


def test_critical_values_are_mackinnons() -> None:
    """The response surface gives MacKinnon's (2010) constant-only values (statsmodels'
    `mackinnoncrit` where installed); the limits are his asymptotic ones."""
    assert ind.adf_critical(580, 0.05) == pytest.approx(-2.86653607, abs=1e-8)
    assert ind.adf_critical(10**9, 0.01) == pytest.approx(-3.43035)
    assert ind.adf_critical(100, 0.10) == pytest.approx(-2.56677 - 0.015384 - 0.0002809)
    try:
        from statsmodels.tsa.adfvalues import mackinnoncrit
    except ImportError:
        return
    for nobs in (50, 250, 580, 2000):
        ref = mackinnoncrit(1, "c", nobs)
        ours = [ind.adf_critical(nobs, s) for s in (0.01, 0.05, 0.10)]
        np.testing.assert_allclose(ours, ref, rtol=1e-12)


@pytest.mark.parametrize("lags", [0, 1, 2])
@pytest.mark.parametrize("seed", [1, 2])
def test_adf_last_is_the_last_bar_of_adf(lags: int, seed: int) -> None:
    """At every bar of a stretch (flat bars included), the last-window ADF equals the
    rolling one bit for bit, and so does one cut from the history's start."""
    y = ind.log_prices(random_candles(seed, 1500, flat_share=0.2).close)
    w = 300
    t, gamma = ind.adf(y, w, lags)
    cut_t, _ = ind.adf(y[400:], w, lags)
    np.testing.assert_array_equal(cut_t[w + lags :], t[400 + w + lags :])
    for bar in range(w + lags, 1500, 7):
        tl, gl = ind.adf_last(y[: bar + 1], w, lags)
        assert (tl, gl) == (t[bar], gamma[bar]) or (math.isnan(tl) and math.isnan(t[bar]))


def test_log_prices_are_position_independent() -> None:
    """The log of a window cut from a longer array is bit-identical; not positive is NaN."""
    x = np.random.default_rng(0).lognormal(4.0, 1.0, 1001)
    full = ind.log_prices(x)
    for start in (1, 3, 7, 500):
        np.testing.assert_array_equal(ind.log_prices(x[start:]), full[start:])
    assert np.isnan(ind.log_prices(np.array([0.0, -1.0]))).all()


def _walks(seed: int, n: int) -> F64:
    """``WALKS`` random walks of log prices around log 100, ``n`` bars each (rows)."""
    shocks = SIGMA * np.random.default_rng(seed).standard_normal((WALKS, n))
    return math.log(100.0) + np.cumsum(shocks, axis=1)


def _ou(seed: int, half_life: float, n: int) -> F64:
    """``WALKS`` Ornstein-Uhlenbeck log-price paths (AR(1) with ``phi = 2**(-1/half_life)``),
    started from the stationary distribution."""
    rng = np.random.default_rng(seed)
    phi = 2.0 ** (-1.0 / half_life)
    x = np.empty((WALKS, n))
    x[:, 0] = SIGMA / math.sqrt(1.0 - phi * phi) * rng.standard_normal(WALKS)
    shocks = SIGMA * rng.standard_normal((WALKS, n))
    for i in range(1, n):
        x[:, i] = phi * x[:, i - 1] + shocks[:, i]
    return math.log(100.0) + x


def _gate_share(paths: F64) -> float:
    """The share of paths on whose last bar the live agent says "mean reverting"."""
    agent = _agent()
    opened = 0
    for logp in paths:
        res = agent.run(make_input(candles_from_close(np.exp(logp))), now_iso=NOW)
        assert res.status == "ok"
        opened += bool(res.payload["mean_reverting"])
        if not res.payload["mean_reverting"]:
            assert res.confidence == 0.0
    return opened / len(paths)


def test_gate_size_on_random_walks() -> None:
    """On 1,000 random walks of log prices the gate opens at the last bar no more often
    than its 5 % size plus 5 points (measured: 5.1 %)."""
    agent = _agent()
    assert agent.params.adf_size == 0.05
    share = _gate_share(_walks(11, agent.min_bars("1h")))
    assert share <= 0.10, share


@pytest.mark.parametrize("half_life", [5, 10, 15, 20])
def test_gate_power_on_ornstein_uhlenbeck(half_life: int) -> None:
    """On 1,000 Ornstein-Uhlenbeck log-price paths with a half-life of 5 to 20 bars the gate
    opens at the last bar at least 80 % of the time (measured: 100 %, 100 %, 97.7 % and
    82.5 %; the 580-row window is about the shortest that reaches 80 % at 20 bars)."""
    n = _agent().min_bars("1h")
    share = _gate_share(_ou(100 + half_life, half_life, n))
    assert share >= 0.80, share


def test_min_bars_is_the_first_usable_bar() -> None:
    """With exactly ``min_bars`` bars a mean-reverting series is scored (the ADF window is
    full at bar ``adf_window + adf_lags``); one bar fewer is insufficient data."""
    agent = _agent()
    p = agent.params
    need = agent.min_bars("1h")
    assert need == p.adf_window + p.adf_lags + 1 == agent.info()["needs"]["min_bars"]
    close = np.exp(_ou(3, 2.0, need)[0] + 0.05 * np.r_[np.zeros(need - 1), 1.0])
    full = agent.series(make_input(candles_from_close(close)))
    assert full.confidence[need - 1] > 0
    assert full.evidence["mean_reverting"]
    t, _ = ind.adf(ind.log_prices(close), p.adf_window, p.adf_lags)
    assert np.isnan(t[need - 2])
    assert np.isfinite(t[need - 1])
    short = agent.run(make_input(candles_from_close(close[1:])), now_iso=NOW)
    assert short.status == "insufficient_data"


def test_half_life_evidence() -> None:
    """The half-life in evidence is the ADF slope's, near the true one on a long
    Ornstein-Uhlenbeck path; `half_life` maps slopes to bars (inf when not reverting)."""
    res = _agent().run(make_input(candles_from_close(np.exp(_ou(5, 10.0, 582)[0]))), now_iso=NOW)
    gamma = res.payload["log_slope"]
    assert res.payload["half_life_bars"] == pytest.approx(-math.log(2) / math.log1p(gamma))
    assert 5 < res.payload["half_life_bars"] < 20
    hl = ind.half_life(np.array([-0.5, 0.1, -0.1]))
    assert hl[0] == pytest.approx(1.0)
    assert math.isinf(hl[1])
    assert hl[2] == pytest.approx(6.5788, 1e-4)


def test_gate_parameters_are_declared() -> None:
    """/info names the gate's parameters and says what they are; an untabulated size is an
    error at start-up."""
    info = _agent().info()
    assert info["parameters"]["adf_size"] == 0.05
    props = info["parameters_schema"]["properties"]
    assert "MacKinnon" in props["adf_size"]["description"]
    assert "ADF" in props["adf_window"]["description"]
    with pytest.raises(AgentConfigError, match="adf_size"):
        REGISTRY["statistical-edge"]({"adf_size": 0.2})
