"""A circuit breaker per agent service (RELIABILITY C2, C9; Envoy, resilience4j).

Closed: every call goes through. After ``failures`` consecutive failed calls it opens: calls
are refused at once (the step fails with reason ``circuit_open``, no request is sent) for
``open_s`` seconds. Then it is half open: up to ``probes`` probe calls go through, one at a
time; when ``probes`` of them have succeeded the breaker closes, and any failed probe opens it
again for another ``open_s``. A failed call is one
where the service gave no well-formed answer (refused, timeout, protocol error, 5xx,
non-JSON, invalid values); an agent's own answer, even ``insufficient_data``, is a success.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

from conclave.settings import BreakerSettings

BreakerState = Literal["closed", "open", "half_open"]

#: Defaults from RELIABILITY.md: open after 5 consecutive failures, stay open 30 s, 1 probe.
FAILURES = 5
OPEN_S = 30.0
PROBES = 1


class CircuitBreaker:
    """Counts consecutive failures of one service and refuses calls while open."""

    def __init__(
        self,
        *,
        failures: int = FAILURES,
        open_s: float = OPEN_S,
        probes: int = PROBES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1 or open_s <= 0 or probes < 1:
            raise ValueError("failures and probes must be at least 1 and open_s above 0")
        self.failures = failures
        self.open_s = open_s
        self.probes = probes
        self._clock = clock
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probe_out = False
        self._probes_ok = 0

    @classmethod
    def from_settings(
        cls, settings: BreakerSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> CircuitBreaker:
        """A breaker with the thresholds of ``settings.agents.breaker``."""
        return cls(
            failures=settings.failures, open_s=settings.open_s, probes=settings.probes, clock=clock
        )

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at < self.open_s:
            return "open"
        return "half_open"

    def retry_in_s(self) -> float:
        """Seconds until the next probe may go (0 when closed or half open)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self.open_s - (self._clock() - self._opened_at))

    def snapshot(self) -> dict[str, Any]:
        """State, consecutive failures and seconds to the next probe (for ``GET /agents``)."""
        return {
            "state": self.state,
            "consecutiveFailures": self._consecutive,
            "failureThreshold": self.failures,
            "openS": self.open_s,
            "probes": self.probes,
            "nextProbeInS": round(self.retry_in_s(), 3),
        }

    def allow(self) -> bool:
        """Whether a call may be sent now; in half open state one probe at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "open" or self._probe_out:
            return False
        self._probe_out = True
        return True

    def record(self, ok: bool) -> None:
        """The outcome of a call that `allow` let through."""
        probing, self._probe_out = self._probe_out, False
        if ok:
            self._consecutive = 0
            if probing:
                self._probes_ok += 1
            if not probing or self._probes_ok >= self.probes:
                self._opened_at, self._probes_ok = None, 0
        else:
            self._consecutive += 1
            if probing or self._consecutive >= self.failures:
                self._opened_at, self._probes_ok = self._clock(), 0
