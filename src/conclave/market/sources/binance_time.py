"""Binance's server time over ``GET /api/v3/time`` (weight 1): samples for the exchange clock.

`BinanceTimeProbe` takes one `ClockSample`: it reserves the request's weight first (a pause
latch refuses it at once, never waits), then times the request alone, so neither the limiter
nor Redis inflates the round trip. Answers go through the source's own send, error and
weight handling: a 429 or 418 sets the fleet-wide pause like a klines answer does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2
import orjson

from conclave.errors import ExchangeDataError, ExchangeTimeoutError, ExchangeUnavailableError
from conclave.market.exchange_time import (
    ClockSample,
    ExchangeClock,
    InProcessOffsets,
    LocalClock,
    OffsetStore,
)
from conclave.market.ratelimit import WeightLimiter
from conclave.settings import BinanceSettings

TIME_PATH = "/api/v3/time"
TIME_WEIGHT = 1
_MAX_MS = 2**53

Send = Callable[[Mapping[str, str | int], float, str], Awaitable[tuple[int, httpx2.Headers, bytes]]]
Refuse = Callable[[int, httpx2.Headers, bytes, str], Awaitable[Exception]]
Observe = Callable[[httpx2.Headers], Awaitable[None]]


def parse_server_time(body: bytes) -> int:
    """``serverTime`` (ms UTC) of a ``/api/v3/time`` body; `ExchangeDataError` for anything else."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ExchangeDataError(f"Binance time: body is not JSON ({len(body)} bytes)") from None
    value = data.get("serverTime") if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < _MAX_MS:
        raise ExchangeDataError(f"Binance time: no whole serverTime in ms: {repr(value)[:40]}")
    return value


@dataclass(frozen=True, slots=True)
class BinanceTimeProbe:
    """One sample of Binance's clock: ``serverTime`` minus the local midpoint of the request.

    ``mono`` (seconds) times the round trip; ``local_ms`` is the wall clock the offset is
    relative to; ``timeout_s`` bounds the request (a later answer is useless anyway).
    """

    send: Send
    refuse: Refuse
    observe: Observe
    limiter: WeightLimiter
    local_ms: LocalClock
    mono: Callable[[], float]
    timeout_s: float

    async def __call__(self) -> ClockSample:
        await self.limiter.acquire(TIME_WEIGHT)
        t0, m0 = self.local_ms(), self.mono()
        try:
            status, headers, body = await self.send({}, self.timeout_s, TIME_PATH)
        except httpx2.TimeoutException as exc:
            raise ExchangeTimeoutError(f"Binance time: no answer ({type(exc).__name__})") from None
        except httpx2.TransportError as exc:
            why = type(exc).__name__
            raise ExchangeUnavailableError(f"Binance time: unreachable ({why})") from None
        m1, t1 = self.mono(), self.local_ms()
        await self.observe(headers)
        if status >= 500:
            raise ExchangeUnavailableError(f"Binance time: HTTP {status}")
        if status != 200:
            raise await self.refuse(status, headers, body, "")
        server_ms = parse_server_time(body)
        await self.limiter.succeeded()
        return ClockSample(server_ms - (t0 + t1) // 2, max(0.0, (m1 - m0) * 1000.0), t1)


def binance_clock(
    settings: BinanceSettings,
    offsets: OffsetStore | None,
    *,
    send: Send,
    refuse: Refuse,
    observe: Observe,
    limiter: WeightLimiter,
    local_ms: LocalClock,
    mono: Callable[[], float],
) -> ExchangeClock:
    """The exchange clock of a Binance source, tuned by ``settings.time_*``."""
    max_rtt_s = settings.time_max_rtt_ms / 1000.0
    probe = BinanceTimeProbe(send, refuse, observe, limiter, local_ms, mono,
                             timeout_s=min(settings.read_timeout_s, 2 * max_rtt_s))  # fmt: skip
    return ExchangeClock(
        probe,
        offsets if offsets is not None else InProcessOffsets(),
        local_ms=local_ms,
        refresh_s=settings.time_refresh_s,
        max_rtt_ms=settings.time_max_rtt_ms,
        warn_ms=settings.time_skew_warn_ms,
    )
