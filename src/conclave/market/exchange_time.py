"""Exchange time: the local wall clock plus a measured offset to the exchange's clock.

A bar is closed when the exchange's clock says so, not ours (RELIABILITY.md A8).
`ExchangeClock` keeps ``offset = exchange - local`` from samples of the exchange's server
time: a request sent at local ``t0`` and answered at ``t1`` with server time ``s`` gives
``s - (t0 + t1) / 2``, wrong by at most half the round trip, so a sample whose round trip
exceeds ``max_rtt_ms`` is ignored. The offset is re-measured once it is ``refresh_s`` old, on
demand (`ExchangeClock.sync`, awaited before a run and by the gateway); in between,
`ExchangeClock.now_ms` applies the last offset without any I/O.

An offset belongs to the clock it was measured against, so for closed-candle decisions
`ExchangeClock.closed_by_ms` also takes off half the round trip (`margin_ms`): the time the
exchange has surely reached. Samples are shared like the rate limiter's pause latch:
`InProcessOffsets` in one process, `RedisOffsets` across the processes of one host (one key per
host name holding the newest sample, with a PX expiry), so the orchestrator's workers, the
agent services and the scheduler on a host apply one measured offset and one measurement per
interval serves them all; another host, with another clock, measures its own. When
Redis fails the Redis store falls back to in-process with a warning (RELIABILITY.md D1). A
failed or ignored measurement never fails the caller: the last offset stays (none at all:
the local clock) and the next attempt waits `RETRY_S`.

Times are ms UTC on the injectable local clock ``local_ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from conclave.errors import ConclaveError
from conclave.timeframes import iso_ms

__all__ = [
    "ClockSample",
    "ExchangeClock",
    "InProcessOffsets",
    "OffsetStore",
    "RedisOffsets",
    "exchange_clock_of",
    "make_offset_store",
    "wall_clock_ms",
]

log = structlog.get_logger(__name__)

LocalClock = Callable[[], int]
#: After a failed or ignored measurement, seconds before the next attempt.
RETRY_S = 5.0
#: Samples one measurement may take: the first may pay for opening the connection.
ATTEMPTS = 2
#: A shared sample expires from Redis after this many refresh intervals.
KEEP_INTERVALS = 10
#: After a Redis failure, seconds on the in-process store before trying Redis again.
REDIS_RETRY_S = 5.0


def wall_clock_ms() -> int:
    """The local wall clock, ms UTC."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class ClockSample:
    """One measurement: ``offset_ms`` = exchange - local (ms), the request's round trip
    (ms) and when it was taken (local clock, ms UTC)."""

    offset_ms: int
    rtt_ms: float
    measured_at_ms: int

    def encode(self) -> str:
        return f"{self.offset_ms}|{self.rtt_ms!r}|{self.measured_at_ms}"

    @classmethod
    def decode(cls, raw: Any) -> ClockSample | None:
        """The sample ``encode`` wrote, or None for anything else."""
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        parts = text.split("|")
        try:
            offset, rtt, at = int(parts[0]), float(parts[1]), int(parts[2])
        except (IndexError, ValueError):
            return None
        return cls(offset, rtt, at) if len(parts) == 3 and math.isfinite(rtt) else None


#: Takes one sample of the exchange's clock; raises a `ConclaveError` when it cannot.
Probe = Callable[[], Awaitable[ClockSample]]


class OffsetStore(Protocol):
    """Where the newest sample lives (this process, or Redis for the fleet)."""

    async def get(self) -> ClockSample | None:
        """The newest sample stored, if any."""

    async def put(self, sample: ClockSample, ttl_s: float) -> None:
        """Store ``sample`` for ``ttl_s`` seconds unless a newer one is stored."""

    async def aclose(self) -> None:
        """Release connections."""


class InProcessOffsets:
    """The sample of this process only; also the fallback when Redis is unavailable."""

    def __init__(self) -> None:
        self._sample: ClockSample | None = None

    async def get(self) -> ClockSample | None:
        return self._sample

    async def put(self, sample: ClockSample, ttl_s: float) -> None:
        if self._sample is None or self._sample.measured_at_ms < sample.measured_at_ms:
            self._sample = sample

    async def aclose(self) -> None:
        return None


