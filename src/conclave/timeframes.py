"""Timeframes: parse the exchange's interval names and do calendar arithmetic on open times.

Names are case-sensitive, as on Binance: ``1m`` is a minute, ``1M`` a month. All times are
integer milliseconds since the Unix epoch, UTC. Buckets are aligned as Binance aligns them:
to the epoch for minutes, hours and days, to Monday 00:00 UTC for weeks, and to the first of
the month for months. `iso_ms` writes a time as ISO 8601 text, as on the wire.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import numpy as np
import numpy.typing as npt

from conclave.errors import InvalidTimeframeError

MINUTE_MS: Final = 60_000
HOUR_MS: Final = 60 * MINUTE_MS
DAY_MS: Final = 24 * HOUR_MS
WEEK_MS: Final = 7 * DAY_MS
# 1970-01-01 was a Thursday; Binance weeks open on Monday, four days later.
_WEEK_OFFSET_MS: Final = 4 * DAY_MS

_UNIT_MS: Final = {"s": 1_000, "m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS, "w": WEEK_MS}

#: Every interval Binance's ``/api/v3/klines`` accepts, in ascending order.
BINANCE_INTERVALS: Final = (
    "1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h",
    "1d", "3d", "1w", "1M",
)  # fmt: skip

I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Timeframe:
    """A candle interval such as ``1h``; ``ms`` is its length (a month's is nominal: 30 days)."""

    name: str
    count: int
    unit: str

    @classmethod
    def parse(cls, value: str | Timeframe) -> Timeframe:
        """Parse ``value`` case-sensitively; raise `InvalidTimeframeError` naming it."""
        if isinstance(value, Timeframe):
            return value
        if not isinstance(value, str) or value not in BINANCE_INTERVALS:
            shown = repr(value)[:40]
            raise InvalidTimeframeError(
                f"unknown timeframe {shown}: expected one of {', '.join(BINANCE_INTERVALS)}"
                " (case-sensitive: 1m is a minute, 1M a month)"
            )
        return cls(name=value, count=int(value[:-1]), unit=value[-1])

    @property
    def is_monthly(self) -> bool:
        return self.unit == "M"

    @property
    def ms(self) -> int:
        """Length in milliseconds; months use a nominal 30 days (use `add` for exact steps)."""
        if self.is_monthly:
            return self.count * 30 * DAY_MS
        return self.count * _UNIT_MS[self.unit]

    def __str__(self) -> str:
        return self.name

    def __lt__(self, other: Timeframe) -> bool:
        return self.ms < other.ms

    def floor(self, t_ms: int) -> int:
        """Open time of the bucket that contains ``t_ms``."""
        return int(self.floor_array(np.asarray([t_ms], dtype=np.int64))[0])

    def floor_array(self, t_ms: I64) -> I64:
        """Vectorized `floor`."""
        t = np.asarray(t_ms, dtype=np.int64)
        if self.is_monthly:
            months = t.astype("datetime64[ms]").astype("datetime64[M]").astype(np.int64)
            months = months - months % self.count
            out: I64 = months.astype("datetime64[M]").astype("datetime64[ms]").astype(np.int64)
            return out
        step = self.ms
        offset = _WEEK_OFFSET_MS if self.unit == "w" else 0
        floored: I64 = (t - offset) // step * step + offset
        return floored

    def add(self, t_ms: int, n: int = 1) -> int:
        """``t_ms`` moved by ``n`` whole bars (calendar months for ``M``)."""
        return int(self.add_array(np.asarray([t_ms], dtype=np.int64), n)[0])

    def add_array(self, t_ms: I64, n: int = 1) -> I64:
        """Vectorized `add` for bucket-aligned open times."""
        t = np.asarray(t_ms, dtype=np.int64)
        if self.is_monthly:
            months = t.astype("datetime64[ms]").astype("datetime64[M]") + n * self.count
            out: I64 = months.astype("datetime64[ms]").astype(np.int64)
            return out
        shifted: I64 = t + n * self.ms
        return shifted

    def close_time(self, open_ms: int) -> int:
        """The instant the bar opened at ``open_ms`` closes (exclusive end), in ms."""
        return self.add(open_ms, 1)

    def close_time_array(self, open_ms: I64) -> I64:
        """Vectorized `close_time`."""
        return self.add_array(open_ms, 1)

    def bars_between(self, first_open_ms: int, last_open_ms: int) -> int:
        """Number of bar steps from one open time to a later one (0 when equal)."""
        if self.is_monthly:
            a = np.datetime64(first_open_ms, "ms").astype("datetime64[M]").astype(np.int64)
            b = np.datetime64(last_open_ms, "ms").astype("datetime64[M]").astype(np.int64)
            return int((b - a) // self.count)
        return (last_open_ms - first_open_ms) // self.ms

    def divides(self, higher: Timeframe) -> bool:
        """True when whole bars of this timeframe tile every bar of ``higher`` exactly."""
        if self.is_monthly:
            return higher.is_monthly and higher.count % self.count == 0
        if higher.is_monthly:
            return DAY_MS % self.ms == 0
        # weeks open on Monday, four days after the epoch: the offset must be whole bars too
        if higher.unit == "w" and _WEEK_OFFSET_MS % self.ms != 0:
            return False
        return higher.ms % self.ms == 0


def parse_timeframe(value: str | Timeframe) -> Timeframe:
    """Parse a timeframe name; see `Timeframe.parse`."""
    return Timeframe.parse(value)


@lru_cache(maxsize=4096)  # pure, and the same bar times recur from run to run
def iso_ms(t_ms: int) -> str:
    """ISO 8601 UTC text with milliseconds, e.g. ``2025-12-06T10:30:00.000Z``."""
    y, mo, d, h, mi, s = time.gmtime(t_ms // 1000)[:6]
    return f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}.{t_ms % 1000:03d}Z"


def checked_timeframe(name: str) -> str:
    """``name`` unchanged when it names a timeframe; else `ValueError` with the reason, the
    error pydantic validators raise (the one check behind every ``timeframe`` field)."""
    try:
        Timeframe.parse(name)
    except InvalidTimeframeError as exc:
        raise ValueError(str(exc)) from None
    return name
