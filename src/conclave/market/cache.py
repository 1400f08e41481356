"""Candle caches and the wrapper that puts one in front of any source.

`CachedSource` wraps a `CandleSource` (STYLE #5: caching is a wrapper, not a flag): it keys
each request by source, symbol, timeframe, limit and ``end``, serves hits from a
`CandleCache`, and lets concurrent misses on one key share a single fetch.

Two caches implement the protocol: `MemoryCache` (in process, TTL plus an LRU bound) and
`RedisCache` (shared, compact binary entries). A cache is an optimisation, never a
dependency: a Redis error or timeout is a logged miss (RELIABILITY D1, D2) and an entry that
fails to decode, or has another format version, is a miss that is deleted (D3). No entry
lives longer than one timeframe (B4). Lookups are counted by backend and result
(``conclave_cache_lookups_total``: hit, miss; a Redis failure also as error) and traced as
a ``cache.get`` span.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

import numpy as np
import structlog
from opentelemetry import trace

from conclave.market.candles import OPTIONAL_FIELDS, REQUIRED_FIELDS, Candles
from conclave.market.sources.base import CandleSource, check_request
from conclave.observability.metrics import CACHE_LOOKUPS
from conclave.settings import CacheSettings
from conclave.timeframes import Timeframe

if TYPE_CHECKING:  # redis loads with the first RedisCache: in-process runs never need it
    from redis.asyncio import Redis

log = structlog.get_logger(__name__)
_tracer = trace.get_tracer("conclave")

Clock = Callable[[], float]

# -- the binary entry format ---------------------------------------------------------------
#: Bump when the layout changes; entries of any other version are misses (and deleted).
FORMAT_VERSION: Final = 2
_MAGIC: Final = b"CNDL"
# magic, format version (uint16), metadata length (uint32), all little-endian
_HEADER = struct.Struct("<4sHI")
_DTYPES: Final = {"open_time": "<i8", "trades": "<i8"}


class CacheDecodeError(ValueError):
    """A cache entry is not a candle window this version can read."""


def encode_candles(candles: Candles) -> bytes:
    """Encode candles as header + JSON metadata + raw little-endian column bytes."""
    cols = candles.columns()
    meta = {
        "symbol": candles.symbol,
        "timeframe": candles.timeframe.name,
        "source": candles.source,
        "simulated": candles.simulated,
        "rows": len(candles),
        "columns": list(cols),
    }
    meta_bytes = json.dumps(meta, separators=(",", ":")).encode()
    parts = [_HEADER.pack(_MAGIC, FORMAT_VERSION, len(meta_bytes)), meta_bytes]
    for name, col in cols.items():
        parts.append(np.ascontiguousarray(col, dtype=_DTYPES.get(name, "<f8")).tobytes())
    return b"".join(parts)


def decode_candles(blob: bytes) -> Candles:
    """Decode `encode_candles` output; raise `CacheDecodeError` on anything else."""
    try:
        magic, version, meta_len = _HEADER.unpack_from(blob, 0)
        if magic != _MAGIC:
            raise CacheDecodeError("not a candle entry")
        if version != FORMAT_VERSION:
            raise CacheDecodeError(f"format version {version}, expected {FORMAT_VERSION}")
        start = _HEADER.size
        meta = json.loads(blob[start : start + meta_len])
        rows = int(meta["rows"])
        names = list(meta["columns"])
        if rows < 0 or not set(REQUIRED_FIELDS) <= set(names) <= {
            *REQUIRED_FIELDS,
            *OPTIONAL_FIELDS,
        }:
            raise CacheDecodeError("bad column list")
        offset = start + meta_len
        if len(blob) != offset + 8 * rows * len(names):
            raise CacheDecodeError("entry length does not match its header")
        cols: dict[str, Any] = {}
        for name in names:
            dtype = _DTYPES.get(name, "<f8")
            # frombuffer over immutable bytes gives a read-only view: no copy on a hit
            col = np.frombuffer(blob, dtype=dtype, count=rows, offset=offset)
            cols[name] = col.astype(np.int64 if dtype == "<i8" else np.float64, copy=False)
            offset += 8 * rows
        return Candles(
            symbol=str(meta["symbol"]),
            timeframe=Timeframe.parse(str(meta["timeframe"])),
            source=str(meta["source"]),
            simulated=bool(meta["simulated"]),
            taker_buy_volume=cols.pop("taker_buy_volume", None),
            trades=cols.pop("trades", None),
            **cols,
        )
    except CacheDecodeError:
        raise
    except Exception as exc:  # any malformed input is one kind of failure: undecodable
        raise CacheDecodeError(f"undecodable entry: {type(exc).__name__}") from exc


# -- caches --------------------------------------------------------------------------------


class CandleCache(Protocol):
    """Where `CachedSource` keeps windows; a failure inside is a miss, never an exception."""

    async def get(self, key: str) -> Candles | None:
        """The candles stored under ``key``, or None when absent, expired or unreadable."""
        ...

    async def set(self, key: str, candles: Candles, ttl_s: float) -> None:
        """Store ``candles`` under ``key`` for ``ttl_s`` seconds (best effort)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class MemoryCache:
    """An in-process TTL cache bounded to ``max_entries`` (least recently used go first).

    ``clock`` returns seconds on a monotonic scale; inject a fake one in tests.
    """

    def __init__(self, max_entries: int = 512, *, clock: Clock = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, Candles]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> Candles | None:
        """Return the live entry for ``key`` (and mark it recently used), else None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, candles = entry
        if self._clock() >= expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return candles

    async def set(self, key: str, candles: Candles, ttl_s: float) -> None:
        """Store ``candles`` (immutable, so not copied) until ``ttl_s`` seconds from now.

        Expired entries at the least recently used end go first: keys name a window's end,
        so an old one is never asked for again, and without this the cache held
        ``max_entries`` dead windows (RELIABILITY F3: the soak's orchestrator grew 8 MB/h
        until it was full).
        """
        if ttl_s <= 0:
            return
        now = self._clock()
        self._entries[key] = (now + ttl_s, candles)
        self._entries.move_to_end(key)
        entries = self._entries
        while entries and (len(entries) > self._max or next(iter(entries.values()))[0] <= now):
            entries.popitem(last=False)

    async def aclose(self) -> None:
        """Drop every entry."""
        self._entries.clear()


class _RateLimitedWarning:
    """Log a warning at most once per ``interval_s``, counting the ones suppressed."""

    def __init__(self, event: str, interval_s: float, clock: Clock) -> None:
        self._event, self._interval, self._clock = event, interval_s, clock
        self._last: float | None = None
        self._suppressed = 0

    def __call__(self, **fields: Any) -> None:
        now = self._clock()
        if self._last is not None and now - self._last < self._interval:
            self._suppressed += 1
            return
        log.warning(self._event, suppressed=self._suppressed, **fields)
        self._last, self._suppressed = now, 0


class RedisCache:
    """A Redis-backed cache shared by processes; entries use `encode_candles`.

    Every operation is bounded by ``timeout_s`` (RELIABILITY D2). After a Redis failure the
    cache stays out of the way for ``cooldown_s`` (every call is an immediate miss) so a dead
    Redis costs one timeout per cooldown, not one per request (D1).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 0.25,
        key_prefix: str = "conclave:v1",
        cooldown_s: float = 1.0,
        warn_interval_s: float = 30.0,
        clock: Clock = time.monotonic,
    ) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError

        #: what a Redis call may raise: a logged miss, never a failed request (D1, D2)
        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self._client: Redis = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
        )
        self._timeout_s = timeout_s
        self._prefix = key_prefix
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._down_until = float("-inf")
        self._warn_down = _RateLimitedWarning("cache_redis_unavailable", warn_interval_s, clock)
        self._warn_bad = _RateLimitedWarning("cache_entry_undecodable", warn_interval_s, clock)

    @property
    def available(self) -> bool:
        """False while the cache is bypassed after a Redis failure (health shows degraded)."""
        return self._clock() >= self._down_until

    def _full(self, key: str) -> str:
        return f"{self._prefix}:candles:{key}"

    def _failed(self, op: str, exc: BaseException) -> None:
        self._down_until = self._clock() + self._cooldown_s
        CACHE_LOOKUPS.labels("redis", "error").inc()
        self._warn_down(op=op, error=f"{type(exc).__name__}: {exc}"[:200], action="bypassed")

    async def get(self, key: str) -> Candles | None:
        """Fetch and decode ``key``; Redis trouble or a bad entry is a miss (bad ones deleted)."""
        if self._clock() < self._down_until:
            return None
        full = self._full(key)
        try:
            async with asyncio.timeout(self._timeout_s):
                blob = await self._client.get(full)
        except self._errors as exc:
            self._failed("get", exc)
            return None
        if blob is None:
            return None
        try:
            return decode_candles(blob if isinstance(blob, bytes) else b"")
        except CacheDecodeError as exc:
            self._warn_bad(key=full, error=str(exc), action="deleted")
            await self._delete(full)
            return None

    async def set(self, key: str, candles: Candles, ttl_s: float) -> None:
        """Store ``candles`` for ``ttl_s`` seconds; skipped (with a warning) when Redis fails."""
        if ttl_s <= 0 or self._clock() < self._down_until:
            return
        blob = encode_candles(candles)
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._client.set(self._full(key), blob, px=max(1, int(ttl_s * 1000)))
        except self._errors as exc:
            self._failed("set", exc)

    async def _delete(self, full_key: str) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._client.delete(full_key)
        except self._errors as exc:
            self._failed("delete", exc)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


