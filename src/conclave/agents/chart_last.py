"""Chart pattern confirmations of the last bars only, on plain floats (the live path).

`detect_last` reports what `chart_patterns.detect` reports at the bars from ``since`` on,
bar by bar with the same comparisons and arithmetic (IEEE doubles round the same in Python
and numpy), so `PatternRecognition.compute_last` equals the series bit for bit without
~130 array operations over the whole window. The swing prices of each side are tested once
per new swing (`_Side`, `_Tri`); only the bar-dependent checks run per bar.
tests/agents/test_last_bar.py checks it against `detect` on every bar of long histories.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from conclave.agents import indicators as ind
from conclave.agents.chart_patterns import Settings
from conclave.agents.chart_swings import between

F64 = npt.NDArray[np.float64]


#: The kinds in the order `detect` returns them (the rows of `detect_last`'s events).
KINDS = (
    "double_top",
    "double_bottom",
    "head_and_shoulders",
    "inverse_head_and_shoulders",
    "ascending_triangle",
    "descending_triangle",
    "symmetric_triangle",
    "resistance_breakout",
    "support_breakdown",
)


@dataclass(frozen=True, slots=True)
class Event:
    """One confirmation: its row in `KINDS`, bar, direction, start bar and levels there."""

    row: int
    t: int
    direction: float
    start: int
    levels: dict[str, float]


def detect_last(h: F64, lo: F64, c: F64, s: Settings, since: int) -> list[Event]:
    """The confirmations `detect` reports at bars ``t >= since``, bar by bar on plain floats.

    The same comparisons and arithmetic as `detect` (IEEE doubles round the same), for the
    live path. A pattern confirmed at t belongs to a swing seen at most ``breakout_bars``
    before t, so starting the scan ``breakout_bars`` before ``since`` sees every earlier
    true bar of its run (which would make it not the first). Each run begins at a swing's
    confirmation (the highs' rows at a new high, the lows' at a new low, the triangles' at
    either), so the scan need not start before the earlier of the last high and the last
    low confirmed by ``since``: the runs in effect at ``since`` begin there or later.
    """
    hi_idx, lo_idx = ind.swing_points(h, lo, s.k)
    hi, li = hi_idx.tolist(), lo_idx.tolist()
    trs = between(lo, hi_idx, np.minimum).tolist()  # trough before each swing high
    crs = between(h, lo_idx, np.maximum).tolist()  # crest before each swing low
    hv, lv, cv = h.tolist(), lo.tolist(), c.tolist()
    bb, k, n_h, n_l = s.breakout_bars, s.k, len(hi), len(li)
    out: list[Event] = []
    ph = pl = 0  # swings confirmed so far (highs, lows)
    hs_: _Side | None = None
    ls_: _Side | None = None
    tri: _Tri | None = None
    seen = [False] * 12  # per condition row: already true in the current run
    begin = max(0, since - bb)
    jh, jl = bisect_right(hi, since - k) - 1, bisect_right(li, since - k) - 1
    if jh >= 0 and jl >= 0:  # the last high and low confirmed by since (at index + k)
        begin = max(begin, min(hi[jh], li[jl]) + k)
    win, never = s.window, c.shape[0] + 1
    # the bar at which the next swing is confirmed, and the bars up to which each side and
    # the triangle can report (their checks below fail from there on: t - window >= i1,
    # t - i0 > breakout_bars), so the bars between swings where none can are skipped
    next_h = hi[0] + k if n_h else never
    next_l = li[0] + k if n_l else never
    h_end = l_end = t_end = -1
    for t in range(begin, c.shape[0]):
        new_h = new_l = False
        if t >= next_h:
            while ph < n_h and hi[ph] + k <= t:
                ph, new_h = ph + 1, True
            next_h = hi[ph] + k if ph < n_h else never
        if t >= next_l:
            while pl < n_l and li[pl] + k <= t:
                pl, new_l = pl + 1, True
            next_l = li[pl] + k if pl < n_l else never
        if new_h:  # a new run for the highs' conditions and the triangles'
            hs_ = _side(hi, ph, hv, trs, s, 1.0) if ph >= 2 else None
            seen[0:3], seen[6:12] = [False] * 3, [False] * 6
            h_end = _side_end(hs_, win, bb)
        if new_l:
            ls_ = _side(li, pl, lv, crs, s, -1.0) if pl >= 2 else None
            seen[3:6], seen[6:12] = [False] * 3, [False] * 6
            l_end = _side_end(ls_, win, bb)
        if new_h or new_l:
            tri = t_end_ = None
            if hs_ is not None and ls_ is not None:
                tri = _tri(hs_, ls_, s)
                if tri is not None:
                    t_end_ = min(hs_.i1 + win, ls_.i1 + win, tri.last + bb + 1)
            t_end = -1 if t_end_ is None else t_end_
        if t >= h_end and t >= l_end and t >= t_end:
            continue  # no check below can pass at this bar
        ct, lim = cv[t], t - win
        found: list[tuple[int, int, float, int, dict[str, float]]] = []  # (slot, row, ...)
        for side, base in ((hs_, 0), (ls_, 3)):
            if side is None or side.i1 <= lim or t - side.i0 > bb:
                continue
            m = side.m  # +1 highs: close below the neckline is the break; -1 lows: above
            if side.double and m * ct < m * side.neck0:
                found.append((base, base // 3, -m, side.i1, side.double_levels))
            if side.hs and side.i2 > lim and m * ct < m * side.neck:
                found.append((base + 1, 2 + base // 3, -m, side.i2, side.hs_levels))
            if side.level and m * ct > m * side.extreme:
                found.append((base + 2, 7 + base // 3, m, side.i1, {"level": side.extreme}))
        in2 = hs_ is not None and ls_ is not None and hs_.i1 > lim and ls_.i1 > lim
        if tri is not None and in2 and t - tri.last <= bb:
            upper = tri.vh0 + tri.sh * (t - tri.h0)
            lower = tri.vl0 + tri.sl * (t - tri.l0)
            side_ = 0 if ct > upper else 3 if ct < lower else -1
            if upper > lower and side_ >= 0:
                d = 1.0 if side_ == 0 else -1.0
                for i, ok in enumerate(tri.shapes):
                    if ok:
                        lvl = {"upper": upper, "lower": lower}
                        found.append((6 + side_ + i, 4 + i, d, tri.start, lvl))
        for slot, row, d, start, levels in found:
            if seen[slot]:
                continue
            seen[slot] = True
            h0 = hi[ph - 1] if ph else -1
            l0 = li[pl - 1] if pl else -1
            if t >= since and _holds(row, t, h0, l0, hv, lv, levels):
                out.append(Event(row, t, d, start, dict(levels)))
    return out


def _side_end(side: _Side | None, win: int, bb: int) -> int:
    """The first bar from which ``side`` reports nothing: its checks need ``t - win < i1``
    and ``t - i0 <= bb``; -1 when it has no pattern at all."""
    if side is None or not (side.double or side.hs or side.level):
        return -1
    return min(side.i1 + win, side.i0 + bb + 1)


@dataclass(slots=True)  # not frozen: built per new swing, and never changed
class _Side:
    """The latest swings of one side (highs ``m`` +1, lows mirrored with ``m`` -1) and which
    of its patterns their prices allow; the bar-dependent checks are left to the scan."""

    m: float
    i0: int
    i1: int
    i2: int
    v0: float
    v1: float
    extreme: float  # the higher top (lower bottom): the double's top, the breakout level
    neck0: float  # the trough between the last two swings (crest for lows)
    double: bool
    level: bool
    hs: bool
    neck: float
    double_levels: dict[str, float]
    hs_levels: dict[str, float]


def _side(
    idx: list[int], pos: int, v: list[float], bt: list[float], s: Settings, m: float
) -> _Side:
    """`_Side` for the ``pos`` swings confirmed so far (pos >= 2), as `detect` tests them."""
    tol, mh, hm = s.tolerance, s.min_height, s.head_margin
    i0, i1 = idx[pos - 1], idx[pos - 2]
    i2 = idx[pos - 3] if pos >= 3 else -1
    v0, v1, neck0 = v[i0], v[i1], bt[pos - 1]
    if m > 0:
        ext = v0 if v0 >= v1 else v1
        near = abs(v0 - v1) <= tol * ext
        double = near and ext - neck0 >= mh * ext
        level = near and ext - neck0 >= 0.5 * mh * ext
        d_lv = {"top": ext, "neckline": neck0}
    else:
        ext = v0 if v0 <= v1 else v1
        near = abs(v0 - v1) <= tol * ext
        double = near and neck0 - ext >= mh * ext
        level = near and neck0 - ext >= 0.5 * mh * ext
        d_lv = {"bottom": ext, "neckline": neck0}
    hs, neck, hs_lv = False, 0.0, {}
    if i2 >= 0:
        v2 = v[i2]
        if m > 0:
            neck = min(neck0, bt[pos - 2])
            hs = vh_ok = v1 >= max(v0, v2) * (1 + hm)
            hs = vh_ok and abs(v0 - v2) <= tol * v1 and v1 - neck >= mh * v1
        else:
            neck = max(neck0, bt[pos - 2])
            hs = v1 * (1 + hm) <= min(v0, v2)
            hs = hs and abs(v0 - v2) <= tol * v1 and neck - v1 >= mh * v1
        hs_lv = {"head": v1, "left_shoulder": v2, "right_shoulder": v0, "neckline": neck}
    return _Side(m, i0, i1, i2, v0, v1, ext, neck0, double, level, hs, neck, d_lv, hs_lv)


@dataclass(slots=True)
class _Tri:
    """The triangle the last two swing highs and lows draw, when their order and height allow."""

    h0: int
    l0: int
    last: int
    start: int
    vh0: float
    vl0: float
    sh: float
    sl: float
    shapes: tuple[bool, bool, bool]


def _tri(hs: _Side, ls: _Side, s: Settings) -> _Tri | None:
    if not max(hs.i1, ls.i1) < min(hs.i0, ls.i0) or not hs.v1 - ls.v1 >= s.min_height * hs.v1:
        return None
    tol, ref = s.tolerance, hs.v1
    dh, dl = hs.v0 - hs.v1, ls.v0 - ls.v1
    flat_h, flat_l = abs(dh) <= tol * ref, abs(dl) <= tol * ref
    rise_l, fall_h = dl > tol * ref, dh < -tol * ref
    shapes = (flat_h and rise_l, fall_h and flat_l, fall_h and rise_l)
    if not any(shapes):
        return None
    sh, sl = dh / max(hs.i0 - hs.i1, 1), dl / max(ls.i0 - ls.i1, 1)
    return _Tri(hs.i0, ls.i0, max(hs.i0, ls.i0), min(hs.i1, ls.i1), hs.v0, ls.v0, sh, sl, shapes)


def _holds(
    row: int, t: int, h0: int, l0: int, hv: list[float], lv: list[float], lv_: dict[str, float]
) -> bool:
    """`_valid_after` for one event: no high above the tops (low below the bottoms) since."""
    if row == 0:
        return not hv[h0 + 1 : t + 1] or max(hv[h0 + 1 : t + 1]) <= lv_["top"]
    if row == 2:
        return not hv[h0 + 1 : t + 1] or max(hv[h0 + 1 : t + 1]) <= lv_["head"]
    if row == 1:
        return not lv[l0 + 1 : t + 1] or min(lv[l0 + 1 : t + 1]) >= lv_["bottom"]
    if row == 3:
        return not lv[l0 + 1 : t + 1] or min(lv[l0 + 1 : t + 1]) >= lv_["head"]
    return True
