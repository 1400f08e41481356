"""A weight-aware rate limiter for one exchange budget, shared across processes through Redis.

Binance counts request weight per IP in fixed one-minute windows and reports the running
total in ``X-MBX-USED-WEIGHT-1M``. `WeightLimiter` reserves weight in the current window
before each request (waiting for the next window when the budget is spent), raises its count
to what the server reports, and holds a pause latch after a 429 or 418: while it is set no
caller sends anything. Each consecutive rate-limit answer doubles the pause (never below the
server's ``Retry-After``), so a server that keeps answering 429 is never pushed into a ban.

Two backends keep the counts (`conclave.market.ratelimit_backends`): `InProcessBackend` for
one process, `RedisBackend` for a fleet, falling back to in-process counting while Redis is
down (RELIABILITY.md D1); meanwhile a replica spends at most `DEGRADED_SHARE` of the budget.

The limiter exports its state as metrics: the weight the exchange reports used and the
budget, 429 and 418 answers counted, and the end of the current pause or ban.

Times are seconds from an injectable clock (``time.time`` by default: windows must line up
with the exchange's minutes and, through Redis, with the other replicas'). Once `align` ed to
the source's exchange clock, windows are the exchange's minutes (the local clock plus the
measured offset, shared by the replicas). A request reserved in the last `EDGE_S` of a window
may reach the exchange in the next one, and one reserved within the offset's uncertainty after
a window opens may still fall in the previous one: such a reservation counts in both windows,
so the exchange's own count of every window stays within the budget (RELIABILITY A4).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import structlog

from conclave.errors import IPBannedError, RateLimitedError
from conclave.market.ratelimit_backends import (
    WINDOW_S,
    InProcessBackend,
    LimiterBackend,
    Pause,
    RedisBackend,
)
from conclave.observability.metrics import (
    EXCHANGE_PAUSED_UNTIL,
    EXCHANGE_THROTTLED,
    EXCHANGE_WEIGHT_LIMIT,
    EXCHANGE_WEIGHT_USED,
)
from conclave.settings import BinanceSettings
from conclave.timeframes import iso_ms

log = structlog.get_logger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")
__all__ = ["InProcessBackend", "LimiterBackend", "Pause", "RedisBackend", "WeightLimiter"]

#: A streak of rate-limit answers doubles the pause up to this many seconds.
MAX_ESCALATED_PAUSE_S = 60.0
#: A reservation this close to a window's end also counts in the next window, in seconds:
#: the time from reserving to the request's arrival (event-loop lag, connect) fits in it.
EDGE_S = 1.0
#: While the shared counts are unreachable a replica spends at most this share of the
#: budget: the rest covers what the others spend before the exchange's header reports it.
DEGRADED_SHARE = 0.9


class ExchangeOffset(Protocol):
    """The exchange clock as the limiter needs it (`conclave.market.exchange_time`)."""

    @property
    def offset_ms(self) -> int:
        """Exchange minus local time, ms."""
        ...

    @property
    def margin_ms(self) -> int:
        """How far ``offset_ms`` may be off either way, ms."""
        ...


class _NoOffset:
    offset_ms = 0
    margin_ms = 0


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
        edge_s: float = EDGE_S,
        source: str = "binance",
    ) -> None:
        if budget <= 0:
            raise ValueError("budget must be positive")
        self.backend = backend
        self.budget = budget
        self.source = source
        EXCHANGE_WEIGHT_LIMIT.labels(source).set(budget)
        self._clock = clock
        self._sleep = sleep
        self._window_s = window_s
        self._edge_s = edge_s
        self._exchange: ExchangeOffset = _NoOffset()

    def align(self, exchange: ExchangeOffset) -> None:
        """Count windows on ``exchange``'s clock (the local clock plus its measured offset)."""
        self._exchange = exchange

    def _window(self, now: float) -> int:
        return int((now + self._exchange.offset_ms / 1000) // self._window_s)

    def _windows(self, now: float) -> list[int]:
        """The windows a request reserved at ``now`` may land in, on the exchange's clock."""
        t = now + self._exchange.offset_ms / 1000
        window = int(t // self._window_s)
        into = t - window * self._window_s
        out = [window]
        if into < self._exchange.margin_ms / 1000:
            out.insert(0, window - 1)
        if self._window_s - into < self._edge_s:
            out.append(window + 1)
        return out

    def _opens(self, window: int) -> float:
        """Local time from which a reservation no longer touches ``window - 1``."""
        exchange = self._exchange
        return window * self._window_s + (exchange.margin_ms - exchange.offset_ms) / 1000

    async def acquire(self, weight: int, *, max_wait_s: float = 0.0) -> float:
        """Reserve ``weight`` in the current window, waiting at most ``max_wait_s`` seconds;
        return when it was reserved (limiter clock, s: pass it to `observe`).

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
            windows = self._windows(now)
            totals = [await self.backend.add_weight(w, weight) for w in windows]
            budget = self.budget
            if self.backend.degraded:
                budget = int(budget * DEGRADED_SHARE)
            if max(totals) <= budget:
                return now
            for w in windows:
                await self.backend.add_weight(w, -weight)
            full = max(w for w, total in zip(windows, totals, strict=True) if total > budget)
            next_window_s = self._opens(full + 1)
            if next_window_s > give_up_at:
                raise RateLimitedError(
                    f"Binance weight budget of {self.budget}/min is spent for this minute",
                    retry_after_s=next_window_s - now,
                    reason="weight_budget",
                )
            await self._sleep(next_window_s - now)

    async def observe(self, used_weight_1m: int, *, at: float | None = None) -> None:
        """Raise a window's count to the weight the server reports (``X-MBX-USED-WEIGHT-1M``):
        the window of ``at``, when the request was reserved (default: now). An answer read
        after its window ended reports that window, not the new one."""
        if used_weight_1m > 0:
            EXCHANGE_WEIGHT_USED.labels(self.source).set(used_weight_1m)
            window = self._window(self._clock() if at is None else at)
            await self.backend.raise_weight(window, used_weight_1m)

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
        EXCHANGE_THROTTLED.labels(self.source, "418" if banned else "429").inc()
        EXCHANGE_PAUSED_UNTIL.labels(self.source, "banned" if banned else "paused").set(until)
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