_PUT_NEWER = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local at = tonumber(string.match(cur, '|([^|]+)$'))
  if at and at >= tonumber(ARGV[2]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"""


class RedisOffsets:
    """The newest sample in Redis, shared by every replica; in-process while Redis fails."""

    def __init__(
        self,
        client: Any,
        *,
        key_prefix: str,
        exchange: str = "binance",
        host: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._r = client
        # an offset is exchange minus THIS host's clock: processes on one host share it,
        # another host (another clock) measures its own
        self.key = f"{key_prefix}:exchange_time:{exchange}:{host or socket.gethostname()}"
        self._clock = clock
        self._local = InProcessOffsets()
        self._down_until = -math.inf

    def _failed(self, exc: Exception) -> None:
        from redis.exceptions import RedisError

        if not isinstance(exc, RedisError | OSError | TimeoutError):
            raise exc
        self._down_until = self._clock() + REDIS_RETRY_S
        log.warning("exchange_time_redis_unavailable", error=type(exc).__name__,
                    fallback="in_process", retry_in_s=REDIS_RETRY_S)  # fmt: skip

    async def get(self) -> ClockSample | None:
        local = await self._local.get()
        if self._clock() < self._down_until:
            return local
        try:
            shared = ClockSample.decode(await self._r.get(self.key))
        except Exception as exc:
            self._failed(exc)
            return local
        if shared is None or (local is not None and local.measured_at_ms >= shared.measured_at_ms):
            return local
        return shared

    async def put(self, sample: ClockSample, ttl_s: float) -> None:
        await self._local.put(sample, ttl_s)
        if self._clock() < self._down_until:
            return
        px = max(1, math.ceil(ttl_s * 1000))
        try:
            await self._r.eval(_PUT_NEWER, 1, self.key, sample.encode(), sample.measured_at_ms, px)
        except Exception as exc:
            self._failed(exc)

    async def aclose(self) -> None:
        try:
            await self._r.aclose()
        except Exception as exc:
            self._failed(exc)


def make_offset_store(
    redis_url: str | None,
    *,
    key_prefix: str = "conclave:v1",
    redis_timeout_s: float = 0.25,
    exchange: str = "binance",
) -> OffsetStore:
    """The offset store: shared through Redis when a URL is given, else in process."""
    if not redis_url:
        return InProcessOffsets()
    import redis.asyncio as aredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    # no client-side retries: a failed call falls back to the in-process store at once
    client = aredis.Redis.from_url(
        redis_url,
        socket_timeout=redis_timeout_s,
        socket_connect_timeout=redis_timeout_s,
        retry=Retry(NoBackoff(), 0),
    )
    return RedisOffsets(client, key_prefix=key_prefix, exchange=exchange)


class ExchangeClock:
    """The exchange's time: ``local_ms()`` plus the newest measured offset (module docstring).

    ``probe`` takes one sample; ``store`` shares samples; ``refresh_s`` is how old a sample
    may grow before it is measured again; ``max_rtt_ms`` the slowest round trip trusted;
    ``warn_ms`` the offset above which `skew_warning` is set (``/health`` shows ``warn``).
    """

    def __init__(
        self,
        probe: Probe,
        store: OffsetStore,
        *,
        local_ms: LocalClock = wall_clock_ms,
        refresh_s: float = 60.0,
        max_rtt_ms: float = 1000.0,
        warn_ms: float = 1000.0,
        source: str = "binance",
    ) -> None:
        # the metric (prometheus_client) loads with the first live source, not with the market
        from conclave.observability.metrics import EXCHANGE_CLOCK_SKEW

        self.local_ms = local_ms
        self._skew = EXCHANGE_CLOCK_SKEW.labels(source)
        self.refresh_s = refresh_s
        self.max_rtt_ms = max_rtt_ms
        self.warn_ms = warn_ms
        self._probe = probe
        self._store = store
        self._sample: ClockSample | None = None
        self._retry_at_ms = -math.inf
        self._error: str | None = None
        self._lock = asyncio.Lock()

    @property
    def sample(self) -> ClockSample | None:
        """The sample in use (None until one was measured or read from the store)."""
        return self._sample

    @property
    def offset_ms(self) -> int:
        """Exchange minus local time in ms (0 while nothing was measured)."""
        return 0 if self._sample is None else self._sample.offset_ms

    @property
    def margin_ms(self) -> int:
        """Half the sample's round trip, rounded up: how far the offset may be off either way
        (0 while nothing was measured)."""
        return 0 if self._sample is None else math.ceil(self._sample.rtt_ms / 2)

    def closed_by_ms(self, local_ms: int) -> int:
        """The latest time (ms UTC) the exchange has surely reached at ``local_ms``: its time
        less `margin_ms`, so a bar is never taken as closed before the exchange closed it."""
        return self.to_exchange_ms(local_ms) - self.margin_ms

    @property
    def skew_warning(self) -> bool:
        """True when the measured offset exceeds ``warn_ms`` either way."""
        return abs(self.offset_ms) > self.warn_ms

    def to_exchange_ms(self, local_ms: int) -> int:
        """The exchange's time (ms UTC) at the local instant ``local_ms``."""
        return local_ms + self.offset_ms

    def now_ms(self) -> int:
        """The exchange's time now (ms UTC), with the last offset (no I/O)."""
        return self.to_exchange_ms(self.local_ms())

    async def exchange_now_ms(self) -> int:
        """The exchange's time now (ms UTC), after `sync`."""
        await self.sync()
        return self.now_ms()

    def _fresh(self, sample: ClockSample | None) -> bool:
        if sample is None:
            return False
        return 0 <= self.local_ms() - sample.measured_at_ms < self.refresh_s * 1000

    async def sync(self) -> ClockSample | None:
        """Bring the offset up to date when it is ``refresh_s`` old; return the sample used.

        Reads the shared store first and measures only when it holds no fresh sample. Never
        raises for an exchange or Redis failure. While another caller measures, a caller
        that already has an offset uses it instead of waiting.
        """
        if self._fresh(self._sample) or self.local_ms() < self._retry_at_ms:
            return self._sample
        if self._lock.locked() and self._sample is not None:
            return self._sample
        async with self._lock:  # whoever waited here re-checks what the leader found
            if not self._fresh(self._sample) and self.local_ms() >= self._retry_at_ms:
                await self._refresh()
            self._skew.set(self.offset_ms / 1000.0)
        return self._sample

    async def _refresh(self) -> None:
        shared = await self._store.get()
        if shared is not None and (
            self._sample is None or shared.measured_at_ms > self._sample.measured_at_ms
        ):
            self._sample = shared
        if self._fresh(self._sample):
            return
        sample = await self._measure()
        if sample is None:
            self._retry_at_ms = self.local_ms() + RETRY_S * 1000
            return
        self._sample, self._error = sample, None
        await self._store.put(sample, self.refresh_s * KEEP_INTERVALS)
        log.info("exchange_clock_measured", offset_ms=sample.offset_ms,
                 rtt_ms=round(sample.rtt_ms, 1))  # fmt: skip

    async def _measure(self) -> ClockSample | None:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                sample = await self._probe()
            except ConclaveError as exc:
                self._error = f"{type(exc).__name__}: {exc}"[:200]
                log.warning("exchange_clock_unavailable", error=self._error)
                return None
            if sample.rtt_ms <= self.max_rtt_ms:
                return sample
            self._error = f"round trip {sample.rtt_ms:.0f} ms over {self.max_rtt_ms:.0f} ms"
            log.info("exchange_clock_sample_ignored", attempt=attempt,
                     rtt_ms=round(sample.rtt_ms, 1), max_rtt_ms=self.max_rtt_ms)  # fmt: skip
        return None

    async def health(self, *, timeout_s: float) -> dict[str, Any]:
        """The offset for ``/health``: skew (ms), round trip (ms), when measured (local time).

        Syncs first, waiting at most ``timeout_s`` seconds (then reports the last sample).
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self.sync()
        s = self._sample
        out: dict[str, Any] = {
            "clockSkewMs": None if s is None else s.offset_ms,
            "clockRttMs": None if s is None else round(s.rtt_ms, 3),
            "clockMeasuredAt": None if s is None else iso_ms(s.measured_at_ms),
            "clockSkewWarnMs": self.warn_ms,
        }
        return out | ({"clockError": self._error} if self._error else {})

    async def aclose(self) -> None:
        """Release the store's connections."""
        await self._store.aclose()


def exchange_clock_of(source: object) -> ExchangeClock | None:
    """The exchange clock a live source exposes as ``exchange_clock``; None for the others."""
    clock = getattr(source, "exchange_clock", None)
    return clock if isinstance(clock, ExchangeClock) else None
