"""Where `WeightLimiter` keeps its counts: in process, or in Redis for a fleet of replicas.

`InProcessBackend` counts for one process. `RedisBackend` shares the counts (INCRBY on a key
per one-minute window, a latch key with a PX expiry); when Redis is down or slow it logs a
warning and falls back to in-process counting, so a fetch never fails because Redis did
(RELIABILITY.md D1), and tries Redis again after `REDIS_RETRY_S`. It keeps the fleet's
newest totals in the fallback as it goes, so a replica that falls back mid-window carries on
from what the fleet had spent, not from zero (A4: a 250 ms Redis stall on a loaded machine
let one replica spend the whole budget again), and adds what it reserved meanwhile to the
shared count once Redis answers again.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog

log = structlog.get_logger(__name__)

Clock = Callable[[], float]
T = TypeVar("T")

WINDOW_S = 60.0
#: How long a streak of rate-limit answers is remembered.
STRIKE_MEMORY_S = 600.0
#: After a Redis failure, stay on the in-process backend this long before trying Redis again.
REDIS_RETRY_S = 5.0


@dataclass(frozen=True, slots=True)
class Pause:
    """A pause latch: nobody calls the exchange before ``until_s`` (limiter clock, seconds)."""

    until_s: float
    banned: bool


class LimiterBackend(Protocol):
    """Where the weight counts, the pause latch and the strike count live."""

    async def add_weight(self, window: int, weight: int) -> int:
        """Add ``weight`` (may be negative) to ``window``; return the window's new total."""

    async def raise_weight(self, window: int, used: int) -> None:
        """Raise ``window``'s total to ``used`` if it is lower."""

    async def set_pause(self, pause: Pause, ttl_s: float) -> None:
        """Set the latch unless a longer one is already set."""

    async def get_pause(self) -> Pause | None:
        """Return the latch, if any (it may already have passed)."""

    async def add_strike(self) -> int:
        """Count one more rate-limit answer in the current streak; return the streak length."""

    async def clear_strikes(self) -> None:
        """End the streak (after a successful answer)."""

    async def aclose(self) -> None:
        """Release connections."""

    @property
    def degraded(self) -> bool:
        """True while the counts are this process's alone though they should be shared."""


class InProcessBackend:
    """Counts in this process only; also the fallback when Redis is unavailable."""

    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock
        self._weights: dict[int, int] = {}
        self._pause: Pause | None = None
        self._strikes = 0
        self._strike_at = -math.inf

    @property
    def degraded(self) -> bool:
        return False

    def _prune(self, window: int) -> None:
        for old in [w for w in self._weights if w < window - 1]:
            del self._weights[old]

    async def add_weight(self, window: int, weight: int) -> int:
        self._prune(window)
        total = self._weights.get(window, 0) + weight
        self._weights[window] = total
        return total

    async def raise_weight(self, window: int, used: int) -> None:
        self._prune(window)
        self._weights[window] = max(self._weights.get(window, 0), used)

    async def set_pause(self, pause: Pause, ttl_s: float) -> None:
        if self._pause is None or self._pause.until_s < pause.until_s:
            self._pause = pause

    async def get_pause(self) -> Pause | None:
        return self._pause

    async def add_strike(self) -> int:
        now = self._clock()
        if now - self._strike_at > STRIKE_MEMORY_S:
            self._strikes = 0
        self._strikes += 1
        self._strike_at = now
        return self._strikes

    async def clear_strikes(self) -> None:
        self._strikes = 0

    async def aclose(self) -> None:
        return None


_SET_MAX = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
return 1
"""
_SET_PAUSE = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local u = tonumber(string.match(cur, '^([^|]+)'))
  if u and u >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 'PX', ARGV[3])
return 1
"""


class RedisBackend:
    """Counts in Redis, shared by every replica; falls back to `InProcessBackend` on errors."""

    def __init__(
        self,
        client: Any,
        *,
        key_prefix: str,
        clock: Clock = time.time,
        fallback: InProcessBackend | None = None,
    ) -> None:
        self._r = client
        self._prefix = f"{key_prefix}:ratelimit:binance"
        self._clock = clock
        self._local = fallback or InProcessBackend(clock)
        self._down_until = -math.inf
        #: weight reserved in process while Redis was unreachable, by window: added to the
        #: shared count when Redis answers again, so the fleet sees it
        self._pending: dict[int, int] = {}

    @property
    def degraded(self) -> bool:
        return self._clock() < self._down_until

    async def _try(self, op: Callable[[], Awaitable[T]], local: Callable[[], Awaitable[T]]) -> T:
        if not self.degraded:
            try:
                return await op()
            except Exception as exc:
                if not _is_redis_failure(exc):
                    raise
                self._down_until = self._clock() + REDIS_RETRY_S
                log.warning(
                    "ratelimit_redis_unavailable",
                    error=type(exc).__name__,
                    fallback="in_process",
                    retry_in_s=REDIS_RETRY_S,
                )
        return await local()

    async def add_weight(self, window: int, weight: int) -> int:
        key = f"{self._prefix}:w:{window}"
        for old in [w for w in self._pending if w < window - 1]:
            del self._pending[old]
        pending = self._pending.pop(window, 0)

        async def op() -> int:
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.incrby(key, weight + pending)
                pipe.expire(key, int(2 * WINDOW_S))
                total, _ = await pipe.execute()
            await self._local.raise_weight(window, int(total))  # the fleet's total, kept
            return int(total)

        async def local() -> int:
            self._pending[window] = pending + weight
            return await self._local.add_weight(window, weight)

        return await self._try(op, local)

    async def raise_weight(self, window: int, used: int) -> None:
        key = f"{self._prefix}:w:{window}"
        await self._local.raise_weight(window, used)

        async def op() -> None:
            await self._r.eval(_SET_MAX, 1, key, used, int(2 * WINDOW_S))

        await self._try(op, _noop)

    async def set_pause(self, pause: Pause, ttl_s: float) -> None:
        await self._local.set_pause(pause, ttl_s)
        px = max(1, math.ceil(ttl_s * 1000))

        async def op() -> None:
            await self._r.eval(
                _SET_PAUSE, 1, f"{self._prefix}:pause", repr(pause.until_s), int(pause.banned), px
            )

        await self._try(op, _noop)

    async def get_pause(self) -> Pause | None:
        local = await self._local.get_pause()

        async def op() -> Pause | None:
            raw = await self._r.get(f"{self._prefix}:pause")
            shared = _parse_pause(raw)
            if shared is None or (local is not None and local.until_s >= shared.until_s):
                return local
            return shared

        return await self._try(op, lambda: self._local.get_pause())

    async def add_strike(self) -> int:
        key = f"{self._prefix}:strikes"

        async def op() -> int:
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, int(STRIKE_MEMORY_S))
                n, _ = await pipe.execute()
            return int(n)

        return await self._try(op, self._local.add_strike)

    async def clear_strikes(self) -> None:
        await self._local.clear_strikes()

        async def op() -> None:
            await self._r.delete(f"{self._prefix}:strikes")

        await self._try(op, _noop)

    async def aclose(self) -> None:
        try:
            await self._r.aclose()
        except Exception as exc:
            if not _is_redis_failure(exc):
                raise


async def _noop() -> None:
    return None


def _is_redis_failure(exc: BaseException) -> bool:
    from redis.exceptions import RedisError

    return isinstance(exc, RedisError | OSError | asyncio.TimeoutError)


def _parse_pause(raw: Any) -> Pause | None:
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    until, _, banned = text.partition("|")
    try:
        return Pause(until_s=float(until), banned=banned == "1")
    except ValueError:
        return None
