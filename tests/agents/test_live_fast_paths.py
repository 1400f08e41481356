"""The live step's quicker paths (issue 16) give exactly what the code before them gave.

Each reference below is the implementation the quicker one replaced (or, for the log, the
function it must match); values are compared bit for bit (``tobytes``) on random data with
ties, NaNs, signed zeros and infinities where they can occur.
benchmarks/agents_identity.py compares the nine agents' whole outputs with a baseline tree.
"""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError, fields, replace

import numpy as np
import pytest
import talib

from conclave.agents import AgentInput
from conclave.agents import indicators as ind
from conclave.agents import scoring as sc
from conclave.agents.indicators import mean_reversion as mr
from conclave.agents.indicators import windows as wn
from conclave.agents.outputs import AgentResult, SeriesOutput
from tests.agents.helpers import random_candles
from tests.agents.test_fast_paths import F64, I64, _reduce_ref, messy, same

# -- references: the previous implementations ---------------------------------------------


def _swing_points_ref(high: F64, low: F64, k: int) -> tuple[I64, I64]:
    n = high.shape[0]
    if n < 2 * k + 1:
        e = np.zeros(0, dtype=np.int64)
        return e, e.copy()
    hmax, lmin = _reduce_ref(high, k, ind._max), _reduce_ref(low, k, ind._min)
    m = n - 2 * k
    hc, lc = high[k : n - k], low[k : n - k]
    is_hi = (hc > hmax[:m]) & (hc >= hmax[k + 1 : k + 1 + m])
    is_lo = (lc < lmin[:m]) & (lc <= lmin[k + 1 : k + 1 + m])
    return np.flatnonzero(is_hi) + k, np.flatnonzero(is_lo) + k


def _wilder_ref(x: F64, period: int, n: int) -> F64:
    size = x.shape[-1]
    r, a = n - period, (period - 1) / period
    seed = _reduce_ref(x, period, ind._add) / period
    m = size - n + 1
    if m <= 0:
        return np.full(x.shape, np.nan)
    if r == 0:
        return ind._pad(seed[..., :m], size)

    def comb(left: F64, right: F64, sz: int) -> F64:
        return left * (a**sz) + right

    tail = _reduce_ref(x, r, comb)
    return ind._pad(seed[..., :m] * (a**r) + tail[..., period : period + m] / period, size)


def _rsi_averages_ref(close: F64, period: int, window: int) -> F64:
    d = ind.diff(close)
    both = np.stack([np.maximum(d, 0.0), np.maximum(-d, 0.0)])
    both[:, 0] = np.nan
    return _wilder_ref(both, period, window - 1)


def _blend1_ref(components: list[float], weights: list[float]) -> tuple[float, float]:
    total = float(sum(weights))
    wc = [w * sc.clip1f(c) for w, c in zip(weights, components, strict=True)]
    num, mag = wc[0], abs(wc[0])
    for v in wc[1:]:
        num += v
        mag += abs(v)
    agreement = abs(num) / mag if mag > 0 else 0.0
    conf = 100.0 * (mag / total) * (0.5 + 0.5 * agreement)
    return sc.clip1f(num / total), min(max(conf, 0.0), 100.0)


def _finish1_ref(score: float, confidence: float) -> tuple[F64, F64]:
    c = min(max(confidence, 0.0), 100.0)
    if score != score or c != c:
        return np.zeros(1), np.zeros(1)
    return np.array([sc.clip1f(score)]), np.array([c])


ODD = [0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0, 1e-300, 100.0, 150.0, -1e300]
ODD += [math.nan, math.inf, -math.inf, 1.0000000000000002, 99.99999999999999]


# -- tests ---------------------------------------------------------------------------------


