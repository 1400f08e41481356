"""Chart patterns from confirmed swing points, vectorized over bars; confirmed, never repainted.

Definitions follow Bulkowski, *Encyclopedia of Chart Patterns* (2nd ed., 2005), simplified to
what swing points can state. Swings are `indicators.swing_points` (known ``k`` bars after the
extreme). For every bar t the latest swings known at t define the candidate; the pattern is
CONFIRMED at the first bar t (per candidate) whose close breaks its key level within
``breakout_bars`` of the last swing, and it is reported at t from data up to t only.

- double top: the last two swing highs within ``tolerance`` (relative) of each other, the
  lowest low between them as neckline, height at least ``min_height`` of the price; close
  below the neckline, no high above the tops since the second. Double bottom: mirrored.
- head and shoulders: three swing highs, the middle (head) at least ``head_margin`` above
  both shoulders, shoulders within ``tolerance``; neckline the lower of the two troughs
  between them; close below it. Inverse: mirrored.
- triangles: the last two swing highs and two swing lows, interleaved; ascending = flat
  highs and rising lows, descending = falling highs and flat lows, symmetric = falling highs
  and rising lows (flat: change within ``tolerance``), lines still apart; a close beyond a
  line (extrapolated to t) is the breakout, up or down.
- support/resistance breakout: two swing highs within ``tolerance``, with a pullback of at
  least half ``min_height`` between them, make a resistance at the higher; a close above
  it confirms (support below two similar lows: mirrored).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from conclave.agents import indicators as ind

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]
_G = TypeVar("_G", bound=np.generic)


@dataclass(frozen=True, slots=True)
class Detection:
    """One pattern kind over all bars: where it confirmed, its direction, start and levels."""

    kind: str
    events: B
    direction: F64
    start: I64
    levels: dict[str, F64] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Settings:
    k: int = 3
    window: int = 120
    tolerance: float = 0.02
    min_height: float = 0.02
    head_margin: float = 0.02
    breakout_bars: int = 30


def first_in_segment(cond: B, seg: I64) -> B:
    """``cond`` only at its first true bar within each run of equal ``seg`` (nondecreasing).

    ``cond`` may stack several conditions as rows (shape ``(rows, n)``) sharing ``seg``.
    """
    rows = np.atleast_2d(cond)
    first = first_in_segments(rows, _run_start(seg)[None, :], np.zeros(rows.shape[0], np.intp))
    return np.asarray(first.reshape(np.shape(cond)), dtype=np.bool_)


def _run_start(seg: I64) -> I64:
    """Index of the first bar of the run of equal ``seg`` each bar is in (nondecreasing)."""
    n = seg.shape[0]
    brk = np.empty(n, dtype=np.bool_)
    brk[:1] = True
    np.not_equal(seg[1:], seg[:-1], out=brk[1:])
    starts = np.where(brk, np.arange(n, dtype=np.int64), 0)
    return np.asarray(np.maximum.accumulate(starts), dtype=np.int64)


def first_in_segments(cond: B, starts: I64, group: npt.NDArray[np.intp]) -> B:
    """Row r of ``cond`` (shape ``(rows, n)``) only at its first true bar within each run,
    the runs' first bars given by row ``group[r]`` of ``starts`` (see `_run_start`)."""
    n = cond.shape[1]
    flat = np.flatnonzero(cond)  # true bars, row by row, ascending within a row
    r = flat // n
    t = flat - r * n
    # first in its run: the row's previous true bar (if any) lies before the run's start
    prev_ok = np.ones(t.shape[0], dtype=np.bool_)
    prev_ok[1:] = (r[1:] != r[:-1]) | (t[:-1] < starts[group[r[1:]], t[1:]])
    out = np.zeros(cond.shape, dtype=np.bool_)
    out[r[prev_ok], t[prev_ok]] = True
    return out


@dataclass(frozen=True, slots=True)
class _Swings:
    """One side's swings as known at each bar, held per number of confirmed swings.

    Entry p of ``idx`` / ``val`` / ``gap`` rows 0..2 describes the latest, previous and
    third-latest swing once p swings are confirmed (``idx + k <= t``), with -1 / NaN where
    there is none; ``gap`` is the trough (crest) before each. `at_bars` repeats an entry
    over the bars it holds for (the bars are in runs: the count only grows).
    """

    idx: I64
    val: F64
    gap: F64
    runs: I64

    @classmethod
    def build(cls, idx: I64, val: F64, gap: F64, k: int, n: int) -> _Swings:
        at = idx[idx + k < n] + k  # the bar confirming each swing (ascending)
        m = at.shape[0]
        runs = np.diff(np.concatenate(([0], at, [n]))).astype(np.int64)
        back = np.maximum(np.arange(m + 1)[None, :] - _BACK, 0)  # entry p, row b: p - b

        def rows(tab: npt.NDArray[_G], fill: float) -> npt.NDArray[_G]:
            return np.asarray(np.concatenate(([fill], tab[:m]))[back], dtype=tab.dtype)

        return cls(rows(idx, -1), rows(val, np.nan), rows(gap, np.nan), runs)

    def at_bars(self, x: npt.NDArray[_G]) -> npt.NDArray[_G]:
        """A per-entry array as per bar (entry p at every bar where p swings are known)."""
        return np.repeat(x, self.runs)


