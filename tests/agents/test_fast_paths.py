"""The fast paths of the indicators and helpers equal their straightforward versions exactly.

Each reference below is the plain implementation the fast one replaced (sliding-window
views, boolean masks, searchsorted); values are compared bit for bit (``tobytes``), on random
data with ties, NaNs, signed zeros and infinities where they can occur.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from conclave.agents import chart_swings as cp
from conclave.agents import indicators as ind
from conclave.agents import scoring as sc

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]


def same(a: npt.NDArray[np.generic], b: npt.NDArray[np.generic]) -> None:
    assert a.shape == b.shape
    assert a.dtype == b.dtype
    assert a.tobytes() == b.tobytes()


def messy(rng: np.random.Generator, n: int, *, digits: int | None = None) -> F64:
    """A random walk, rounded (ties) when ``digits`` is given, with a few odd values."""
    x = 100.0 + np.cumsum(rng.normal(size=n))
    if digits is not None:
        x = np.round(x, digits)
    pick = rng.random(n)
    x[pick < 0.01] = np.nan
    x[(pick >= 0.01) & (pick < 0.02)] = 0.0
    x[(pick >= 0.02) & (pick < 0.03)] = -0.0
    return x


# -- references: the previous implementations ---------------------------------------------


def _reduce_ref(x: F64, w: int, combine: ind.Combine) -> F64:
    n = x.shape[-1]
    m = n - w + 1
    if w <= 0 or m <= 0:
        return np.zeros(0, dtype=np.float64)
    cur, size, start = x, 1, 0
    res: F64 | None = None
    while True:
        if w & size:
            part = cur[..., start : start + m]
            res = part.copy() if res is None else combine(res, part, size)
            start += size
        if size * 2 > w:
            break
        cur = combine(cur[..., :-size], cur[..., size:], size)
        size *= 2
    assert res is not None
    return res


def _rolling_std_ref(x: F64, w: int) -> F64:
    n = x.shape[0]
    if n < w:
        return np.full(n, np.nan)
    mean = _reduce_ref(x, w, ind._add) / w
    win = np.lib.stride_tricks.sliding_window_view(x, w)
    dev = np.ascontiguousarray(win - mean[:, None])
    var = np.add.reduce(dev * dev, axis=1) / w
    return ind._pad(np.sqrt(var), n)


def _clip1_ref(x: F64) -> F64:
    out = np.minimum(np.maximum(x, -1.0), 1.0)
    out[np.isnan(out)] = 0.0
    return np.asarray(out, dtype=np.float64)


def _blend_ref(components: list[F64], weights: list[float]) -> tuple[F64, F64]:
    total = float(sum(weights))
    wc = np.asarray(weights, dtype=np.float64)[:, None] * _clip1_ref(np.stack(components))
    num = wc.sum(axis=0)
    mag = np.abs(wc).sum(axis=0)
    score = num / total
    strength = mag / total
    with np.errstate(invalid="ignore", divide="ignore"):
        agreement = np.where(mag > 0, np.abs(num) / np.where(mag > 0, mag, 1.0), 0.0)
    conf = 100.0 * strength * (0.5 + 0.5 * agreement)
    return _clip1_ref(score), np.minimum(np.maximum(conf, 0.0), 100.0)


def _swings_asof_ref(idx: I64, k: int, n: int, count: int) -> I64:
    pos = np.searchsorted(idx + k, np.arange(n), side="right") - 1
    out = np.full((count, n), -1, dtype=np.int64)
    for j in range(count):
        sel = pos - j
        ok = sel >= 0
        out[j, ok] = idx[sel[ok]]
    return out


def _first_in_segments_ref(cond: B, starts: I64, group: npt.NDArray[np.intp]) -> B:
    rows, n = cond.shape
    cs = np.zeros((rows, n + 1), dtype=np.int64)
    np.cumsum(cond, axis=1, out=cs[:, 1:])
    before = np.take_along_axis(cs, starts[group], axis=1)
    return np.asarray(cond & (cs[:, 1:] - before == 1), dtype=np.bool_)


def _valid_after_ref(ev: B, t_from: I64, x: F64, limit: F64, above: bool) -> B:
    out = ev.copy()
    for t in np.flatnonzero(ev):
        seg = x[t_from[t] + 1 : t + 1]
        if seg.size and ((seg.max() > limit[t]) if above else (seg.min() < limit[t])):
            out[t] = False
    return out


# -- tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("digits", [None, 0, 1, 2])
def test_percent_rank_equals_brute_force(digits: int | None) -> None:
    """Lag-by-lag counts equal the sliding-window comparisons, ties, NaNs and zeros too."""
    rng = np.random.default_rng(11 if digits is None else digits)
    for n, w in [(1, 1), (5, 1), (10, 20), (50, 7), (700, 255), (700, 256), (900, 300)]:
        x = messy(rng, n, digits=digits)
        got = ind.percent_rank(x, w)
        same(got, ind.percent_rank_ref(x, w))
        if n >= w:
            np.testing.assert_array_equal(ind.percent_rank_last(x, w), got[-1])
    clean = 100.0 + np.cumsum(rng.normal(size=2000))  # no two values equal: the shortcut
    same(ind.percent_rank(clean, 300), ind.percent_rank_ref(clean, 300))
    odd = messy(rng, 800, digits=1)
    odd[rng.random(800) < 0.02] = np.inf
    with np.errstate(invalid="ignore"):
        same(ind.percent_rank(odd, 100), ind.percent_rank_ref(odd, 100))


def test_rolling_std_and_pairwise_sums_equal_numpy_row_sums() -> None:
    """Lag-wise pairwise sums give numpy's row sums: `rolling_std` as before, bit for bit."""
    rng = np.random.default_rng(5)
    for w in (1, 2, 7, 8, 9, 16, 20, 31, 128, 129, 200, 300):
        x = messy(rng, 1200) * 10.0 ** float(rng.integers(-3, 5))
        same(ind.rolling_std(x, w), _rolling_std_ref(x, w))
        v = rng.normal(size=w) ** 2
        assert ind.pairwise_floats(v.tolist()) == float(np.add.reduce(v[None, :], axis=1)[0])
    same(ind.rolling_std(np.ones(5), 20), _rolling_std_ref(np.ones(5), 20))