def test_reductions_with_the_bars_as_rows_equal_the_doubling() -> None:
    """A few series reduced with the bars as rows give the row-by-row doubling's bits."""
    rng = np.random.default_rng(21)
    a = 13 / 14

    def scaled(left: F64, right: F64, size: int) -> F64:
        return left * (a**size) + right

    for rows in (2, 3, 9):
        for w in (1, 2, 3, 14, 85, 235, 580):
            n = w + int(rng.integers(0, 90))
            x = np.stack([messy(rng, n) for _ in range(rows)])
            for comb in (ind._add, ind._max, ind._min, scaled):
                same(wn._reduce(x, w, comb, a if comb is scaled else None), _reduce_ref(x, w, comb))


def test_swing_points_equal_the_separate_highs_and_lows() -> None:
    """Highs and negated lows in one pass find the swings the separate passes found."""
    rng = np.random.default_rng(22)
    for n in (1, 6, 7, 40, 142, 600):
        for k in (1, 2, 3, 5):
            for digits in (None, 0, 1):
                high = messy(rng, n, digits=digits)
                low = high - np.round(np.abs(rng.normal(size=n)), 1)
                got, ref = ind.swing_points(high, low, k), _swing_points_ref(high, low, k)
                same(got[0], ref[0])
                same(got[1], ref[1])


def test_wilder_averages_equal_the_previous_ones() -> None:
    """Wilder's averages (one series, a few, a long one), RSI's and ATR's, as before."""
    rng = np.random.default_rng(23)
    for n in (0, 1, 13, 14, 99, 100, 309, 399, 5000):
        x = np.abs(messy(rng, n))
        rows = np.stack([x, x[::-1].copy(), 2.0 * x])
        for period, w in ((14, 99), (14, 14), (5, 40), (14, 249)):
            same(ind.wilder_window(x, period, w), _wilder_ref(x, period, w))
            same(ind.wilder_window(rows, period, w), _wilder_ref(rows, period, w))
        close = 100.0 + np.cumsum(rng.normal(size=n))
        if n > 3:
            close[2] = close[1]  # a flat bar: a zero change
        for period, window in ((14, 250), (14, 15), (3, 60)):
            if n:  # (no bars: the previous version raised)
                want = _rsi_averages_ref(close, period, window)
                same(ind.rsi_averages(close, period, window), want)
        high, low = close + rng.random(n), close - rng.random(n)
        tr = ind.true_range(high, low, close)
        same(ind.atr(high, low, close, 14, 100), _wilder_ref(tr, 14, 99))


def test_the_window_sums_of_plain_floats_equal_the_reduction() -> None:
    """`window_sum` and `exp_window_last` add the floats of one window by `_reduce`'s tree."""
    rng = np.random.default_rng(24)
    a = 0.85

    def scaled(left: F64, right: F64, size: int) -> F64:
        return left * (a**size) + right

    for w in [*range(1, 70), 85, 127, 128, 129, 200, 255, 256, 300, 580]:
        x = rng.normal(size=w) * 10.0 ** rng.integers(-6, 9, size=w)
        assert ind.window_sum(x.tolist()) == _reduce_ref(x, w, ind._add)[0]
        assert ind.exp_window_last(x.tolist(), a) == _reduce_ref(x, w, scaled)[0]
    assert ind.window_sum([]) == 0.0
    assert ind.exp_window_last([], a) == 0.0


def test_log_prices_are_math_log_bit_for_bit() -> None:
    """Logs of positive values are ``math.log``'s bits (whichever loop computes them), from
    the smallest subnormal to the largest float; NaN where a value is not positive."""
    rng = np.random.default_rng(25)
    x = np.concatenate(
        (
            np.exp(rng.uniform(-744.0, 709.0, 50_000)),
            np.round(rng.uniform(1e-4, 1e5, 50_000), int(rng.integers(0, 8))),
            1.0 + rng.uniform(-1e-6, 1e-6, 10_000),
            [5e-324, 1.7976931348623157e308, math.inf],
        )
    )
    x = x[x > 0]
    want = np.fromiter(map(math.log, x.tolist()), np.float64, x.shape[0])
    same(ind.log_prices(x), want)
    odd = x[:1000].copy()
    odd[[3, 10, 20]] = [0.0, -5.0, math.nan]
    want = np.array([math.log(v) if v > 0 else math.nan for v in odd.tolist()])
    same(ind.log_prices(odd), want)
    same(ind.log_prices(np.zeros(0)), np.zeros(0))
    assert mr._c_log() in (None, getattr(talib.LN, "__wrapped__", talib.LN))


