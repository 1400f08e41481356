"""Per-key rate limits of the HTTP API, shared by every replica through Redis (RELIABILITY E7).

Two limits per key, both with the `limits` package's moving-window strategy: requests per
second (every request) and runs per minute (``POST /pipeline/run`` on top). With ``REDIS_URL``
the counters live in Redis (``async+redis://``, redis-py), where one Lua script per hit
checks and records atomically, so three orchestrators share one allowance per key; without
it they live in the process.

Why a moving window: it is exact. A key gets ``limit`` hits in ANY window of the period, so
"60 a minute" never lets 120 through around a minute boundary as a fixed window does, and
the 61st request is refused until the oldest hit leaves the window, which is also an exact
``Retry-After``. Its cost (one list entry per hit, 60 per key per minute) is small here.

A limiter outage must not stop trading runs: when Redis fails or is slower than its
timeout, `KeyRateLimiter.check` logs one warning and falls back, for ``retry_s`` seconds at
a time, to an in-process limiter (fail open to each replica's own allowance: the fleet may
then pass up to replicas x limit, never zero). Decisions taken that way say ``degraded``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from limits import RateLimitItem, RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from conclave.settings import Settings

log = structlog.get_logger(__name__)
DEFAULT_PREFIX = "conclave:ratelimit"


@dataclass(frozen=True, slots=True)
class RateDecision:
    """Whether one request may go on, and the figures for its ``RateLimit-*`` headers.

    ``reset_s`` is whole seconds until the oldest hit in the window leaves it (a slot
    frees); ``retry_after_s`` is set (at least 1) only on a refusal. ``degraded`` is True when the
    shared store was unreachable and the process's own limiter decided.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_s: int
    retry_after_s: int | None = None
    degraded: bool = False
    name: str = "requests"

    def headers(self) -> dict[str, str]:
        """``RateLimit-Limit``, ``-Remaining``, ``-Reset``; ``Retry-After`` on a refusal."""
        out = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }
        if self.retry_after_s is not None:
            out["Retry-After"] = str(self.retry_after_s)
        return out


def _storage_uri(redis_url: str) -> str:
    if redis_url.startswith("unix://"):
        return "async+redis+" + redis_url
    return "async+" + redis_url


class KeyRateLimiter:
    """The per-key limiter of one process; `check` once per request.

    ``identity`` is the key's id (never the key), or the client address for open routes.
    Redis keys start with ``key_prefix``. ``redis_timeout_s`` bounds each Redis call;
    after a failure Redis is retried every ``retry_s`` seconds (``clock``: monotonic).
    """

    def __init__(
        self,
        *,
        runs_per_minute: int = 60,
        requests_per_second: int = 20,
        redis_url: str | None = None,
        key_prefix: str = DEFAULT_PREFIX,
        redis_timeout_s: float = 0.25,
        retry_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.run_item: RateLimitItem = RateLimitItemPerMinute(runs_per_minute, namespace="run")
        self.request_item: RateLimitItem = RateLimitItemPerSecond(
            requests_per_second, namespace="req"
        )
        self._timeout_s = redis_timeout_s
        self._retry_s = retry_s
        self._clock = clock
        self._local = MovingWindowRateLimiter(MemoryStorage())
        self._shared: MovingWindowRateLimiter | None = None
        self._redis: Storage | None = None
        if redis_url is not None:
            self._redis = RedisStorage(
                _storage_uri(redis_url),
                implementation="redispy",
                key_prefix=key_prefix,
                wrap_exceptions=True,
                socket_timeout=redis_timeout_s,
                socket_connect_timeout=redis_timeout_s,
            )
            self._shared = MovingWindowRateLimiter(self._redis)
        self._down_until: float | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> KeyRateLimiter:
        """The limiter ``settings`` describe (``CONCLAVE_SECURITY__*``, ``REDIS_URL``)."""
        sec = settings.security
        return cls(runs_per_minute=sec.runs_per_minute,
                   requests_per_second=sec.requests_per_second, redis_url=settings.redis_url,
                   redis_timeout_s=sec.redis_timeout_s, **kwargs)  # fmt: skip

    @property
    def shared(self) -> bool:
        """Whether the counters live in Redis (shared by replicas)."""
        return self._shared is not None

    async def check(self, identity: str, *, run: bool = False) -> RateDecision:
        """Count one request of ``identity``; with ``run`` also one pipeline run.

        The answer for a run is the run limit's (the one a client paces itself by) unless
        the per-second limit refused first. Never raises for a store failure.
        """
        decision = await self._hit(self.request_item, identity, "requests")
        if run and decision.allowed:
            decision = await self._hit(self.run_item, identity, "runs")
        return decision

    async def _hit(self, item: RateLimitItem, identity: str, name: str) -> RateDecision:
        shared = self._shared
        if shared is not None and not self._is_down():
            try:
                async with asyncio.timeout(self._timeout_s * 4):
                    allowed = await shared.hit(item, identity)
                    stats = await shared.get_window_stats(item, identity)
            except Exception as exc:  # any store failure: never stop a run for the limiter
                self._went_down(exc)
            else:
                self._came_back()
                return _decision(item, allowed, stats.reset_time, stats.remaining, name, False)
        allowed = await self._local.hit(item, identity)
        stats = await self._local.get_window_stats(item, identity)
        degraded = shared is not None
        return _decision(item, allowed, stats.reset_time, stats.remaining, name, degraded)

    def _is_down(self) -> bool:
        return self._down_until is not None and self._clock() < self._down_until

    def _went_down(self, exc: BaseException) -> None:
        if self._down_until is None:
            log.warning("ratelimit_store_down", error=type(exc).__name__, retry_s=self._retry_s,
                        fallback="per-process limits until Redis answers")  # fmt: skip
        self._down_until = self._clock() + self._retry_s

    def _came_back(self) -> None:
        if self._down_until is not None:
            log.info("ratelimit_store_back")
            self._down_until = None

    async def health(self) -> dict[str, Any]:
        """``{"status": "ok"|"degraded", "backend", "detail"}``; never raises."""
        if self._redis is None:
            return {"status": "ok", "backend": "memory", "detail": "per process"}
        try:
            async with asyncio.timeout(self._timeout_s * 4):
                up = await self._redis.check()
        except Exception as exc:  # health reports, it does not raise
            up, detail = False, f"unreachable ({type(exc).__name__})"
        else:
            detail = "reachable" if up else "unreachable"
        return {"status": "ok" if up else "degraded", "backend": "redis", "detail": detail}

    async def aclose(self) -> None:
        """Close the Redis connections, if any."""
        if self._redis is not None:
            client: Any = getattr(getattr(self._redis, "bridge", None), "storage", None)
            if client is not None and hasattr(client, "aclose"):
                await client.aclose()


def _decision(
    item: RateLimitItem, allowed: bool, reset_time: float, remaining: int, name: str,
    degraded: bool,
) -> RateDecision:  # fmt: skip
    # `limits` stamps moving-window hits with time.time(): the reset is on that clock
    wait = max(0.0, reset_time - time.time())
    return RateDecision(
        allowed=allowed,
        limit=item.amount,
        remaining=max(0, remaining),
        reset_s=math.ceil(wait),
        retry_after_s=None if allowed else max(1, math.ceil(wait)),
        degraded=degraded,
        name=name,
    )
