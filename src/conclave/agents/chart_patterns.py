"""Chart patterns from confirmed swing points, vectorized over bars; confirmed, never repainted.

Definitions follow Bulkowski, *Encyclopedia of Chart Patterns* (2nd ed., 2005), simplified to
what swing points can state. Swings are `indicators.swing_points` (known ``k`` bars after the
extreme). For every bar t the latest swings known at t define the candidate; the pattern is
CONFIRMED at the first bar t (per candidate) whose close breaks its key level within
``breakout_bars`` of the last swing, and it is reported at t from data up to t only.

Each pattern is one function below whose docstring states its rule; in short:

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

A pattern's shape depends on the swings alone: it is tested once per count of confirmed
swings and spread over the bars where that count holds (`chart_swings.Side`), the same
operations on the same values as bar by bar, so `chart_last.detect_last` (the live path,
on plain floats) equals `detect` bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from conclave.agents import indicators as ind
from conclave.agents.chart_swings import Side, _valid_after, between, first_per_run

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
    """Swings confirmed after ``k`` bars; a pattern's swings within the last ``window`` bars;
    ``tolerance``, ``min_height`` and ``head_margin`` are fractions of the price; a break
    counts within ``breakout_bars`` of the last swing."""

    k: int = 3
    window: int = 120
    tolerance: float = 0.02
    min_height: float = 0.02
    head_margin: float = 0.02
    breakout_bars: int = 30


def double_top(highs: Side, h: F64, c: F64, s: Settings) -> Detection:
    """Double top (bearish): two swing highs at about the same price, then a close below the
    trough between them.

    Shape: the last two swing highs within ``tolerance`` of the higher (the top), the lowest
    low between them (the neckline) at least ``min_height`` of the top below it. Confirmed
    at a close below the neckline while both tops lie in the ``window`` and the second at
    most ``breakout_bars`` back; void when a high went above the top since the second top.
    """
    sw, at = highs.swings, highs.bars
    top = np.fmax(sw.last, sw.prev)
    alike = np.abs(sw.last - sw.prev) <= s.tolerance * top
    shape = alike & (top - sw.gap_last >= s.min_height * top)
    top_at, neckline = highs.at_bars(top), at.gap_last
    breaks = highs.two_in_window & highs.fresh & highs.at_bars(shape) & (c < neckline)
    events = first_per_run(breaks, highs.run_start)
    events = _valid_after(events, at.last_at, h, top_at, above=True)
    levels = {"top": top_at, "neckline": neckline}
    return Detection("double_top", events, np.full(c.shape[0], -1.0), at.prev_at, levels)


def double_bottom(lows: Side, lo: F64, c: F64, s: Settings) -> Detection:
    """Double bottom (bullish): two swing lows at about the same price, then a close above
    the crest between them.

    Shape: the last two swing lows within ``tolerance`` of the lower (the bottom), the
    highest high between them (the neckline) at least ``min_height`` of the bottom above
    it. Confirmed at a close above the neckline while both bottoms lie in the ``window``
    and the second at most ``breakout_bars`` back; void when a low went below the bottom
    since the second bottom.
    """
    sw, at = lows.swings, lows.bars
    bottom = np.fmin(sw.last, sw.prev)
    alike = np.abs(sw.last - sw.prev) <= s.tolerance * bottom
    shape = alike & (sw.gap_last - bottom >= s.min_height * bottom)
    bottom_at, neckline = lows.at_bars(bottom), at.gap_last
    breaks = lows.two_in_window & lows.fresh & lows.at_bars(shape) & (c > neckline)
    events = first_per_run(breaks, lows.run_start)
    events = _valid_after(events, at.last_at, lo, bottom_at, above=False)
    levels = {"bottom": bottom_at, "neckline": neckline}
    return Detection("double_bottom", events, np.full(c.shape[0], 1.0), at.prev_at, levels)


def head_and_shoulders(highs: Side, h: F64, c: F64, s: Settings) -> Detection:
    """Head and shoulders (bearish): three swing highs, the middle one highest, then a close
    below the neckline.

    Shape: the last three swing highs are the left shoulder, the head and the right
    shoulder; the head at least ``head_margin`` above the higher shoulder, the shoulders
    apart by at most ``tolerance`` of the head, and the neckline (the lower of the two
    troughs between them) at least ``min_height`` of the head below it. Confirmed at a
    close below the neckline while all three lie in the ``window`` and the right shoulder
    at most ``breakout_bars`` back; void when a high went above the head since the right
    shoulder.
    """
    sw, at = highs.swings, highs.bars
    left, head, right = sw.third, sw.prev, sw.last
    neckline = np.fmin(sw.gap_last, sw.gap_prev)
    shape = head >= np.fmax(right, left) * (1 + s.head_margin)
    shape &= np.abs(right - left) <= s.tolerance * head
    shape &= head - neckline >= s.min_height * head
    neckline_at = highs.at_bars(neckline)
    breaks = highs.three_in_window & highs.fresh & highs.at_bars(shape) & (c < neckline_at)
    events = first_per_run(breaks, highs.run_start)
    events = _valid_after(events, at.last_at, h, at.prev, above=True)
    levels = {
        "head": at.prev, "left_shoulder": at.third, "right_shoulder": at.last,
        "neckline": neckline_at,
    }  # fmt: skip
    return Detection("head_and_shoulders", events, np.full(c.shape[0], -1.0), at.third_at, levels)


def inverse_head_and_shoulders(lows: Side, lo: F64, c: F64, s: Settings) -> Detection:
    """Inverse head and shoulders (bullish): three swing lows, the middle one lowest, then a
    close above the neckline.

    Shape: the last three swing lows are the left shoulder, the head and the right
    shoulder; the head at least ``head_margin`` below the lower shoulder (the head times
    ``1 + head_margin`` at most that shoulder), the shoulders apart by at most
    ``tolerance`` of the head, and the neckline (the higher of the two crests between
    them) at least ``min_height`` of the head above it. Confirmed at a close above the neckline
    while all three lie in the ``window`` and the right shoulder at most ``breakout_bars``
    back; void when a low went below the head since the right shoulder.
    """
    sw, at = lows.swings, lows.bars
    left, head, right = sw.third, sw.prev, sw.last
    neckline = np.fmax(sw.gap_last, sw.gap_prev)
    shape = head * (1 + s.head_margin) <= np.fmin(right, left)
    shape &= np.abs(right - left) <= s.tolerance * head
    shape &= neckline - head >= s.min_height * head
    neckline_at = lows.at_bars(neckline)
    breaks = lows.three_in_window & lows.fresh & lows.at_bars(shape) & (c > neckline_at)
    events = first_per_run(breaks, lows.run_start)
    events = _valid_after(events, at.last_at, lo, at.prev, above=False)
    levels = {
        "head": at.prev, "left_shoulder": at.third, "right_shoulder": at.last,
        "neckline": neckline_at,
    }  # fmt: skip
    kind = "inverse_head_and_shoulders"
    return Detection(kind, events, np.full(c.shape[0], 1.0), at.third_at, levels)


@dataclass(frozen=True, slots=True)
class Triangle:
    """The lines through the last two swing highs (``upper``) and the last two swing lows
    (``lower``), extrapolated to each bar, and how their slopes class.

    ``drawn``: the two earlier swings (a high and a low) both come before the two later
    ones and lie within the ``window``, the latest swing is at most ``breakout_bars`` back,
    the lines are still apart at the bar, and the earlier high is at least ``min_height``
    (of it) above the earlier low. Each line's change is classed against ``tolerance`` of
    the earlier high: flat within it, falling (highs) or rising (lows) beyond it.
    ``above`` / ``below``: the close beyond the upper / lower line. ``start``: the first of
    the four swings.
    """

    upper: F64
    lower: F64
    drawn: B
    flat_highs: B
    falling_highs: B
    flat_lows: B
    rising_lows: B
    above: B
    below: B
    start: I64
    run_start: I64

    @classmethod
    def build(cls, highs: Side, lows: Side, c: F64, s: Settings) -> Triangle:
        """The triangle the swings of ``highs`` and ``lows`` draw at each bar of ``c``."""
        hs, ls, hb, lb = highs.swings, lows.swings, highs.bars, lows.bars
        t = np.arange(c.shape[0])
        change_h, change_l = hs.last - hs.prev, ls.last - ls.prev
        flat_h = np.abs(change_h) <= s.tolerance * hs.prev
        fall_h = change_h < -s.tolerance * hs.prev
        slope_h = change_h / np.maximum(hs.last_at - hs.prev_at, 1)
        slope_l = change_l / np.maximum(ls.last_at - ls.prev_at, 1)
        ref = hb.prev  # the lows' change is classed against the earlier high too
        change_l_at = lows.at_bars(change_l)
        upper = hb.last + highs.at_bars(slope_h) * (t - hb.last_at)
        lower = lb.last + lows.at_bars(slope_l) * (t - lb.last_at)
        last = np.maximum(hb.last_at, lb.last_at)
        interleaved = np.maximum(hb.prev_at, lb.prev_at) < np.minimum(hb.last_at, lb.last_at)
        drawn = highs.two_in_window & lows.two_in_window & interleaved & (upper > lower)
        drawn &= (t - last <= s.breakout_bars) & (hb.prev - lb.prev >= s.min_height * ref)
        return cls(
            upper=upper,
            lower=lower,
            drawn=drawn,
            flat_highs=highs.at_bars(flat_h),
            falling_highs=highs.at_bars(fall_h),
            flat_lows=np.abs(change_l_at) <= s.tolerance * ref,
            rising_lows=change_l_at > s.tolerance * ref,
            above=c > upper,
            below=c < lower,
            start=np.minimum(hb.prev_at, lb.prev_at),
            run_start=np.maximum(highs.run_start, lows.run_start),
        )

    def detection(self, kind: str, shape: B) -> Detection:
        """``kind`` where ``shape`` holds on a drawn triangle: bullish at a close above the
        upper line, bearish below the lower, once per run of either side's swings."""
        drawn = shape & self.drawn
        up = first_per_run(drawn & self.above, self.run_start)
        down = first_per_run(drawn & self.below, self.run_start)
        levels = {"upper": self.upper, "lower": self.lower}
        return Detection(kind, up | down, np.where(up, 1.0, -1.0), self.start, levels)


