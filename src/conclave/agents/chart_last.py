"""Chart pattern confirmations of the last bars only, on plain floats (the live path).

`detect_last` reports what `chart_patterns.detect` reports at the bars from ``since`` on,
with the same comparisons and arithmetic (IEEE doubles round the same in Python and numpy),
so `PatternRecognition.compute_last` equals the series bit for bit without ~130 array
operations over the whole window. The swing prices of each side are tested once per new
swing (`_Side`, `_Tri`); between two swings nothing but the close changes, so each pattern
not yet confirmed in its run is looked for at its first breaking close there
(`_side_hits`, `_tri_hits`). tests/agents/test_last_bar.py checks it against `detect` on
every bar of long histories.
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
    """The confirmations `detect` reports at bars ``t >= since``, on plain floats.

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
    hsv, lsv = h[hi_idx].tolist(), lo[lo_idx].tolist()  # the swings' prices
    bb, k, n_h, n_l, n = s.breakout_bars, s.k, len(hi), len(li), c.shape[0]
    # the bars read one by one: closes from the scan's first bar on, highs and lows from
    # the first bar an event's last swing can be at (``t - breakout_bars``, t >= since)
    off = max(0, since - bb)
    hv, lv, cv = h[off:].tolist(), lo[off:].tolist(), c[off:].tolist()
    found: list[tuple[int, int, Event]] = []  # (bar, slot, event)
    ph = pl = 0  # swings confirmed so far (highs, lows)
    hs_: _Side | None = None
    ls_: _Side | None = None
    tri: _Tri | None = None
    seen = [False] * 12  # per condition slot: already true in the current run
    begin = off
    jh, jl = bisect_right(hi, since - k) - 1, bisect_right(li, since - k) - 1
    if jh >= 0 and jl >= 0:  # the last high and low confirmed by since (at index + k)
        begin = max(begin, min(hi[jh], li[jl]) + k)
    win = s.window
    # the state (the sides and the triangle) changes only at a swing's confirmation, so
    # the bars go by segments between confirmations; in each, every condition not yet
    # true in its run is looked for at its first true bar, over the bars where it counts
    t = begin
    while t < n:
        new_h = new_l = False
        while ph < n_h and hi[ph] + k <= t:
            ph, new_h = ph + 1, True
        while pl < n_l and li[pl] + k <= t:
            pl, new_l = pl + 1, True
        if new_h:  # a new run for the highs' conditions and the triangles'
            hs_ = _side(hi, ph, hsv, trs, s, 1.0) if ph >= 2 else None
            seen[0:3], seen[6:12] = [False] * 3, [False] * 6
        if new_l:
            ls_ = _side(li, pl, lsv, crs, s, -1.0) if pl >= 2 else None
            seen[3:6], seen[6:12] = [False] * 3, [False] * 6
        if new_h or new_l:
            tri = _tri(hs_, ls_, s) if hs_ is not None and ls_ is not None else None
        stop = min(hi[ph] + k if ph < n_h else n, li[pl] + k if pl < n_l else n, n)
        hit: list[tuple[int, int, int, float, int, dict[str, float]]] = []
        for side, base in ((hs_, 0), (ls_, 3)):
            if side is not None:  # bars t with i1 > t - window and t - i0 <= breakout
                end = min(stop, side.i1 + win, side.i0 + bb + 1)
                if t < end:
                    _side_hits(side, base, seen, cv, off, t, end, win, hit)
        if tri is not None and hs_ is not None and ls_ is not None:
            end = min(stop, hs_.i1 + win, ls_.i1 + win, tri.last + bb + 1)
            if t < end:
                _tri_hits(tri, seen, cv, off, t, end, hit)
        for tt, slot, row, d, start, levels in hit:
            h0 = hi[ph - 1] if ph else -1
            l0 = li[pl - 1] if pl else -1
            if tt >= since and _holds(row, tt - off, h0 - off, l0 - off, hv, lv, levels):
                found.append((tt, slot, Event(row, tt, d, start, dict(levels))))
        t = stop
    found.sort(key=lambda f: (f[0], f[1]))  # by bar, then in the order of the slots
    return [e for _, _, e in found]


