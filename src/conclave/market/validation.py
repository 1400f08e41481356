"""Candle validation as pure functions (RELIABILITY.md B1 to B6).

Each function takes candles and returns new candles plus what it found; none reads the
clock (``as_of_ms`` is always an argument) and none does I/O. `validate` chains them in the
order that makes each step's assumption true for the next: sort and merge duplicates, reject
rows that break OHLC invariants, drop the still-open candle, report gaps, refuse stale data.

Validation leaves gaps in the data (the cache and the backtest's trades keep the bars the
exchange gave); `fill_window` fills them for the agents (B3): every missing bar, up to the
newest one closed at ``as_of_ms``, becomes a flat bar at the previous close with volume 0,
and its `FillReport` counts them. More than `MAX_MISSING_RATIO` of a window's bars missing
makes a run degraded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from conclave.errors import InvalidCandlesError, StaleDataError
from conclave.market.candles import Candles
from conclave.timeframes import MINUTE_MS, Timeframe

#: freqtrade's rule: the newest closed candle may be at most 2 x timeframe + 5 min old.
STALE_GRACE_MS = 5 * MINUTE_MS
#: A window with more than this share of its bars missing (filled) degrades the run (B3).
MAX_MISSING_RATIO = 0.01


@dataclass(frozen=True, slots=True)
class Gap:
    """Bars missing between two consecutive open times."""

    after_open_ms: int
    before_open_ms: int
    missing_bars: int


@dataclass(frozen=True, slots=True)
class GapReport:
    """Places where the next bar is not exactly one timeframe later, and the bars missing."""

    count: int
    missing_bars: int
    gaps: tuple[Gap, ...] = ()


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """A row that broke an invariant and was removed, with why."""

    open_time_ms: int
    reason: str


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """What `validate` changed and found; ``rows`` counts the bars kept."""

    rows: int
    duplicates_merged: int = 0
    rejected: tuple[RejectedRow, ...] = ()
    dropped_unclosed: int = 0
    gaps: GapReport = field(default_factory=lambda: GapReport(0, 0))

    @property
    def missing_ratio(self) -> float:
        """Missing bars as a share of the bars the span should hold (0 when complete)."""
        total = self.rows + self.gaps.missing_bars
        return self.gaps.missing_bars / total if total else 0.0


def sort_and_merge_duplicates(candles: Candles) -> tuple[Candles, int]:
    """Sort by open time and merge rows sharing one: open first, high max, low min, rest last.

    "First" and "last" follow the input order among equal open times (a stable sort), so a
    later revision of a bar wins its close and volume. Returns the candles and rows merged.
    """
    n = len(candles)
    if n == 0:
        return candles, 0
    t = candles.open_time
    if n == 1 or bool(np.all(t[1:] > t[:-1])):
        return candles, 0
    order = np.argsort(t, kind="stable")
    ts = t[order]
    starts = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1]])
    ends = np.r_[starts[1:], n] - 1
    cols = {name: col[order] for name, col in candles.columns().items()}
    merged = {name: col[ends] for name, col in cols.items()}
    merged["open"] = cols["open"][starts]
    merged["high"] = np.maximum.reduceat(cols["high"], starts)
    merged["low"] = np.minimum.reduceat(cols["low"], starts)
    return candles.with_columns(merged), n - len(starts)


def _invalid_checks(candles: Candles) -> list[tuple[npt.NDArray[np.bool_], str]]:
    """Each invariant as a boolean mask of the rows that break it (nautilus_trader's rules)."""
    o, h, lo, c, v = candles.open, candles.high, candles.low, candles.close, candles.volume
    finite = np.asarray(np.isfinite(np.stack([o, h, lo, c, v])).all(axis=0), dtype=np.bool_)
    checks: list[tuple[npt.NDArray[np.bool_], str]] = [
        (~finite, "non-finite value"),
        ((o <= 0) | (h <= 0) | (lo <= 0) | (c <= 0), "price not positive"),
        (h < lo, "high below low"),
        (h < np.maximum(o, c), "high below open or close"),
        (lo > np.minimum(o, c), "low above open or close"),
        (v < 0, "negative volume"),
    ]
    if candles.taker_buy_volume is not None:
        tb = candles.taker_buy_volume
        checks.append(((~np.isfinite(tb)) | (tb < 0) | (tb > v * (1 + 1e-9)), "bad taker-buy"))
    if candles.trades is not None:
        checks.append((candles.trades < 0, "negative trade count"))
    return checks


def invalid_row_reasons(candles: Candles) -> list[str | None]:
    """For every row, the first invariant it breaks, or None."""
    reasons: list[str | None] = [None] * len(candles)
    for mask, reason in reversed(_invalid_checks(candles)):
        for i in np.flatnonzero(mask):
            reasons[int(i)] = reason
    return reasons


def reject_invalid_rows(candles: Candles) -> tuple[Candles, tuple[RejectedRow, ...]]:
    """Remove rows that break OHLC invariants; volume 0 is allowed (a bar with no trades)."""
    checks = _invalid_checks(candles)
    bad_mask = np.zeros(len(candles), dtype=np.bool_)
    for mask, _ in checks:
        bad_mask |= mask
    if not bad_mask.any():  # the common case: no per-row Python work at all
        return candles, ()
    first_reason: dict[int, str] = {}
    for mask, reason in checks:
        for i in np.flatnonzero(mask):
            first_reason.setdefault(int(i), reason)
    rejected = tuple(
        RejectedRow(int(candles.open_time[i]), first_reason[int(i)])
        for i in np.flatnonzero(bad_mask)
    )
    return candles.take(~bad_mask), rejected


def drop_unclosed(candles: Candles, as_of_ms: int) -> tuple[Candles, int]:
    """Keep only bars whose close time is at or before ``as_of_ms`` (B1)."""
    closed = candles.close_time <= as_of_ms
    dropped = int(len(candles) - np.count_nonzero(closed))
    return (candles, 0) if dropped == 0 else (candles.take(closed), dropped)


def find_gaps(candles: Candles) -> GapReport:
    """Report every place where the next bar does not open exactly one timeframe later."""
    if len(candles) < 2:
        return GapReport(0, 0)
    t = candles.open_time
    expected = candles.timeframe.add_array(t[:-1], 1)
    where = np.flatnonzero(t[1:] != expected)
    gaps = tuple(
        Gap(
            int(t[i]),
            int(t[i + 1]),
            max(candles.timeframe.bars_between(int(t[i]), int(t[i + 1])) - 1, 0),
        )
        for i in where
    )
    return GapReport(len(gaps), sum(g.missing_bars for g in gaps), gaps)


def _slots(tf: Timeframe, first_ms: int, last_ms: int) -> npt.NDArray[np.int64]:
    """Open times of every bar from ``first_ms`` to the last one opening by ``last_ms``."""
    n = tf.bars_between(first_ms, last_ms) + 1
    if tf.is_monthly:
        month = np.datetime64(first_ms, "ms").astype("datetime64[M]")
        months = month + np.arange(n, dtype=np.int64) * tf.count
        out: npt.NDArray[np.int64] = months.astype("datetime64[ms]").astype(np.int64)
        return out
    return first_ms + np.arange(n, dtype=np.int64) * tf.ms


def fill_gaps(
    candles: Candles, *, through_open_ms: int | None = None
) -> tuple[Candles, npt.NDArray[np.bool_]]:
    """Insert a flat bar (O=H=L=C=previous close, volume 0) for every missing bar (B3).

    Fills between the first and the last bar and, with ``through_open_ms``, after the last
    one up to the bar opening then (ms UTC). A filled bar reads only the bars before it.
    Returns the filled candles and a boolean mask that is true on inserted bars; candles
    whose open times do not lie on one timeframe grid are returned as they are.
    """
    n = len(candles)
    none = np.zeros(n, dtype=np.bool_)
    if n == 0:
        return candles, none
    tf, t = candles.timeframe, candles.open_time
    first, last = int(t[0]), int(t[-1])
    end = last if through_open_ms is None else max(last, int(through_open_ms))
    slots = tf.bars_between(first, end) + 1
    if slots == n:  # the common case: complete, nothing to build
        return candles, none
    grid = _slots(tf, first, end)
    pos = np.searchsorted(grid, t)
    if slots < n or pos[-1] >= slots or not np.array_equal(grid[pos], t):
        return candles, none  # a bar off the grid: there is no slot to fill around it
    present = np.zeros(slots, dtype=np.bool_)
    present[pos] = True
    # index of the latest real bar at or before each grid slot
    src = np.maximum.accumulate(np.where(present, np.cumsum(present) - 1, -1))
    prev_close = candles.close[src]
    cols: dict[str, npt.NDArray[Any]] = {"open_time": grid}
    for name in ("open", "high", "low", "close"):
        col = np.array(prev_close, dtype=np.float64)
        col[pos] = getattr(candles, name)
        cols[name] = col
    for name in ("volume", "taker_buy_volume", "trades"):
        col = getattr(candles, name)
        if col is not None:
            filled = np.zeros(slots, dtype=col.dtype)
            filled[pos] = col
            cols[name] = filled
    return candles.with_columns(cols), ~present


@dataclass(frozen=True, slots=True)
class FillReport:
    """One window as the agents see it: ``bars`` in it, ``filled`` of them missing (B3)."""

    timeframe: str
    bars: int
    filled: int

    @property
    def ratio(self) -> float:
        """Filled bars as a share of the window (0 for an empty window)."""
        return self.filled / self.bars if self.bars else 0.0

    @property
    def degraded(self) -> bool:
        """True when more than `MAX_MISSING_RATIO` of the window's bars were missing."""
        return self.ratio > MAX_MISSING_RATIO

    def describe(self) -> str:
        """``1h 5 of 405 bars missing (1.23 %)``."""
        pct = 100.0 * self.ratio
        return f"{self.timeframe} {self.filled} of {self.bars} bars missing ({pct:.2f} %)"

    def to_wire(self) -> dict[str, Any]:
        """``{"bars", "missing", "missingPct", "degraded"}``."""
        return {
            "bars": self.bars,
            "missing": self.filled,
            "missingPct": round(100.0 * self.ratio, 4),
            "degraded": self.degraded,
        }


def last_closed_open(tf: Timeframe, as_of_ms: int) -> int:
    """Open time (ms UTC) of the newest bar of ``tf`` closed at ``as_of_ms``."""
    return tf.add(tf.floor(as_of_ms), -1)


def fill_window(candles: Candles, as_of_ms: int) -> tuple[Candles, FillReport]:
    """``candles`` with every missing bar filled flat (see `fill_gaps`), through the newest
    bar closed at ``as_of_ms`` when the data is fresh then (stale data gets no bars made
    up after its end), and how many of the window's bars were filled."""
    through = None
    newest = candles.last_open_ms
    if newest is not None and newest >= stale_before(candles.timeframe, as_of_ms):
        through = last_closed_open(candles.timeframe, as_of_ms)
    out, filled = fill_gaps(candles, through_open_ms=through)
    return out, FillReport(candles.timeframe.name, len(out), int(np.count_nonzero(filled)))


def stale_before(tf: Timeframe, as_of_ms: Any) -> Any:
    """The oldest open time a newest bar may have to be fresh at ``as_of_ms`` (ms UTC; an
    int or an array of them): 2 bars + 5 min earlier."""
    return as_of_ms - (2 * tf.ms + STALE_GRACE_MS)


def check_fresh(candles: Candles, as_of_ms: int) -> None:
    """Raise `StaleDataError` unless the newest bar opened within 2 x tf + 5 min of as_of."""
    tf = candles.timeframe
    newest = candles.last_open_ms
    limit = stale_before(tf, as_of_ms)
    if newest is None or newest < limit:
        shown = "no candles" if newest is None else f"newest bar opened at {newest} ms"
        raise StaleDataError(
            f"{candles.symbol} {tf}: {shown}, older than 2 x {tf} + 5 min before {as_of_ms} ms",
            newest_open_ms=newest,
            as_of_ms=as_of_ms,
        )


def validate(
    candles: Candles,
    as_of_ms: int,
    *,
    require_fresh: bool = True,
    strict: bool = False,
) -> tuple[Candles, ValidationReport]:
    """Clean ``candles`` for use at ``as_of_ms`` and report what was changed and found.

    Sorts and merges duplicates, removes invalid rows (``strict`` raises
    `InvalidCandlesError` instead), drops bars not closed at ``as_of_ms``, reports gaps
    without filling them (`fill_window` does) and, with ``require_fresh``, raises
    `StaleDataError` on stale data.
    """
    out, merged = sort_and_merge_duplicates(candles)
    out, rejected = reject_invalid_rows(out)
    if rejected and strict:
        shown = ", ".join(f"{r.open_time_ms} ({r.reason})" for r in rejected[:5])
        raise InvalidCandlesError(
            f"{candles.symbol} {candles.timeframe}: {len(rejected)} invalid row(s): {shown}"
        )
    out, dropped = drop_unclosed(out, as_of_ms)
    if require_fresh:
        check_fresh(out, as_of_ms)
    report = ValidationReport(
        rows=len(out),
        duplicates_merged=merged,
        rejected=rejected,
        dropped_unclosed=dropped,
        gaps=find_gaps(out),
    )
    return out, report
