"""The last-bar fast paths equal the vectorized series bit for bit, densely.

`test_live.py` samples bars; here every bar of a stretch is checked, and the pieces the
fast paths are built from (`indicators.window_sum`/`sum_at`/`sums_last`,
`chart_last.detect_last`) are checked against their vectorized originals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from conclave.agents import REGISTRY
from conclave.agents import chart_last as cl
from conclave.agents import chart_patterns as cp
from conclave.agents import indicators as ind
from tests.agents.helpers import load, make_input, random_candles
from tests.agents.test_contract import LOOKAHEAD_FILES, extras

F64 = npt.NDArray[np.float64]
Row = tuple[int, int, float, int, dict[str, float]]  # kind row, bar, direction, start, levels
SETTINGS = (
    cp.Settings(),
    cp.Settings(k=2, window=60, tolerance=0.05, min_height=0.01, breakout_bars=10),
)


@pytest.mark.parametrize("w", [1, 2, 3, 5, 14, 20, 50, 64, 65, 100, 200, 249])
def test_window_sums_equal_rolling_sum(w: int) -> None:
    x = np.random.default_rng(w).normal(5e4, 1e3, 400)
    r = ind.rolling_sum(x, w)
    for t in range(w - 1, 400, 3):
        assert ind.window_sum(x[t - w + 1 : t + 1].tolist()) == r[t]
        assert ind.sum_at(x, w, t) == r[t]
    rows = np.stack([x, x * x])
    assert ind.sums_last(rows, w) == [r[-1], ind.rolling_sum(x * x, w)[-1]]


def _events(c_high: F64, c_low: F64, close: F64, s: cp.Settings) -> list[Row]:
    full = cp.detect(c_high, c_low, close, s)
    assert [d.kind for d in full] == list(cl.KINDS)
    return sorted(
        (
            r,
            int(t),
            float(d.direction[t]),
            int(d.start[t]),
            {k: float(v[t]) for k, v in d.levels.items()},
        )
        for r, d in enumerate(full)
        for t in np.flatnonzero(d.events).tolist()
    )


def _last(c_high: F64, c_low: F64, close: F64, s: cp.Settings, since: int) -> list[Row]:
    got = cl.detect_last(c_high, c_low, close, s, since)
    return sorted((e.row, e.t, e.direction, e.start, e.levels) for e in got)


@pytest.mark.shared_data
@pytest.mark.parametrize("file", LOOKAHEAD_FILES[:2])
@pytest.mark.parametrize("s", SETTINGS)
def test_detect_last_equals_detect(file: str, s: cp.Settings, candles_dir: Path) -> None:
    """Every confirmation of the whole history (hundreds), with equal levels and starts."""
    c = load(candles_dir / file)
    exp = _events(c.high, c.low, c.close, s)
    assert len(exp) > 100
    assert _last(c.high, c.low, c.close, s, 0) == exp
    since = len(c) // 2
    assert _last(c.high, c.low, c.close, s, since) == [e for e in exp if e[1] >= since]


@pytest.mark.parametrize("seed", range(6))
def test_detect_last_equals_detect_on_random_walks(seed: int) -> None:
    c = random_candles(seed, 3000, flat_share=0.05 * (seed % 2))
    for s in SETTINGS:
        assert _last(c.high, c.low, c.close, s, 0) == _events(c.high, c.low, c.close, s)


@pytest.mark.shared_data
@pytest.mark.parametrize("name", list(REGISTRY))
def test_compute_last_at_every_bar(name: str, candles_dir: Path) -> None:
    """`compute_last` on the lookback window ending at each of 300 consecutive bars equals
    the series over the whole history at that bar (score, confidence) and `compute` on
    the same window (evidence)."""
    c = load(candles_dir / LOOKAHEAD_FILES[0])
    agent = REGISTRY[name]()
    keep = agent.lookback(c.timeframe.name)
    full = agent.series(make_input(c, **extras(name)))
    for t in range(len(c) - 300, len(c)):
        data = make_input(c.take(slice(t + 1 - keep, t + 1)), **extras(name))
        last = agent.compute_last(data)
        assert last.score[0] == full.score[t], (t, "score")
        assert last.confidence[0] == full.confidence[t], (t, "confidence")
        if t % 10 == 0:
            assert last.evidence == agent.compute(data).evidence, (t, "evidence")


@pytest.mark.parametrize("w", [20, 300])
def test_percent_rank_last_equals_percent_rank(w: int) -> None:
    rng = np.random.default_rng(w)
    x = np.round(rng.normal(1.0, 0.2, 700), 2)  # rounded: ties
    x[100] = np.nan
    pr = ind.percent_rank(x, w)
    for t in range(w - 1, 700, 7):
        got, exp = ind.percent_rank_last(x[: t + 1], w), pr[t]
        assert got == exp or (np.isnan(got) and np.isnan(exp)), t


def test_run_uses_compute_when_a_subclass_overrides_compute_alone() -> None:
    """A subclass overriding `compute` but not `compute_last` is not bypassed by the
    parent's fast path: `run` answers the subclass's last bar."""
    base = REGISTRY["momentum"]

    class Flat(base):  # type: ignore[misc, valid-type]
        def compute(self, data):  # type: ignore[no-untyped-def]
            out = super().compute(data)
            return type(out)(out.score * 0.0, out.confidence * 0.0 + 7.0, {"flat": True})

    c = random_candles(5, 400)
    res = Flat().run(make_input(c), now_iso="2025-01-01T00:00:00.000Z")
    assert (res.score, res.confidence, res.payload) == (0.0, 7.0, {"flat": True})


@pytest.mark.parametrize("seed", range(3))
def test_detect_last_from_any_bar_equals_detect(seed: int) -> None:
    """`detect_last` from many ``since`` bars (its scan starts at the runs in effect there)
    equals `detect`'s confirmations from that bar, on windows cut like the live path's."""
    c = random_candles(100 + seed, 1500, flat_share=0.05 * (seed % 2))
    rng = np.random.default_rng(seed)
    for s in SETTINGS:
        exp = _events(c.high, c.low, c.close, s)
        for since in sorted(rng.integers(0, len(c), 60).tolist()):
            got = _last(c.high, c.low, c.close, s, since)
            assert got == [e for e in exp if e[1] >= since], since


@pytest.mark.parametrize("w", [1, 2, 3, 7, 8, 13, 20, 33, 64])
def test_exp_window_last_equals_exp_window_sum(w: int) -> None:
    rng = np.random.default_rng(w)
    x = np.round(rng.normal(0.0, 0.5, (2, 300)), 2)
    x[:, rng.random(300) < 0.6] = 0.0  # sparse, as the pattern signals
    for a in (0.85, 0.5, 0.999):
        full = ind.exp_window_sum(x, a, w)
        for t in range(w - 1, 300, 5):
            for row in range(2):
                v = x[row, t - w + 1 : t + 1].tolist()
                assert ind.exp_window_last(v, a) == full[row, t], (a, t, row)


def test_rsi1_equals_rsi() -> None:
    rng = np.random.default_rng(9)
    close = np.round(100.0 + rng.normal(0, 1, 800).cumsum(), 2)
    close[300:330] = close[300]  # flat: RSI 50
    r = ind.rsi(close, 14, 250)
    avg = ind.rsi_averages(close, 14, 250)
    for t in range(800):
        got, exp = ind.rsi1(float(avg[0, t]), float(avg[1, t])), float(r[t])
        assert got == exp or (np.isnan(got) and np.isnan(exp)), t
