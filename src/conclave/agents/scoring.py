"""Helpers shared by the agents: signs with a dead band, blending, swings as of each bar.

All are elementwise or index arithmetic, so they keep the bounded-window property of the
indicators (a bar's value depends only on its trailing window, bit for bit).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from conclave.market.candles import Candles
from conclave.timeframes import iso_ms

#: `iso_ms` remembered: the nine answers of a run name the same last close, and the bars
#: their evidence names recur from one run to the next (a pure function of the int).
iso_time = lru_cache(maxsize=4096)(iso_ms)

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


def sign_band(x: F64, scale: F64 | float, band: float) -> F64:
    """-1, 0 or +1: the sign of ``x``, 0 within ``band * |scale|`` (and where NaN)."""
    lim = band * np.abs(scale)
    out = np.where(x > lim, 1.0, np.where(x < -lim, -1.0, 0.0))
    return np.asarray(out, dtype=np.float64)


def clip1(x: F64) -> F64:
    """Clip to [-1, 1]; NaN becomes 0 (no view)."""
    if x.size < 1024:
        out = np.minimum(np.maximum(x, -1.0), 1.0)  # NaN propagates through both
    else:  # the same, without a second temporary
        out = np.maximum(x, -1.0)
        np.minimum(out, 1.0, out=out)
    out[np.isnan(out)] = 0.0
    return np.asarray(out, dtype=np.float64)


def blend(components: list[F64], weights: list[float]) -> tuple[F64, F64]:
    """Weighted score and a confidence from agreement and strength of the components.

    ``score = sum(w c) / sum(w)``. ``agreement = |sum(w c)| / sum(w |c|)`` is 1 when every
    component points the same way; ``strength = sum(w |c|) / sum(w)`` is how far they are
    from neutral. ``confidence = 100 * strength * (0.5 + 0.5 * agreement)``: 0 with no
    evidence, 100 only when every component is at full strength and they agree.
    """
    total = float(sum(weights))
    # rows added in order per bar (num = ((0 + w0 c0) + w1 c1) + w2 c2, as numpy's sum over
    # stacked rows adds them): start-independent
    num = np.zeros(np.shape(components[0]), dtype=np.float64)
    mag = np.zeros_like(num)  # weights are positive: |w c| = w |c|
    for w, comp in zip(weights, components, strict=True):
        wc = clip1(comp)
        wc *= float(w)
        num += wc
        mag += np.abs(wc, out=wc)
    score = num / total
    strength = mag / total
    live = mag > 0
    agreement = np.abs(num, out=num)
    with np.errstate(invalid="ignore", divide="ignore"):
        agreement /= np.where(live, mag, 1.0)
    np.copyto(agreement, 0.0, where=~live)
    conf = np.multiply(strength, 100.0, out=strength)
    agreement *= 0.5
    agreement += 0.5
    conf *= agreement
    np.maximum(conf, 0.0, out=conf)
    np.minimum(conf, 100.0, out=conf)
    return clip1(score), conf


def finish(score: F64, confidence: F64, first_valid: int) -> tuple[F64, F64]:
    """Zero score and confidence before ``first_valid`` and wherever either is NaN."""
    s = clip1(score)
    c = np.minimum(np.maximum(confidence, 0.0), 100.0)
    bad = np.isnan(score) | np.isnan(c)
    s[bad] = 0.0
    c[bad] = 0.0
    s[:first_valid] = 0.0
    c[:first_valid] = 0.0
    return s, c


def swings_asof(idx: I64, k: int, n: int, count: int) -> I64:
    """For every bar t, the ``count`` most recent swings confirmed by t (index ``i + k <= t``).

    Returns shape ``(count, n)``: row 0 the latest swing's bar index, row 1 the one before,
    and so on; -1 where there is none.
    """
    # swings confirmed by each t (idx ascending, each confirmed at idx + k)
    seen = np.cumsum(np.bincount(idx[idx + k < n] + k, minlength=n), dtype=np.int64)
    ext = np.concatenate((np.array([-1], dtype=np.int64), np.asarray(idx, dtype=np.int64)))
    out = np.empty((count, n), dtype=np.int64)
    for j in range(count):
        np.take(ext, np.maximum(seen - j, 0), out=out[j])  # ext[0] = -1: none
    return out


def within(swing: I64, n: int, window: int) -> npt.NDArray[np.bool_]:
    """True where the swing index exists and lies in the trailing ``window`` bars of each t."""
    t = np.arange(n)
    return np.asarray((swing >= 0) & (swing > t - window), dtype=np.bool_)


def point(candles: Candles, i: int, price: float) -> dict[str, Any]:
    """A swing or level as plain evidence: bar open time (ISO) and price."""
    return {"time": iso_time(int(candles.open_time[i])), "price": float(price)}


def fnum(x: float) -> float | None:
    """A float for evidence: None when not finite."""
    v = float(x)
    return v if math.isfinite(v) else None


# -- the same arithmetic on plain floats, for the last bar only (`Agent.compute_last`) ------
# IEEE double +, -, *, / and comparisons round the same in Python and numpy, so these equal
# the array helpers above element for element.


def sgn1(x: float) -> float:
    """``np.sign`` of one float (NaN stays NaN)."""
    return 1.0 if x > 0 else -1.0 if x < 0 else x if x != x else 0.0


def clip1f(x: float) -> float:
    """`clip1` of one float."""
    return 0.0 if x != x else min(max(x, -1.0), 1.0)


def sign_band1(x: float, scale: float, band: float) -> float:
    """`sign_band` of one float."""
    lim = band * abs(scale)
    return 1.0 if x > lim else -1.0 if x < -lim else 0.0


def blend1(components: list[float], weights: list[float]) -> tuple[float, float]:
    """`blend` of one bar: the same sums, in the same order (`clip1f` written inline:
    ``min(max(x, lo), hi)`` keeps x unless it lies beyond a bound)."""
    total = float(sum(weights))
    wc = [
        w * (0.0 if c != c else -1.0 if c < -1.0 else 1.0 if c > 1.0 else c)
        for w, c in zip(weights, components, strict=True)
    ]
    num, mag = wc[0], abs(wc[0])
    for v in wc[1:]:
        num += v
        mag += abs(v)
    agreement = abs(num) / mag if mag > 0 else 0.0
    conf = 100.0 * (mag / total) * (0.5 + 0.5 * agreement)
    sc = num / total
    sc = 0.0 if sc != sc else -1.0 if sc < -1.0 else 1.0 if sc > 1.0 else sc
    return sc, 0.0 if conf < 0.0 else 100.0 if conf > 100.0 else conf


def finish1(score: float, confidence: float) -> tuple[F64, F64]:
    """`finish` of one bar past ``first_valid``, as the length-1 arrays `compute_last` returns."""
    c = confidence  # min(max(c, 0), 100), written out: c unless beyond a bound
    c = 0.0 if c < 0.0 else 100.0 if c > 100.0 else c
    if score != score or c != c:
        return np.zeros(1), np.zeros(1)
    s = -1.0 if score < -1.0 else 1.0 if score > 1.0 else score  # `clip1f` (not NaN here)
    return np.array([s]), np.array([c])
