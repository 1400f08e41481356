"""Stub-BX's request-weight rules: Binance's per-IP weight limit, 429s and 418 bans.

Binance counts the weight of every request an IP sends in fixed one-minute windows of its
clock, reports the window's total in ``X-MBX-USED-WEIGHT-1M``, answers a request that would
take the total past the limit with 429, code -1003 and a ``Retry-After`` (the seconds left
in the window), and bans an IP that keeps sending inside that pause with 418 and a
``Retry-After`` of the ban, from 2 minutes, longer for each repeat, up to 3 days
(``rest-api_http-codes_and_limits_excerpt.md`` of ../shared/data).

`WeightRules` says how strict Stub-BX is (by default: count and report, never refuse, as
it always did); `WeightBook` keeps the counts and gives the verdicts. Every request is
counted as received, refused ones included, so a client that keeps pushing sees its total
rise past the limit.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

#: Binance's longest ban, seconds.
MAX_BAN_S = 3 * 86_400.0


@dataclass(frozen=True)
class WeightRules:
    """How Stub-BX enforces weight: ``limit`` per ``window_s`` (None: never refuse).

    ``ban_after`` requests arriving inside a running 429 pause earn a 418 ban of ``ban_s``
    seconds, doubled for each further ban (at most `MAX_BAN_S`).
    """

    limit: int | None = None
    window_s: float = 60.0
    ban_after: int = 2
    ban_s: float = 120.0


Refusal = tuple[int, bytes, dict[str, str]]


@dataclass
class WeightBook:
    """Weight counted per window and the 429/418 state; the caller holds the stub's lock."""

    rules: WeightRules = field(default_factory=WeightRules)
    by_window: dict[int, int] = field(default_factory=dict)
    violations: int = 0
    bans: int = 0
    paused_until: float = -math.inf
    banned_until: float = -math.inf

    def window(self, now: float) -> int:
        """Index of the window holding ``now`` (stub clock, seconds)."""
        return int(now // self.rules.window_s)

    def used(self, now: float) -> int:
        """Weight counted so far in the window holding ``now``."""
        return self.by_window.get(self.window(now), 0)

    def add(self, now: float, weight: int) -> None:
        """Count one received request's weight."""
        key = self.window(now)
        self.by_window[key] = self.by_window.get(key, 0) + weight

    def clear(self) -> None:
        """Forget every count, pause and ban."""
        self.by_window.clear()
        self.violations = self.bans = 0
        self.paused_until = self.banned_until = -math.inf

    def verdict(self, now: float, weight: int, extra: int = 0) -> Refusal | None:
        """The 429 or 418 answer for a request of ``weight`` at ``now``, or None to serve it.

        ``extra`` is weight other clients of the IP spent this window (``extra_weight``).
        """
        limit = self.rules.limit
        if limit is None:
            return None
        if now < self.banned_until:
            return _refusal(418, self.banned_until - now, "banned")
        if now < self.paused_until:
            self.violations += 1
            if self.violations >= self.rules.ban_after:
                self.bans += 1
                self.violations = 0
                ban_s = min(MAX_BAN_S, self.rules.ban_s * 2.0 ** (self.bans - 1))
                self.banned_until = now + ban_s
                return _refusal(418, ban_s, "banned")
        if self.used(now) + extra + weight > limit:
            window_end = (self.window(now) + 1) * self.rules.window_s
            self.paused_until = max(self.paused_until, window_end)
            return _refusal(429, window_end - now, f"limit {limit}")
        return None


def _refusal(status: int, retry_after_s: float, what: str) -> Refusal:
    if status == 418:
        msg = f"Way too much request weight used; IP {what} until the Retry-After."
        body = {"code": -1003, "msg": msg}
    else:
        body = {
            "code": -1003,
            "msg": f"Too much request weight used; current {what} request weight per window.",
        }
    headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))}
    return status, json.dumps(body).encode(), headers