_BACK = np.arange(3)[:, None]
_GROUPS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2], dtype=np.intp)  # highs, lows, both


def between(x: F64, idx: I64, op: np.ufunc) -> F64:
    """For swing j >= 1: op over ``x[idx[j-1] : idx[j] + 1]``; NaN for j = 0."""
    out = np.full(idx.shape[0], np.nan)
    if idx.shape[0] >= 2:
        seg = op.reduceat(x, idx)[:-1]
        out[1:] = op(seg, x[idx[1:]])
    return out


def _valid_after(ev: B, t_from: I64, x: F64, limit: F64, above: bool) -> B:
    """Drop events where ``x`` went beyond ``limit`` after ``t_from`` (few events)."""
    out = ev.copy()
    ts = np.flatnonzero(ev)
    if not ts.size:
        return out
    first = t_from[ts] + 1  # the slice ``x[first : t + 1]`` (a negative start counts back)
    first = np.where(first < 0, np.maximum(first + x.shape[0], 0), first)
    span = int((ts - first).max(initial=-1)) + 1
    if span <= 0:
        return out
    # every event's bars first..t as a row (padded with its own bar t: max/min unchanged)
    at = ts[:, None] - np.arange(span)[None, :]
    at = np.where(at >= first[:, None], at, ts[:, None])
    seg = x[at]
    ext = seg.max(axis=1) if above else seg.min(axis=1)
    beyond = (ext > limit[ts]) if above else (ext < limit[ts])
    out[ts[beyond & (first <= ts)]] = False
    return out