def backend_name(cache: CandleCache) -> str:
    """The ``backend`` label of ``cache``: ``memory``, ``redis`` or its class name."""
    if isinstance(cache, MemoryCache):
        return "memory"
    return "redis" if isinstance(cache, RedisCache) else type(cache).__name__.lower()


def make_cache(
    settings: CacheSettings, redis_url: str | None, *, clock: Clock = time.monotonic
) -> CandleCache:
    """The configured cache: Redis when ``redis_url`` is set, else in process."""
    if redis_url:
        return RedisCache(
            redis_url,
            timeout_s=settings.redis_timeout_s,
            key_prefix=settings.key_prefix,
            clock=clock,
        )
    return MemoryCache(settings.max_entries, clock=clock)


# -- the wrapper ---------------------------------------------------------------------------


class _LeaderCancelledError(Exception):
    """The caller fetching for a key was cancelled; a waiting caller takes over."""


def cache_key(source: str, symbol: str, timeframe: Timeframe, limit: int, end: int | None) -> str:
    """The cache key of one request; ``end=None`` ("newest") is keyed as ``latest``."""
    return f"{source}:{symbol}:{timeframe.name}:{limit}:{'latest' if end is None else end}"


class CachedSource:
    """A `CandleSource` that serves repeated requests from a cache and fetches each once.

    Entries live ``min(ttl_s, one timeframe)`` so a hit is never older than one bar (B4).
    Concurrent misses on one key share one underlying fetch; its exception reaches every
    waiter and nothing is cached.
    """

    def __init__(self, source: CandleSource, cache: CandleCache, *, ttl_s: float = 30.0) -> None:
        self.source = source
        self.cache = cache
        self.name = source.name
        self.simulated = source.simulated
        self._ttl_s = ttl_s
        self._inflight: dict[str, asyncio.Future[Candles]] = {}
        self._backend = backend_name(cache)
        self._hits = CACHE_LOOKUPS.labels(self._backend, "hit")
        self._misses = CACHE_LOOKUPS.labels(self._backend, "miss")

    def ttl_for(self, timeframe: Timeframe) -> float:
        """Seconds an entry of ``timeframe`` may live: the TTL, capped at one bar."""
        return min(self._ttl_s, timeframe.ms / 1000)

    async def get_candles(
        self, symbol: str, timeframe: Timeframe | str, limit: int, end: int | None = None
    ) -> Candles:
        """Same contract as the wrapped source's ``get_candles``."""
        tf = check_request(symbol, timeframe, limit)
        key = cache_key(self.name, symbol, tf, limit, end)
        while (pending := self._inflight.get(key)) is not None:
            try:
                # shield: a follower giving up must not cancel what the others wait on
                return await asyncio.shield(pending)
            except _LeaderCancelledError:
                continue  # the caller doing the work was cancelled: one of us takes over
        # lead: do the work inline (a memory hit never yields), followers await `done`
        done: asyncio.Future[Candles] = asyncio.get_running_loop().create_future()
        self._inflight[key] = done
        try:
            candles = await self._load(key, symbol, tf, limit, end)
        except Exception as exc:
            done.set_exception(exc)
            raise
        except BaseException:  # cancelled (or interrupted): a follower takes over
            done.set_exception(_LeaderCancelledError())
            raise
        else:
            done.set_result(candles)
            return candles
        finally:
            del self._inflight[key]
            if done.done() and not done.cancelled():
                done.exception()  # mark retrieved: with no followers nobody else reads it

    async def _load(
        self, key: str, symbol: str, tf: Timeframe, limit: int, end: int | None
    ) -> Candles:
        with _tracer.start_as_current_span("cache.get") as span:
            hit = await self.cache.get(key)
            if span.is_recording():
                span.set_attribute("conclave.cache.backend", self._backend)
                span.set_attribute("conclave.cache.hit", hit is not None)
        (self._hits if hit is not None else self._misses).inc()
        if hit is not None:
            return hit
        candles = await self.source.get_candles(symbol, tf, limit, end)
        await self.cache.set(key, candles, self.ttl_for(tf))
        return candles

    async def aclose(self) -> None:
        """Close the cache and the wrapped source."""
        try:
            await self.cache.aclose()
        finally:
            await self.source.aclose()
