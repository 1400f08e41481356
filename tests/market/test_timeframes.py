"""Timeframe parsing and calendar arithmetic on open times (ms UTC)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from conclave.errors import InvalidTimeframeError
from conclave.timeframes import BINANCE_INTERVALS, DAY_MS, HOUR_MS, MINUTE_MS, Timeframe


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp() * 1000)


def test_parse_knows_every_binance_interval() -> None:
    """Every interval Binance accepts parses, and its name survives the round trip."""
    for name in BINANCE_INTERVALS:
        assert Timeframe.parse(name).name == name
        assert str(Timeframe.parse(name)) == name


def test_parse_is_case_sensitive_1m_is_a_minute_1M_a_month() -> None:  # noqa: N802
    """``1m`` is one minute and ``1M`` one calendar month; they never mix up."""
    minute, month = Timeframe.parse("1m"), Timeframe.parse("1M")
    assert minute.ms == MINUTE_MS
    assert not minute.is_monthly
    assert month.is_monthly
    assert minute != month


@pytest.mark.parametrize("bad", ["1H", "1D", "60m", "", "h", "1 h", "2w", "1y", " 1h"])
def test_parse_refuses_unknown_names(bad: str) -> None:
    """Names outside Binance's list (including other cases) raise InvalidTimeframeError."""
    with pytest.raises(InvalidTimeframeError, match="case-sensitive"):
        Timeframe.parse(bad)


def test_parse_passes_a_timeframe_through() -> None:
    """Parsing a Timeframe returns it unchanged."""
    tf = Timeframe.parse("4h")
    assert Timeframe.parse(tf) is tf


def test_ms_lengths() -> None:
    """Lengths in ms: 1s, 15m, 4h, 3d, 1w; a month is a nominal 30 days."""
    assert Timeframe.parse("1s").ms == 1000
    assert Timeframe.parse("15m").ms == 15 * MINUTE_MS
    assert Timeframe.parse("4h").ms == 4 * HOUR_MS
    assert Timeframe.parse("3d").ms == 3 * DAY_MS
    assert Timeframe.parse("1w").ms == 7 * DAY_MS
    assert Timeframe.parse("1M").ms == 30 * DAY_MS


def test_ordering_follows_length() -> None:
    """Timeframes sort by length."""
    names = ["1d", "1m", "1M", "4h", "1w", "15m"]
    assert [t.name for t in sorted(Timeframe.parse(n) for n in names)] == [
        "1m", "15m", "4h", "1d", "1w", "1M",
    ]  # fmt: skip


def test_floor_hours_and_days_align_to_the_epoch() -> None:
    """4h buckets open at 00, 04, ... UTC and days at midnight UTC."""
    t = ms(2022, 10, 11, 10, 37)
    assert Timeframe.parse("4h").floor(t) == ms(2022, 10, 11, 8)
    assert Timeframe.parse("1d").floor(t) == ms(2022, 10, 11)
    assert Timeframe.parse("1h").floor(ms(2022, 10, 11, 10)) == ms(2022, 10, 11, 10)


def test_floor_weeks_open_on_monday() -> None:
    """Weekly buckets open on Monday 00:00 UTC, as on Binance (the epoch was a Thursday)."""
    week = Timeframe.parse("1w")
    sunday = ms(2022, 10, 16, 23, 59)
    monday = ms(2022, 10, 10)
    assert datetime.fromtimestamp(monday / 1000, UTC).weekday() == 0
    assert week.floor(sunday) == monday
    assert week.floor(monday) == monday
    assert week.floor(ms(2022, 10, 17)) == ms(2022, 10, 17)


def test_floor_months_open_on_the_first() -> None:
    """Monthly buckets open on the first of the month, whatever its length."""
    month = Timeframe.parse("1M")
    assert month.floor(ms(2024, 2, 29, 23)) == ms(2024, 2, 1)
    assert month.floor(ms(2023, 12, 31, 23, 59)) == ms(2023, 12, 1)
    assert month.floor(ms(2024, 3, 1)) == ms(2024, 3, 1)


def test_floor_array_matches_floor() -> None:
    """The vectorized floor agrees with the scalar one for every timeframe."""
    rng = np.random.default_rng(1)
    times = rng.integers(ms(2015, 1, 1), ms(2030, 1, 1), 200, dtype=np.int64)
    for name in BINANCE_INTERVALS:
        tf = Timeframe.parse(name)
        assert tf.floor_array(times).tolist() == [tf.floor(int(t)) for t in times]


def test_add_steps_whole_bars_and_calendar_months() -> None:
    """``add`` moves by whole bars; for 1M by calendar months (31, 29, 30 days...)."""
    month = Timeframe.parse("1M")
    assert month.add(ms(2024, 1, 1)) == ms(2024, 2, 1)
    assert month.add(ms(2024, 2, 1)) == ms(2024, 3, 1)
    assert month.add(ms(2024, 1, 1), 12) == ms(2025, 1, 1)
    assert month.add(ms(2024, 3, 1), -2) == ms(2024, 1, 1)
    assert Timeframe.parse("4h").add(ms(2022, 1, 1), 3) == ms(2022, 1, 1, 12)
    assert Timeframe.parse("1d").close_time(ms(2022, 1, 1)) == ms(2022, 1, 2)
    opens = np.array([ms(2023, 1, 1), ms(2023, 2, 1)], dtype=np.int64)
    assert month.close_time_array(opens).tolist() == [ms(2023, 2, 1), ms(2023, 3, 1)]


def test_bars_between_counts_steps() -> None:
    """Steps between two open times: 0 when equal, calendar months for 1M."""
    assert Timeframe.parse("1h").bars_between(ms(2022, 1, 1), ms(2022, 1, 2)) == 24
    assert Timeframe.parse("1h").bars_between(ms(2022, 1, 1), ms(2022, 1, 1)) == 0
    assert Timeframe.parse("1M").bars_between(ms(2012, 1, 1), ms(2024, 6, 1)) == 149
    assert Timeframe.parse("1w").bars_between(ms(2022, 10, 10), ms(2022, 10, 31)) == 3


@pytest.mark.parametrize(
    ("lower", "higher", "expected"),
    [
        ("1m", "1h", True),
        ("1h", "4h", True),
        ("4h", "1d", True),
        ("1h", "1d", True),
        ("1d", "1w", True),
        ("1d", "1M", True),
        ("4h", "1M", True),
        ("1h", "1w", True),
        ("3m", "1h", True),
        ("1M", "1M", True),
        ("3d", "1w", False),  # three-day bars neither tile a week nor start on Monday
        ("1w", "1M", False),  # weeks straddle month ends
        ("1M", "1d", False),
        ("4h", "6h", False),
        ("8h", "12h", False),
        ("1d", "3d", True),
        ("2h", "6h", True),
    ],
)
def test_divides(lower: str, higher: str, expected: bool) -> None:
    """A lower timeframe divides a higher one when its bars tile every higher bar exactly."""
    assert Timeframe.parse(lower).divides(Timeframe.parse(higher)) is expected