def ascending_triangle(tri: Triangle) -> Detection:
    """Ascending triangle: flat highs and rising lows (`Triangle`); a close beyond a line."""
    return tri.detection("ascending_triangle", tri.flat_highs & tri.rising_lows)


def descending_triangle(tri: Triangle) -> Detection:
    """Descending triangle: falling highs and flat lows (`Triangle`); a close beyond a line."""
    return tri.detection("descending_triangle", tri.falling_highs & tri.flat_lows)


def symmetric_triangle(tri: Triangle) -> Detection:
    """Symmetric triangle: falling highs and rising lows (`Triangle`); a close beyond a line."""
    return tri.detection("symmetric_triangle", tri.falling_highs & tri.rising_lows)


def resistance_breakout(highs: Side, c: F64, s: Settings) -> Detection:
    """Resistance breakout (bullish): a close above two swing highs at about the same price.

    Shape: the last two swing highs within ``tolerance`` of the higher (the level), the
    lowest low between them at least half ``min_height`` of the level below it (a
    pullback). Confirmed at a close above the level while both highs lie in the ``window``
    and the second at most ``breakout_bars`` back.
    """
    sw, at = highs.swings, highs.bars
    top = np.fmax(sw.last, sw.prev)
    alike = np.abs(sw.last - sw.prev) <= s.tolerance * top
    shape = alike & (top - sw.gap_last >= 0.5 * s.min_height * top)
    level = highs.at_bars(top)
    breaks = highs.two_in_window & highs.fresh & highs.at_bars(shape) & (c > level)
    events = first_per_run(breaks, highs.run_start)
    kind = "resistance_breakout"
    return Detection(kind, events, np.full(c.shape[0], 1.0), at.prev_at, {"level": level})


