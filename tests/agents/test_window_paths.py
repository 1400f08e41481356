"""The shortcuts of issue 16 give the bits of the paths they replace, on random inputs."""

from __future__ import annotations

import numpy as np
import pytest

from conclave.agents.indicators import mean_reversion as mr
from conclave.agents.indicators import windows as win
from conclave.agents.indicators.windows import F64, Combine

DECAY = 0.85


def _decay(left: F64, right: F64, size: int) -> F64:
    return left * (DECAY**size) + right


def _doubling(x: F64, w: int, combine: Combine) -> F64:
    """`windows._reduce`'s doubling, every window of ``x`` (the general path, kept here)."""
    m = x.shape[-1] - w + 1
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


def _bits(a: F64, b: F64) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a.view(np.uint8), b.view(np.uint8)))


@pytest.mark.parametrize("combine", [win._add, win._max, _decay])
def test_chunked_long_inputs_equal_the_doubling(combine: Combine) -> None:
    """Long inputs, reduced chunk by chunk with overlap, equal the doubling everywhere."""
    rng = np.random.default_rng(8)
    for rows, n, w in [(1, 100_000, 250), (2, 45_024, 235), (9, 45_024, 580), (3, 30_000, 17)]:
        x = np.cumsum(rng.normal(0, 1, (rows, n)), axis=-1)
        assert _bits(win._reduce(x, w, combine), _doubling(x, w, combine)), (rows, n, w)


def test_the_last_adf_regression_on_floats_equals_the_array_one() -> None:
    """`_ols_t1` (plain floats) gives `_ols_t`'s t-statistic and gamma bit for bit, flat
    and degenerate windows (no variance, so NaN) included."""
    rng = np.random.default_rng(9)
    cases = []
    for k in range(400):
        n = 60
        kind = k % 4
        y = np.log(100 + np.cumsum(rng.normal(0, 1, n)))
        if kind == 1:
            y = np.full(n, 4.2)  # flat: no variance at all
        elif kind == 2:
            y[: n // 2] = y[n // 2]  # half flat
        elif kind == 3:
            y = np.round(y, 2)  # coarse ticks
        cases.append(y)
    for y in cases:
        for lags in (0, 1, 2):
            w = y.shape[0] - lags - 1
            sums = win._reduce(mr._columns(y, lags), w, win._add)
            t, gamma = mr._ols_t(sums, w, lags)
            t1, g1 = mr._ols_t1(sums.ravel().tolist(), w, lags)
            assert _bits(np.array([t1, g1]), np.array([t[0], gamma[0]])), (lags, t1, g1)
