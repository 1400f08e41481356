"""Scheduled jobs and slot arithmetic: which closed bar a job runs on at a given instant.

A job is one (account, symbol, timeframe); its id is derived from them (``BTCUSDT@1h``, or
``acct-1@BTCUSDT@1h`` with an account), so the same job configured twice is one job.

A *slot* is one bar of the job's timeframe, named by its open time. At wall time ``now``
(ms UTC) and offset ``offset`` the due slot is the newest bar that closed at least
``offset`` ago: ``open = floor(now - offset) - 1 bar``, ``close = floor(now - offset)``.
A run for that slot is as of its close, so the still-open bar is never part of it (H4).
The next run fires at the next bar close plus the offset.
"""

from __future__ import annotations

from dataclasses import dataclass

from conclave.errors import InvalidRequestError
from conclave.timeframes import Timeframe

#: Separates account, symbol and timeframe in a job id (no part may contain it).
ID_SEPARATOR = "@"


@dataclass(frozen=True, slots=True)
class Job:
    """One scheduled (account, symbol, timeframe); ``account_id`` None runs without one."""

    account_id: str | None
    symbol: str
    timeframe: str

    def __post_init__(self) -> None:
        Timeframe.parse(self.timeframe)  # raises InvalidTimeframeError naming it
        for field, part in (("account", self.account_id or ""), ("symbol", self.symbol)):
            if ID_SEPARATOR in part:
                raise InvalidRequestError(f"may not contain {ID_SEPARATOR!r}", field=field)

    @property
    def id(self) -> str:
        """``[account@]SYMBOL@tf``: stable, unique per (account, symbol, timeframe)."""
        parts = (self.account_id, self.symbol, self.timeframe)
        return ID_SEPARATOR.join(p for p in parts if p)

    @property
    def tf(self) -> Timeframe:
        """The job's timeframe."""
        return Timeframe.parse(self.timeframe)

    @classmethod
    def from_id(cls, job_id: str) -> Job:
        """The job a `Job.id` names; raise `InvalidRequestError` for a malformed id."""
        parts = job_id.split(ID_SEPARATOR)
        if len(parts) == 2:
            return cls(None, parts[0], parts[1])
        if len(parts) == 3:
            return cls(parts[0], parts[1], parts[2])
        raise InvalidRequestError(f"not a job id: {job_id[:80]!r}", field="id")


@dataclass(frozen=True, slots=True)
class Slot:
    """A bar a job runs on: its open and close (ms UTC) and how many slots it stands for.

    ``missed`` counts the earlier slots that never ran and that this one run replaces (a
    catch-up coalesces them, H3); 0 for a run on time.
    """

    open_ms: int
    close_ms: int
    missed: int = 0


def due_slot(tf: Timeframe, now_ms: int, offset_ms: int) -> Slot:
    """The newest bar of ``tf`` closed at least ``offset_ms`` before ``now_ms``."""
    close = tf.floor(now_ms - offset_ms)
    return Slot(tf.add(close, -1), close)


def next_fire_ms(tf: Timeframe, now_ms: int, offset_ms: int) -> int:
    """The first instant after ``now_ms`` at which a new slot of ``tf`` becomes due."""
    return tf.add(tf.floor(now_ms - offset_ms), 1) + offset_ms


def missed_between(tf: Timeframe, last_open_ms: int | None, due_open_ms: int) -> int:
    """Slots strictly between the last recorded slot and the due one (0 if none recorded)."""
    if last_open_ms is None or last_open_ms >= due_open_ms:
        return 0
    return max(0, tf.bars_between(last_open_ms, due_open_ms) - 1)