def detect(h: F64, lo: F64, c: F64, s: Settings) -> list[Detection]:
    """Every chart pattern kind's confirmations over the bars (see module docstring)."""
    n = c.shape[0]
    t = np.arange(n)
    hi_idx, lo_idx = ind.swing_points(h, lo, s.k)
    # the b-th latest swing known at t (index, price, trough or crest before), per number of
    # swings known: what depends on the swings alone is computed once per swing, then
    # repeated over the bars (the same operations on the same values as bar by bar)
    sh = _Swings.build(hi_idx, h[hi_idx], between(lo, hi_idx, np.minimum), s.k, n)
    sl = _Swings.build(lo_idx, lo[lo_idx], between(h, lo_idx, np.maximum), s.k, n)
    i0, i1, i2 = sh.idx
    j0, j1, j2 = sl.idx
    v0, v1, v2 = sh.val
    w0, w1, w2 = sl.val
    x0, x1 = sh.gap[0], sh.gap[1]
    y0, y1 = sl.gap[0], sl.gap[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        # per swing: double top / bottom, head and shoulders / inverse, breakouts
        top_s = np.fmax(v0, v1)
        like_h = np.abs(v0 - v1) <= s.tolerance * top_s
        a_top = like_h & (top_s - x0 >= s.min_height * top_s)
        a_res = like_h & (top_s - x0 >= 0.5 * s.min_height * top_s)
        neck_hs = np.fmin(x0, x1)
        a_hs = v1 >= np.fmax(v0, v2) * (1 + s.head_margin)
        a_hs &= np.abs(v0 - v2) <= s.tolerance * v1
        a_hs &= v1 - neck_hs >= s.min_height * v1
        bot_s = np.fmin(w0, w1)
        like_l = np.abs(w0 - w1) <= s.tolerance * bot_s
        a_bot = like_l & (y0 - bot_s >= s.min_height * bot_s)
        a_sup = like_l & (y0 - bot_s >= 0.5 * s.min_height * bot_s)
        neck_ls = np.fmax(y0, y1)
        a_ihs = w1 * (1 + s.head_margin) <= np.fmin(w0, w2)
        a_ihs &= np.abs(w0 - w2) <= s.tolerance * w1
        a_ihs &= neck_ls - w1 >= s.min_height * w1
        dh_s, dl_s = v0 - v1, w0 - w1
        flat_hs, fall_hs = np.abs(dh_s) <= s.tolerance * v1, dh_s < -s.tolerance * v1
        slope_h, slope_l = dh_s / np.maximum(i0 - i1, 1), dl_s / np.maximum(j0 - j1, 1)

        bh, bl = sh.at_bars, sl.at_bars
        h0, h1, h2 = bh(i0), bh(i1), bh(i2)
        l0, l1, l2 = bl(j0), bl(j1), bl(j2)
        vh0, vh1, vh2 = bh(v0), bh(v1), bh(v2)
        vl0, vl1, vl2 = bl(w0), bl(w1), bl(w2)
        tr0, cr0, top, bot = bh(x0), bl(y0), bh(top_s), bl(bot_s)
        neck_h, neck_l = bh(neck_hs), bl(neck_ls)
        fresh_h = (h0 >= 0) & (t - h0 <= s.breakout_bars)
        fresh_l = (l0 >= 0) & (t - l0 <= s.breakout_bars)
        in2h, in3h = (h1 >= 0) & (h1 > t - s.window), (h2 >= 0) & (h2 > t - s.window)
        in2l, in3l = (l1 >= 0) & (l1 > t - s.window), (l2 >= 0) & (l2 > t - s.window)
        new_h, new_l = in2h & fresh_h, in2l & fresh_l
        c_top = new_h & bh(a_top) & (c < tr0)
        c_res = new_h & bh(a_res) & (c > top)
        c_hs = in3h & fresh_h & bh(a_hs) & (c < neck_h)
        c_bot = new_l & bl(a_bot) & (c > cr0)
        c_sup = new_l & bl(a_sup) & (c < bot)
        c_ihs = in3l & fresh_l & bl(a_ihs) & (c > neck_l)
        res, sup = top, bot
        # triangles: the highs' line against the lows'
        ref = vh1
        dl = bl(dl_s)
        flat_h, fall_h = bh(flat_hs), bh(fall_hs)
        flat_l, rise_l = np.abs(dl) <= s.tolerance * ref, dl > s.tolerance * ref
        upper = vh0 + bh(slope_h) * (t - h0)
        lower = vl0 + bl(slope_l) * (t - l0)
        last = np.maximum(h0, l0)
        base = in2h & in2l & (np.maximum(h1, l1) < np.minimum(h0, l0)) & (upper > lower)
        base &= (t - last <= s.breakout_bars) & (vh1 - vl1 >= s.min_height * ref)
        shapes = [flat_h & rise_l & base, fall_h & flat_l & base, fall_h & rise_l & base]
        above, below = c > upper, c < lower

    def firsts(cond: B, group: int) -> B:
        """``cond`` only at its first bar per run of its swings (`first_in_segments`): a run
        starts where its latest swing was confirmed (`_run_start` of the latest swing's
        index): the highs' (group 0), the lows' (1) or the later of the two (2)."""
        ts = np.flatnonzero(cond)
        if group != 1:
            at_h = h0[ts]
            start = np.where(at_h >= 0, at_h + s.k, 0)
        if group != 0:
            at_l = l0[ts]
            start_l = np.where(at_l >= 0, at_l + s.k, 0)
            start = start_l if group == 1 else np.maximum(start, start_l)
        keep = np.ones(ts.shape[0], dtype=np.bool_)
        keep[1:] = ts[:-1] < start[1:]  # the previous true bar lies before this run
        out = np.zeros(n, dtype=np.bool_)
        out[ts[keep]] = True
        return out

    e_top, e_hs, e_res = firsts(c_top, 0), firsts(c_hs, 0), firsts(c_res, 0)
    e_bot, e_ihs, e_sup = firsts(c_bot, 1), firsts(c_ihs, 1), firsts(c_sup, 1)
    e_tri = [firsts(sh & above, 2) for sh in shapes] + [firsts(sh & below, 2) for sh in shapes]
    minus, plus = np.full(n, -1.0), np.full(n, 1.0)
    out = [
        Detection(
            "double_top", _valid_after(e_top, h0, h, top, above=True), minus, h1,
            {"top": top, "neckline": tr0},
        ),
        Detection(
            "double_bottom", _valid_after(e_bot, l0, lo, bot, above=False), plus, l1,
            {"bottom": bot, "neckline": cr0},
        ),
        Detection(
            "head_and_shoulders", _valid_after(e_hs, h0, h, vh1, above=True), minus, h2,
            {"head": vh1, "left_shoulder": vh2, "right_shoulder": vh0, "neckline": neck_h},
        ),
        Detection(
            "inverse_head_and_shoulders", _valid_after(e_ihs, l0, lo, vl1, above=False), plus, l2,
            {"head": vl1, "left_shoulder": vl2, "right_shoulder": vl0, "neckline": neck_l},
        ),
    ]  # fmt: skip
    start = np.minimum(h1, l1)
    levels = {"upper": upper, "lower": lower}
    kinds = ("ascending_triangle", "descending_triangle", "symmetric_triangle")
    for i, kind in enumerate(kinds):
        up, dn = e_tri[i], e_tri[i + 3]
        out.append(Detection(kind, up | dn, np.where(up, 1.0, -1.0), start, levels))
    out.append(Detection("resistance_breakout", e_res, plus, h1, {"level": res}))
    out.append(Detection("support_breakdown", e_sup, minus, l1, {"level": sup}))
    return out
