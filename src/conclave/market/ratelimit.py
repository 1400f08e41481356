"""A weight-aware rate limiter for one exchange budget, shared across processes through Redis.

Binance counts request weight per IP in fixed one-minute windows and reports the running
total in ``X-MBX-USED-WEIGHT-1M``. `WeightLimiter` reserves weight in the current window
before each request (waiting for the next window when the budget is spent), raises its count
to what the server reports, and holds a pause latch after a 429 or 418: while it is set no
caller sends anything. Each consecutive rate-limit answer doubles the pause (never below the
server's ``Retry-After``), so a server that keeps answering 429 is never pushed into a ban.

Two backends keep the counts: `InProcessBackend` for one process, `RedisBackend` for a fleet
(INCRBY on a key per window, a latch key with a PX expiry). When Redis is down or slow the
Redis backend logs a warning and falls back to in-process counting; a fetch never fails
because Redis did (RELIABILITY.md D1).

Times are seconds from an injectable clock (``time.time`` by default: windows must line up
with the exchange's minutes and, through Redis, with the other replicas').
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog

from conclave.errors import IPBannedError, RateLimitedError
from conclave.settings import BinanceSettings
from conclave.timeframes import iso_ms

log = structlog.get_logger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")

WINDOW_S = 60.0
#: A streak of rate-limit answers doubles the pause up to this many seconds.
MAX_ESCALATED_PAUSE_S = 60.0
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


class InProcessBackend:
    """Counts in this process only; also the fallback when Redis is unavailable."""

    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock
        self._weights: dict[int, int] = {}
        self._pause: Pause | None = None
        self._strikes = 0
        self._strike_at = -math.inf

    async def add_weight(self, window: int, weight: int) -> int:
        for old in [w for w in self._weights if w < window - 1]:
            del self._weights[old]
        total = self._weights.get(window, 0) + weight
        self._weights[window] = total
        return total

    async def raise_weight(self, window: int, used: int) -> None:
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

        async def op() -> int:
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.incrby(key, weight)
                pipe.expire(key, int(2 * WINDOW_S))
                total, _ = await pipe.execute()
            return int(total)

        return await self._try(op, lambda: self._local.add_weight(window, weight))

    async def raise_weight(self, window: int, used: int) -> None:
        key = f"{self._prefix}:w:{window}"

        async def op() -> None:
            await self._r.eval(_SET_MAX, 1, key, used, int(2 * WINDOW_S))

        await self._try(op, lambda: self._local.raise_weight(window, used))

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


class WeightLimiter:
    """Keep one exchange budget: weight per one-minute window, and a pause latch on 429/418."""

    def __init__(
        self,
        backend: LimiterBackend,
        *,
        budget: int,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        window_s: float = WINDOW_S,
    ) -> None:
        if budget <= 0:
            raise ValueError("budget must be positive")
        self.backend = backend
        self.budget = budget
        self._clock = clock
        self._sleep = sleep
        self._window_s = window_s

    def _window(self, now: float) -> int:
        return int(now // self._window_s)

    async def acquire(self, weight: int, *, max_wait_s: float = 0.0) -> None:
        """Reserve ``weight`` in the current window, waiting at most ``max_wait_s`` seconds.

        Raise `IPBannedError` / `RateLimitedError` at once when the latch (or the spent
        budget) would hold the caller longer than ``max_wait_s``.
        """
        if not 0 < weight <= self.budget:
            raise ValueError(f"weight must be from 1 to {self.budget}, got {weight}")
        give_up_at = self._clock() + max(0.0, max_wait_s)
        while True:
            now = self._clock()
            pause = await self.backend.get_pause()
            if pause is not None and pause.until_s > now:
                left = pause.until_s - now
                if pause.until_s > give_up_at:
                    raise _pause_error(pause, left)
                await self._sleep(left)
                continue
            window = self._window(now)
            if await self.backend.add_weight(window, weight) <= self.budget:
                return
            await self.backend.add_weight(window, -weight)
            next_window_s = (window + 1) * self._window_s
            if next_window_s > give_up_at:
                raise RateLimitedError(
                    f"Binance weight budget of {self.budget}/min is spent for this minute",
                    retry_after_s=next_window_s - now,
                    reason="weight_budget",
                )
            await self._sleep(next_window_s - now)

    async def observe(self, used_weight_1m: int) -> None:
        """Raise this window's count to the weight the server reports (``X-MBX-USED-WEIGHT-1M``)."""
        if used_weight_1m > 0:
            await self.backend.raise_weight(self._window(self._clock()), used_weight_1m)

    async def used(self) -> int:
        """Weight counted in the current window."""
        return await self.backend.add_weight(self._window(self._clock()), 0)

    async def pause(self, retry_after_s: float, *, banned: bool) -> float:
        """Stop every caller for at least ``retry_after_s`` s; return the pause set, in s.

        Consecutive rate-limit answers double the pause (up to `MAX_ESCALATED_PAUSE_S`, never
        below ``retry_after_s``).
        """
        strikes = await self.backend.add_strike()
        retry_after_s = max(0.0, retry_after_s)
        escalated = min(MAX_ESCALATED_PAUSE_S, retry_after_s * 2.0 ** (strikes - 1))
        pause_s = max(retry_after_s, escalated)
        until = self._clock() + pause_s
        await self.backend.set_pause(Pause(until_s=until, banned=banned), pause_s)
        event = "exchange_banned" if banned else "exchange_paused"
        log.warning(event, until=iso_ms(int(until * 1e3)), pause_s=pause_s, strikes=strikes)
        return pause_s

    async def succeeded(self) -> None:
        """Record a successful answer: the next rate-limit answer starts a new streak."""
        await self.backend.clear_strikes()

    async def paused_until(self) -> Pause | None:
        """Return the active latch (for health and tests), or None when calls may go out."""
        pause = await self.backend.get_pause()
        return pause if pause is not None and pause.until_s > self._clock() else None

    async def aclose(self) -> None:
        """Release the backend's connections."""
        await self.backend.aclose()


def _pause_error(pause: Pause, left_s: float) -> RateLimitedError:
    if pause.banned:
        return IPBannedError(
            f"Binance banned this IP (418); no calls for another {left_s:.1f} s",
            retry_after_s=left_s,
        )
    return RateLimitedError(
        f"Binance rate limit (429); every caller pauses for another {left_s:.1f} s",
        retry_after_s=left_s,
    )


def make_limiter(
    settings: BinanceSettings,
    redis_url: str | None,
    *,
    key_prefix: str = "conclave:v1",
    redis_timeout_s: float = 0.25,
    clock: Clock = time.time,
    sleep: Sleep = asyncio.sleep,
) -> WeightLimiter:
    """Build the limiter for ``settings.weight_budget``: shared via Redis when a URL is given."""
    backend: LimiterBackend
    if redis_url:
        import redis.asyncio as aredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # no client-side retries: a failed call falls back to in-process counting at once
        client = aredis.Redis.from_url(
            redis_url,
            socket_timeout=redis_timeout_s,
            socket_connect_timeout=redis_timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        backend = RedisBackend(client, key_prefix=key_prefix, clock=clock)
    else:
        backend = InProcessBackend(clock)
    return WeightLimiter(backend, budget=settings.weight_budget, clock=clock, sleep=sleep)
