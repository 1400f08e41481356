"""Swing points for the chart patterns: each side's latest swings, per count and per bar.

`Side` holds one side's three latest swings (`Pivots`: ``third``, ``prev``, ``last``, and
the gaps between them) once per count of confirmed swings, and the same spread over the
bars where that count holds. A pattern's shape depends on the swings alone, so it is tested
once per count and spread (`Side.at_bars`): the same operations on the same values as bar
by bar. The run helpers keep a condition at its first bar per run of a side's swings
(`first_per_run`); `_valid_after` drops events the price has since overrun.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]
_G = TypeVar("_G", bound=np.generic)
_BACK = np.arange(3)[:, None]  # the latest, previous and third-latest swing: p - 0, 1, 2


@dataclass(frozen=True, slots=True)
class Pivots:
    """The three latest swing points of one side (highs or lows) and the gaps between them.

    ``last``, ``prev`` and ``third`` are the latest swing, the one before and the one before
    that: bar index (``*_at``, -1 where there is none) and price (NaN where none).
    ``gap_last`` is the other side's extreme between ``prev`` and ``last`` (for swing highs
    the lowest low, a trough; for swing lows the highest high, a crest), ``gap_prev`` the
    one between ``third`` and ``prev``.
    """

    last_at: I64
    prev_at: I64
    third_at: I64
    last: F64
    prev: F64
    third: F64
    gap_last: F64
    gap_prev: F64

    def repeat(self, runs: I64) -> Pivots:
        """Entry p of every array repeated ``runs[p]`` times."""
        return Pivots(
            np.repeat(self.last_at, runs),
            np.repeat(self.prev_at, runs),
            np.repeat(self.third_at, runs),
            np.repeat(self.last, runs),
            np.repeat(self.prev, runs),
            np.repeat(self.third, runs),
            np.repeat(self.gap_last, runs),
            np.repeat(self.gap_prev, runs),
        )


@dataclass(frozen=True, slots=True)
class Side:
    """One side's swing points, per count of confirmed swings and as known at each bar.

    Entry p of ``swings`` holds the `Pivots` once p swings are confirmed (a swing at bar i
    is known from bar ``i + k``). The count only grows, so entry p holds for a run of
    ``runs[p]`` bars; `at_bars` spreads a per-entry array over them, and ``bars`` is
    ``swings`` so spread. Per bar: ``fresh``, the last swing at most ``breakout_bars``
    back; ``two_in_window`` / ``three_in_window``, the ``prev`` / ``third`` swing (and so
    those after it) within the last ``window`` bars; ``run_start``, the bar at which the
    last swing was confirmed (0 before any): a pattern is reported once per such run.
    """

    swings: Pivots
    bars: Pivots
    runs: I64
    fresh: B
    two_in_window: B
    three_in_window: B
    run_start: I64

    @classmethod
    def build(
        cls, idx: I64, price: F64, gap: F64, n: int, *, k: int, window: int, breakout_bars: int
    ) -> Side:
        """The side of the swings at ``idx`` (ascending) with their prices and the gap
        before each (`between`), over ``n`` bars; ``k``, ``window`` and ``breakout_bars``
        as in `chart_patterns.Settings`."""
        at = idx[idx + k < n] + k  # the bar confirming each swing (ascending)
        m = at.shape[0]
        runs = np.diff(np.concatenate(([0], at, [n]))).astype(np.int64)
        back = np.maximum(np.arange(m + 1)[None, :] - _BACK, 0)  # entry p, row b: p - b

        def rows(tab: npt.NDArray[_G], fill: float) -> npt.NDArray[_G]:
            return np.asarray(np.concatenate(([fill], tab[:m]))[back], dtype=tab.dtype)

        last_at, prev_at, third_at = rows(idx, -1)
        last, prev, third = rows(price, np.nan)
        gap_last, gap_prev, _ = rows(gap, np.nan)
        swings = Pivots(last_at, prev_at, third_at, last, prev, third, gap_last, gap_prev)
        bars = swings.repeat(runs)
        t = np.arange(n)
        return cls(
            swings=swings,
            bars=bars,
            runs=runs,
            fresh=(bars.last_at >= 0) & (t - bars.last_at <= breakout_bars),
            two_in_window=(bars.prev_at >= 0) & (bars.prev_at > t - window),
            three_in_window=(bars.third_at >= 0) & (bars.third_at > t - window),
            run_start=np.where(bars.last_at >= 0, bars.last_at + k, 0),
        )

    def at_bars(self, x: npt.NDArray[_G]) -> npt.NDArray[_G]:
        """A per-entry array as per bar (entry p at every bar where p swings are known)."""
        return np.repeat(x, self.runs)


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


#: Rows of `first_in_segments` for the twelve conditions stacked (the highs' three, the
#: lows' three, both sides' six triangle breaks), as the tests exercise it.
_GROUPS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2], dtype=np.intp)


def first_per_run(cond: B, run_start: I64) -> B:
    """``cond`` only at its first true bar within each run, each bar's run beginning at
    bar ``run_start`` (nondecreasing): `first_in_segments` of one row."""
    one = first_in_segments(cond[None, :], run_start[None, :], np.zeros(1, dtype=np.intp))
    return np.asarray(one[0], dtype=np.bool_)