def support_breakdown(lows: Side, c: F64, s: Settings) -> Detection:
    """Support breakdown (bearish): a close below two swing lows at about the same price.

    Shape: the last two swing lows within ``tolerance`` of the lower (the level), the
    highest high between them at least half ``min_height`` of the level above it (a
    bounce). Confirmed at a close below the level while both lows lie in the ``window`` and
    the second at most ``breakout_bars`` back.
    """
    sw, at = lows.swings, lows.bars
    bottom = np.fmin(sw.last, sw.prev)
    alike = np.abs(sw.last - sw.prev) <= s.tolerance * bottom
    shape = alike & (sw.gap_last - bottom >= 0.5 * s.min_height * bottom)
    level = lows.at_bars(bottom)
    breaks = lows.two_in_window & lows.fresh & lows.at_bars(shape) & (c < level)
    events = first_per_run(breaks, lows.run_start)
    kind = "support_breakdown"
    return Detection(kind, events, np.full(c.shape[0], -1.0), at.prev_at, {"level": level})


def detect(h: F64, lo: F64, c: F64, s: Settings) -> list[Detection]:
    """Every chart pattern kind's confirmations over the bars, in `chart_last.KINDS` order."""
    n = c.shape[0]
    hi_idx, lo_idx = ind.swing_points(h, lo, s.k)
    k, window, bb = s.k, s.window, s.breakout_bars
    troughs, crests = between(lo, hi_idx, np.minimum), between(h, lo_idx, np.maximum)
    highs = Side.build(hi_idx, h[hi_idx], troughs, n, k=k, window=window, breakout_bars=bb)
    lows = Side.build(lo_idx, lo[lo_idx], crests, n, k=k, window=window, breakout_bars=bb)
    with np.errstate(invalid="ignore", divide="ignore"):  # NaN where a side has no swings
        tri = Triangle.build(highs, lows, c, s)
        return [
            double_top(highs, h, c, s),
            double_bottom(lows, lo, c, s),
            head_and_shoulders(highs, h, c, s),
            inverse_head_and_shoulders(lows, lo, c, s),
            ascending_triangle(tri),
            descending_triangle(tri),
            symmetric_triangle(tri),
            resistance_breakout(highs, c, s),
            support_breakdown(lows, c, s),
        ]