def _side_hits(
    side: _Side,
    base: int,
    seen: list[bool],
    cv: list[float],
    off: int,
    t0: int,
    end: int,
    win: int,
    hit: list[tuple[int, int, int, float, int, dict[str, float]]],
) -> None:
    """The first bar in ``t0 .. end - 1`` (none seen yet) at which each of ``side``'s
    patterns breaks, appended to ``hit`` as ``(bar, slot, row, direction, start,
    levels)``: slots ``base`` (double), ``base + 1`` (head and shoulders, while its
    third swing is in the window), ``base + 2`` (breakout), rows as `KINDS`."""
    m = side.m  # +1 highs: close below the neckline is the break; -1 lows: above
    row0 = base // 3
    if side.double and not seen[base]:
        lim = m * side.neck0
        for t in range(t0, end):
            if m * cv[t - off] < lim:
                seen[base] = True
                hit.append((t, base, row0, -m, side.i1, side.double_levels))
                break
    if side.hs and not seen[base + 1]:
        lim = m * side.neck
        for t in range(t0, min(end, side.i2 + win)):
            if m * cv[t - off] < lim:
                seen[base + 1] = True
                hit.append((t, base + 1, 2 + row0, -m, side.i2, side.hs_levels))
                break
    if side.level and not seen[base + 2]:
        lim = m * side.extreme
        for t in range(t0, end):
            if m * cv[t - off] > lim:
                seen[base + 2] = True
                hit.append((t, base + 2, 7 + row0, m, side.i1, {"level": side.extreme}))
                break


def _tri_hits(
    tri: _Tri,
    seen: list[bool],
    cv: list[float],
    off: int,
    t0: int,
    end: int,
    hit: list[tuple[int, int, int, float, int, dict[str, float]]],
) -> None:
    """The first bar in ``t0 .. end - 1`` (none seen yet) at which the close breaks out of
    ``tri`` upwards (slots 6 + i) and downwards (slots 9 + i), for each shape i it has;
    appended to ``hit`` as in `_side_hits`."""
    shapes = [i for i, ok in enumerate(tri.shapes) if ok]
    for t in range(t0, end):
        if all(seen[6 + i] and seen[9 + i] for i in shapes):
            return
        ct = cv[t - off]
        upper = tri.vh0 + tri.sh * (t - tri.h0)
        lower = tri.vl0 + tri.sl * (t - tri.l0)
        side_ = 0 if ct > upper else 3 if ct < lower else -1
        if upper > lower and side_ >= 0:
            d = 1.0 if side_ == 0 else -1.0
            for i in shapes:
                if not seen[6 + side_ + i]:
                    seen[6 + side_ + i] = True
                    lvl = {"upper": upper, "lower": lower}
                    hit.append((t, 6 + side_ + i, 4 + i, d, tri.start, lvl))


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
    """`_Side` for the ``pos`` swings confirmed so far (pos >= 2), as `detect` tests them;
    ``v`` holds the swings' prices (``v[p]`` at bar ``idx[p]``)."""
    tol, mh, hm = s.tolerance, s.min_height, s.head_margin
    i0, i1 = idx[pos - 1], idx[pos - 2]
    i2 = idx[pos - 3] if pos >= 3 else -1
    v0, v1, neck0 = v[pos - 1], v[pos - 2], bt[pos - 1]
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
        v2 = v[pos - 3]
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
    """`_valid_after` for one event: no high above the tops (low below the bottoms) since
    (bars counted from the start of ``hv`` and ``lv``)."""
    if row == 0:
        return not hv[h0 + 1 : t + 1] or max(hv[h0 + 1 : t + 1]) <= lv_["top"]
    if row == 2:
        return not hv[h0 + 1 : t + 1] or max(hv[h0 + 1 : t + 1]) <= lv_["head"]
    if row == 1:
        return not lv[l0 + 1 : t + 1] or min(lv[l0 + 1 : t + 1]) >= lv_["bottom"]
    if row == 3:
        return not lv[l0 + 1 : t + 1] or min(lv[l0 + 1 : t + 1]) >= lv_["head"]
    return True