def test_percent_rank_last_with_infinities_and_huge_values() -> None:
    """The last bar's rank is NaN exactly where the window's sum is, infinities included."""
    rng = np.random.default_rng(26)
    for big in (math.inf, -math.inf, 1e308, -1e308):
        x = messy(rng, 700, digits=1)
        x[rng.random(700) < 0.02] = big
        x[rng.random(700) < 0.02] = -big
        with np.errstate(invalid="ignore", over="ignore"):
            full = ind.percent_rank(x, 100)
        for t in range(99, 700, 3):
            with np.errstate(invalid="ignore", over="ignore"):
                got = ind.percent_rank_last(x[: t + 1], 100)
            assert got == full[t] or (math.isnan(got) and math.isnan(full[t])), t


def test_blend1_and_finish1_equal_the_previous_ones() -> None:
    """The written-out clipping rounds as `clip1f`, NaNs, infinities and -0.0 included."""
    rng = np.random.default_rng(27)
    for _ in range(3000):
        comps = [float(v) for v in rng.choice(ODD, 3)]
        for weights in ([0.4, 0.3, 0.3], [0.5, 0.25, 0.25], [0.5, 0.25]):
            part = comps[: len(weights)]
            got, ref = sc.blend1(part, weights), _blend1_ref(part, weights)
            assert np.array(got).tobytes() == np.array(ref).tobytes(), (comps, weights)
        s, c = (float(v) for v in rng.choice(ODD, 2))
        for got_a, ref_a in zip(sc.finish1(s, c), _finish1_ref(s, c), strict=True):
            same(got_a, ref_a)


@pytest.mark.parametrize("columns", [None, {"size_multiplier": np.array([0.6])}])
def test_the_dataclasses_built_by_their_own_init_stay_frozen_and_whole(
    columns: dict[str, F64] | None,
) -> None:
    """`SeriesOutput`, `AgentResult` and `AgentInput` set every field (defaults included),
    compare and replace as dataclasses, and refuse to change."""
    s, c, ev = np.array([0.25]), np.array([40.0]), {"a": 1.0}
    out = SeriesOutput(s, c, ev, columns=columns) if columns else SeriesOutput(s, c, ev)
    assert (out.score, out.confidence, out.evidence, out.status, out.reason) == (s, c, ev, "ok", "")
    assert out.columns == ({} if columns is None else columns)
    assert SeriesOutput(s, c, ev).columns is not SeriesOutput(s, c, ev).columns  # a new dict
    payload = {"x": [1, 2]}
    res = AgentResult(0.5, 75.0, payload, "momentum", "1.0.0", 0.12, "t", None)
    values = [0.5, 75.0, payload, "momentum", "1.0.0", 0.12, "t", None, "ok", ""]
    assert [getattr(res, f.name) for f in fields(AgentResult)] == values
    again = AgentResult(0.5, 75.0, payload, "momentum", "1.0.0", 0.12, "t", None, "no_data", "r")
    assert replace(res, status="no_data", reason="r") == again
    candles = random_candles(1, 30)
    inp = AgentInput("BTCUSDT", "1h", 1, candles)
    assert (inp.higher, inp.news, inp.account) == ({}, None, None)
    assert replace(inp, as_of_ms=2).candles is candles
    for obj, name in ((out, "reason"), (res, "score"), (inp, "symbol")):
        with pytest.raises(FrozenInstanceError):
            setattr(obj, name, None)
