"""Slot arithmetic: a job runs on the bar that just closed, at its close plus the offset."""

from __future__ import annotations

import pytest

from conclave.errors import InvalidRequestError, InvalidTimeframeError
from conclave.scheduler import Job, due_slot, missed_between, next_fire_ms
from conclave.timeframes import Timeframe
from tests.scheduler.conftest import DAY0

M1, H1, MONTH = Timeframe.parse("1m"), Timeframe.parse("1h"), Timeframe.parse("1M")


def test_the_due_slot_is_the_bar_that_just_closed_once_the_offset_passed() -> None:
    """Before close + offset the previous bar is due; from close + offset on, the new one."""
    close = DAY0 + 5 * 3_600_000
    before = due_slot(H1, close + 999, 1000)
    at = due_slot(H1, close + 1000, 1000)
    assert (before.open_ms, before.close_ms) == (close - 2 * H1.ms, close - H1.ms)
    assert (at.open_ms, at.close_ms) == (close - H1.ms, close)


@pytest.mark.parametrize("tf", ["1m", "5m", "1h", "4h", "1d", "1w", "1M"])
def test_the_due_slot_never_includes_the_open_bar(tf: str) -> None:
    """At any instant the due slot closed at or before now - offset (H4)."""
    t = Timeframe.parse(tf)
    for now in range(DAY0, DAY0 + 40 * 86_400_000, 7_777_777):
        slot = due_slot(t, now, 1000)
        assert slot.close_ms <= now - 1000 < t.close_time(slot.close_ms)
        assert t.close_time(slot.open_ms) == slot.close_ms


def test_the_next_fire_is_the_next_close_plus_the_offset() -> None:
    """Just after a fire, the next one is one bar later; months step by calendar."""
    assert next_fire_ms(M1, DAY0 + 1000, 1000) == DAY0 + 60_000 + 1000
    assert next_fire_ms(M1, DAY0 + 999, 1000) == DAY0 + 1000
    feb = 1_706_745_600_000  # 2024-02-01
    assert next_fire_ms(MONTH, feb + 1000, 1000) == 1_709_251_200_000 + 1000  # 2024-03-01


def test_missed_counts_the_slots_strictly_between() -> None:
    """Nothing recorded or the next slot: 0; three slots later: 2 missed (H3)."""
    assert missed_between(H1, None, DAY0) == 0
    assert missed_between(H1, DAY0 - H1.ms, DAY0) == 0
    assert missed_between(H1, DAY0 - 3 * H1.ms, DAY0) == 2
    assert missed_between(H1, DAY0, DAY0) == 0


def test_a_job_id_names_account_symbol_and_timeframe_and_parses_back() -> None:
    """``acct@SYMBOL@tf`` (account optional) round-trips; bad parts are refused."""
    job = Job("paper-1", "BTCUSDT", "1h")
    assert job.id == "paper-1@BTCUSDT@1h"
    assert Job.from_id(job.id) == job
    assert Job.from_id("ETHUSDT@4h") == Job(None, "ETHUSDT", "4h")
    with pytest.raises(InvalidTimeframeError):
        Job(None, "BTCUSDT", "1H")
    with pytest.raises(InvalidRequestError):
        Job("a@b", "BTCUSDT", "1h")
    with pytest.raises(InvalidRequestError):
        Job.from_id("nope")
