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

import numpy as np
import numpy.typing as npt

from conclave.agents import indicators as ind

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]


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
    return np.asarray(np.searchsorted(seg, seg, side="left"), dtype=np.int64)


def first_in_segments(cond: B, starts: I64, group: npt.NDArray[np.intp]) -> B:
    """Row r of ``cond`` (shape ``(rows, n)``) only at its first true bar within each run,
    the runs' first bars given by row ``group[r]`` of ``starts`` (see `_run_start`)."""
    rows, n = cond.shape
    cs = np.zeros((rows, n + 1), dtype=np.int64)
    np.cumsum(cond, axis=1, out=cs[:, 1:])  # cs[:, i] = trues before bar i
    before = np.take_along_axis(cs, starts[group], axis=1)
    return np.asarray(cond & (cs[:, 1:] - before == 1), dtype=np.bool_)


def _latest(
    idx: I64, k: int, n: int, tables: list[tuple[npt.NDArray[np.generic], float]]
) -> list[npt.NDArray[np.generic]]:
    """Per table (one value per swing), rows 0..2: the latest, previous and third-latest
    swing confirmed by each bar (``idx + k <= t``); ``fill`` where there is none."""
    pos = np.searchsorted(idx + k, np.arange(n), side="right")  # latest swing + 1
    j = np.maximum(pos[None, :] - _BACK, 0)
    return [np.concatenate(([fill], tab))[j] for tab, fill in tables]


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
    """Drop events where ``x`` went beyond ``limit`` after ``t_from`` (few events: a loop)."""
    out = ev.copy()
    for t in np.flatnonzero(ev):
        seg = x[t_from[t] + 1 : t + 1]
        if seg.size and ((seg.max() > limit[t]) if above else (seg.min() < limit[t])):
            out[t] = False
    return out


def detect(h: F64, lo: F64, c: F64, s: Settings) -> list[Detection]:
    """Every chart pattern kind's confirmations over the bars (see module docstring)."""
    n = c.shape[0]
    t = np.arange(n)
    hi_idx, lo_idx = ind.swing_points(h, lo, s.k)
    # row b of each: the b-th latest swing known at t (index, price, trough or crest before)
    hs, vh, trs = _latest(
        hi_idx,
        s.k,
        n,
        [(hi_idx, -1), (h[hi_idx], np.nan), (between(lo, hi_idx, np.minimum), np.nan)],
    )
    ls, vl, crs = _latest(
        lo_idx,
        s.k,
        n,
        [(lo_idx, -1), (lo[lo_idx], np.nan), (between(h, lo_idx, np.maximum), np.nan)],
    )
    h0, h1, h2 = hs
    l0, l1, l2 = ls
    vh0, vh1, vh2 = vh
    vl0, vl1, vl2 = vl
    tr0, tr1 = trs[0], trs[1]
    cr0, cr1 = crs[0], crs[1]
    ph, pl = h0, l0  # constant while no new swing is confirmed: the segments
    fresh_h = (h0 >= 0) & (t - h0 <= s.breakout_bars)
    fresh_l = (l0 >= 0) & (t - l0 <= s.breakout_bars)
    in2h, in3h = (h1 >= 0) & (h1 > t - s.window), (h2 >= 0) & (h2 > t - s.window)
    in2l, in3l = (l1 >= 0) & (l1 > t - s.window), (l2 >= 0) & (l2 > t - s.window)
    with np.errstate(invalid="ignore", divide="ignore"):
        # double top / bottom
        top = np.fmax(vh0, vh1)
        ok = in2h & fresh_h & (np.abs(vh0 - vh1) <= s.tolerance * top)
        ok &= top - tr0 >= s.min_height * top
        c_top = ok & (c < tr0)
        bot = np.fmin(vl0, vl1)
        ok = in2l & fresh_l & (np.abs(vl0 - vl1) <= s.tolerance * bot)
        ok &= cr0 - bot >= s.min_height * bot
        c_bot = ok & (c > cr0)
        # head and shoulders / inverse
        neck_h = np.fmin(tr0, tr1)
        ok = in3h & fresh_h & (vh1 >= np.fmax(vh0, vh2) * (1 + s.head_margin))
        ok &= np.abs(vh0 - vh2) <= s.tolerance * vh1
        ok &= vh1 - neck_h >= s.min_height * vh1
        c_hs = ok & (c < neck_h)
        neck_l = np.fmax(cr0, cr1)
        ok = in3l & fresh_l & (vl1 * (1 + s.head_margin) <= np.fmin(vl0, vl2))
        ok &= np.abs(vl0 - vl2) <= s.tolerance * vl1
        ok &= neck_l - vl1 >= s.min_height * vl1
        c_ihs = ok & (c > neck_l)
        # support / resistance breakouts
        res = np.fmax(vh0, vh1)
        ok = in2h & fresh_h & (np.abs(vh0 - vh1) <= s.tolerance * res)
        ok &= res - tr0 >= 0.5 * s.min_height * res
        c_res = ok & (c > res)
        sup = np.fmin(vl0, vl1)
        ok = in2l & fresh_l & (np.abs(vl0 - vl1) <= s.tolerance * sup)
        ok &= cr0 - sup >= 0.5 * s.min_height * sup
        c_sup = ok & (c < sup)
        # triangles
        ref = vh1
        dh, dl = vh0 - vh1, vl0 - vl1
        flat_h, flat_l = np.abs(dh) <= s.tolerance * ref, np.abs(dl) <= s.tolerance * ref
        rise_l, fall_h = dl > s.tolerance * ref, dh < -s.tolerance * ref
        upper = vh0 + dh / np.maximum(h0 - h1, 1) * (t - h0)
        lower = vl0 + dl / np.maximum(l0 - l1, 1) * (t - l0)
        last = np.maximum(h0, l0)
        base = in2h & in2l & (np.maximum(h1, l1) < np.minimum(h0, l0)) & (upper > lower)
        base &= (t - last <= s.breakout_bars) & (vh1 - vl1 >= s.min_height * ref)
        shapes = np.stack([flat_h & rise_l, fall_h & flat_l, fall_h & rise_l]) & base
        tri = np.concatenate([shapes & (c > upper), shapes & (c < lower)])
    # one pass for the twelve conditions: each only at its first bar per run of its swings
    conds = np.concatenate([np.stack([c_top, c_hs, c_res, c_bot, c_ihs, c_sup]), tri])
    starts = np.stack([_run_start(ph), _run_start(pl), _run_start(ph + pl)])
    firsts = first_in_segments(conds, starts, _GROUPS)
    e_top, e_hs, e_res, e_bot, e_ihs, e_sup = firsts[:6]
    e_tri = firsts[6:]
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