def test_buffered_reductions_equal_plain_ones() -> None:
    """Long inputs reuse buffers for the same operations: sums, extremes, decayed sums."""
    rng = np.random.default_rng(3)
    x = messy(rng, 20_000)
    rows = np.stack([messy(rng, 9_000), messy(rng, 9_000)])
    a = 0.85

    def scaled(left: F64, right: F64, size: int) -> F64:
        return left * (a**size) + right

    for w in (1, 3, 20, 99, 200, 300):
        for comb in (ind._add, ind._max, ind._min):
            same(ind._reduce(x, w, comb), _reduce_ref(x, w, comb))
            same(ind._reduce(rows, w, comb), _reduce_ref(rows, w, comb))
        same(ind._reduce(rows, w, scaled, a), _reduce_ref(rows, w, scaled))


def test_clip1_and_blend_equal_the_plain_versions() -> None:
    """In-place clipping and row-by-row blending round exactly as the stacked version."""
    rng = np.random.default_rng(9)
    for n in (1, 10, 3000):
        comps = [rng.normal(scale=2.0, size=n) for _ in range(3)]
        for c in comps:
            pick = rng.random(n)
            c[pick < 0.05] = np.nan
            c[(pick >= 0.05) & (pick < 0.1)] = -0.0
            c[(pick >= 0.1) & (pick < 0.12)] = np.inf
        for c in comps:
            same(sc.clip1(c), _clip1_ref(c))
        for weights in ([0.4, 0.3, 0.3], [0.5, 0.25, 0.25], [0.4, 0.2, 0.4]):
            got, ref = sc.blend(comps, weights), _blend_ref(comps, weights)
            same(got[0], ref[0])
            same(got[1], ref[1])


def test_swings_asof_equals_searchsorted() -> None:
    """Swings known at each bar by running counts equal the searchsorted lookup."""
    rng = np.random.default_rng(1)
    for n, k in [(1, 1), (30, 3), (5000, 3), (5000, 1)]:
        h = 100.0 + np.cumsum(rng.normal(size=n))
        idx, _ = ind.swing_points(h, h - 1.0, k)
        for count in (1, 2, 3):
            same(sc.swings_asof(idx, k, n, count), _swings_asof_ref(idx, k, n, count))


def test_chart_helpers_equal_the_plain_versions() -> None:
    """Run starts, first-in-run and the after-the-swing check equal their plain versions."""
    rng = np.random.default_rng(4)
    n = 3000
    seg = np.cumsum(rng.random(n) < 0.1).astype(np.int64) - 1
    same(cp._run_start(seg), np.searchsorted(seg, seg, side="left").astype(np.int64))
    starts = np.stack([cp._run_start(seg), cp._run_start(seg // 2), np.zeros(n, np.int64)])
    cond = rng.random((12, n)) < 0.3
    group = cp._GROUPS
    same(cp.first_in_segments(cond, starts, group), _first_in_segments_ref(cond, starts, group))
    x = 100.0 + np.cumsum(rng.normal(size=n))
    x[rng.random(n) < 0.01] = np.nan
    t_from = np.arange(n) - rng.integers(-2, 40, n)
    limit = x + rng.normal(scale=2.0, size=n)
    for above in (True, False):
        ev = rng.random(n) < 0.2
        same(
            cp._valid_after(ev, t_from, x, limit, above=above),
            _valid_after_ref(ev, t_from, x, limit, above=above),
        )
