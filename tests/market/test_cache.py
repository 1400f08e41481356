"""The candle caches and the caching wrapper (RELIABILITY B4, D1, D2, D3)."""

from __future__ import annotations

import asyncio
import random
import struct
import uuid
from collections.abc import AsyncIterator

import numpy as np
import pytest
from structlog.testing import capture_logs

from conclave.errors import ExchangeUnavailableError
from conclave.market.cache import (
    FORMAT_VERSION,
    CachedSource,
    MemoryCache,
    RedisCache,
    decode_candles,
    encode_candles,
    make_cache,
)
from conclave.market.candles import Candles
from conclave.settings import CacheSettings
from conclave.timeframes import HOUR_MS, Timeframe

T0 = 1_700_000_000_000 // HOUR_MS * HOUR_MS


def bars(n: int, *, symbol: str = "BTCUSDT", tf: str = "1h", optional: bool = False) -> Candles:
    """``n`` valid bars with awkward floats, optionally with the optional columns."""
    step = Timeframe.parse(tf).ms
    rng = np.random.default_rng(n)
    close = 100 + np.cumsum(rng.normal(0, 1, n)) + 0.1
    close = np.abs(close) + 1.0
    open_ = np.r_[close[:1], close[:-1]]
    high = np.maximum(open_, close) * 1.01
    low = np.minimum(open_, close) * 0.99
    volume = rng.uniform(0, 50, n)
    return Candles.from_arrays(
        symbol,
        tf,
        T0 + step * np.arange(n),
        open_,
        high,
        low,
        close,
        volume,
        taker_buy_volume=volume / 3 if optional else None,
        trades=rng.integers(0, 10_000, n) if optional else None,
        source="fake",
        simulated=optional,
    )


class CountingSource:
    """A source that counts its calls; ``fail`` makes every call raise; ``delay_s`` slows it."""

    name = "fake"
    simulated = False

    def __init__(self, *, delay_s: float = 0.0, fail: bool = False) -> None:
        self.calls: list[tuple[str, str, int, int | None]] = []
        self.delay_s = delay_s
        self.fail = fail

    async def get_candles(
        self, symbol: str, timeframe: Timeframe | str, limit: int, end: int | None = None
    ) -> Candles:
        self.calls.append((symbol, str(timeframe), limit, end))
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise ExchangeUnavailableError("exchange down")
        return bars(limit, symbol=symbol, tf=str(timeframe))

    async def aclose(self) -> None:
        return None


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def redis_cache(redis_url: str) -> AsyncIterator[RedisCache]:
    """A RedisCache on the real server under a key prefix of its own, cleaned afterwards.

    Its timeout is 5 s, not the production 0.25 s: these tests are about what round-trips,
    and a loaded CI machine must not turn a slow SET into a bypass (the timeout tests build
    their own cache)."""
    prefix = f"conclave:test:{uuid.uuid4().hex}"
    cache = RedisCache(redis_url, key_prefix=prefix, timeout_s=5.0)
    yield cache
    client = cache._client
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await cache.aclose()


async def test_memory_entry_expires_after_its_ttl() -> None:
    """An entry is served until its TTL passes on the injected clock, then it is a miss."""
    clock = FakeClock()
    cache = MemoryCache(8, clock=clock)
    await cache.set("k", bars(3), ttl_s=30)
    clock.now += 29.9
    assert await cache.get("k") is not None
    clock.now += 0.1
    assert await cache.get("k") is None
    assert len(cache) == 0


async def test_memory_cache_evicts_the_least_recently_used_beyond_its_bound() -> None:
    """With room for two, reading ``a`` then adding ``c`` evicts ``b``."""
    cache = MemoryCache(2, clock=FakeClock())
    for key in ("a", "b"):
        await cache.set(key, bars(2), ttl_s=60)
    assert await cache.get("a") is not None
    await cache.set("c", bars(2), ttl_s=60)
    assert len(cache) == 2
    assert await cache.get("b") is None
    assert await cache.get("a") is not None
    assert await cache.get("c") is not None


async def test_memory_cache_holds_no_dead_windows_once_they_expire() -> None:
    """F3: keys name a window's end, so an expired one is never asked for again; setting
    a new entry drops the expired ones at the old end instead of keeping them until the
    bound (the soak's orchestrator grew 8 MB/h that way). A live entry stays."""
    clock = FakeClock()
    cache = MemoryCache(512, clock=clock)
    for minute in range(100):  # a new 1m window a minute, each cached for 30 s
        await cache.set(f"BTCUSDT:1m:{minute}", bars(3), ttl_s=30)
        clock.now += 60
    assert len(cache) == 1
    await cache.set("live", bars(3), ttl_s=3600)
    clock.now += 60
    await cache.set("next", bars(3), ttl_s=30)
    assert await cache.get("live") is not None
    assert len(cache) == 2  # the live entry and the newest; every dead window is gone


@pytest.mark.parametrize("optional", [False, True])
@pytest.mark.parametrize("n", [0, 1, 500])
def test_binary_encoding_round_trips_every_column_and_label(n: int, optional: bool) -> None:
    """Decoding an encoded window gives back every column bit for bit, and the labels."""
    original = bars(n, optional=optional)
    back = decode_candles(encode_candles(original))
    assert back.equals(original)
    assert (back.source, back.simulated) == (original.source, original.simulated)
    assert back.open_time.dtype == np.int64
    assert not back.close.flags.writeable


@pytest.mark.redis
@pytest.mark.parametrize("optional", [False, True])
async def test_redis_round_trip_preserves_every_column(
    redis_cache: RedisCache, optional: bool
) -> None:
    """What goes into the real Redis comes back exactly, optional columns and labels too."""
    original = bars(1000, tf="15m", optional=optional)
    await redis_cache.set("k", original, ttl_s=30)
    back = await redis_cache.get("k")
    assert back is not None
    assert back.equals(original)
    assert (back.source, back.simulated, back.timeframe) == ("fake", optional, original.timeframe)


def _poison(rng: random.Random) -> bytes:
    """One of many kinds of bad entry: garbage, truncation, wrong version, lying header."""
    good = encode_candles(bars(rng.randint(1, 20), optional=rng.random() < 0.5))
    kind = rng.randrange(7)
    if kind == 0:
        return rng.randbytes(rng.randint(0, 64))
    if kind == 1:
        return good[: rng.randint(0, len(good) - 1)]
    if kind == 2:  # an older (or newer) format version, otherwise well formed
        version = rng.choice([0, 1, FORMAT_VERSION + 1])
        return good[:4] + struct.pack("<H", version) + good[6:]
    if kind == 3:
        return b'{"symbol":"BTCUSDT","timeframe":"1h","open_time":[1,2]}'  # an old JSON schema
    if kind == 4:  # header claims more metadata than there is
        return good[:6] + struct.pack("<I", 2**31) + good[10:]
    if kind == 5:  # extra bytes after the columns
        return good + rng.randbytes(rng.randint(1, 16))
    return good[:10] + rng.randbytes(20) + good[30:]  # mangled metadata


@pytest.mark.redis
async def test_poisoned_redis_entries_are_misses_refetched_and_deleted(
    redis_cache: RedisCache,
) -> None:
    """1,000 poisoned keys (D3): each read is a miss, refetched from the source, 0 crashes."""
    rng = random.Random(3)
    raw = redis_cache._client
    source = CountingSource()
    # a TTL the loop cannot outlast: on a loaded machine 1,000 round trips took over 30 s and
    # the first window had expired by the final read
    cached = CachedSource(source, redis_cache, ttl_s=3600)
    for i in range(1000):
        end = T0 + i * HOUR_MS
        key = f"fake:BTCUSDT:1h:5:{end}"
        await raw.set(f"{redis_cache._prefix}:candles:{key}", _poison(rng))
        got = await cached.get_candles("BTCUSDT", "1h", 5, end)
        assert len(got) == 5
    assert len(source.calls) == 1000
    # the refetched windows replaced the poison: the next reads are hits
    again = await cached.get_candles("BTCUSDT", "1h", 5, T0)
    assert len(again) == 5
    assert len(source.calls) == 1000


@pytest.mark.redis
async def test_an_undecodable_entry_is_deleted_and_logged(redis_cache: RedisCache) -> None:
    """A garbage entry is a miss, it is removed from Redis, and the event is logged."""
    full = f"{redis_cache._prefix}:candles:bad"
    await redis_cache._client.set(full, b"garbage")
    with capture_logs() as logs:
        assert await redis_cache.get("bad") is None
    assert await redis_cache._client.exists(full) == 0
    assert any(e["event"] == "cache_entry_undecodable" for e in logs)


async def test_unreachable_redis_means_a_warning_and_a_direct_fetch() -> None:
    """Redis on a closed port (D1): every fetch succeeds, warnings are rate limited."""
    cache = RedisCache("redis://127.0.0.1:1/0", timeout_s=0.25, cooldown_s=0.0)
    source = CountingSource()
    cached = CachedSource(source, cache)
    with capture_logs() as logs:
        for i in range(5):
            got = await cached.get_candles("BTCUSDT", "1h", 10, T0 + i * HOUR_MS)
            assert len(got) == 10
    await cached.aclose()
    assert len(source.calls) == 5
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1
    assert warnings[0]["event"] == "cache_redis_unavailable"


async def test_after_a_failure_redis_is_bypassed_for_the_cooldown() -> None:
    """One failure marks the cache unavailable; until the cooldown ends calls skip Redis."""
    clock = FakeClock()
    cache = RedisCache("redis://127.0.0.1:1/0", cooldown_s=5.0, clock=clock)
    with capture_logs():
        assert await cache.get("k") is None
    assert not cache.available
    clock.now += 5.0
    assert cache.available
    await cache.aclose()


async def test_a_hung_redis_is_bounded_by_the_socket_timeout() -> None:
    """A Redis that accepts but never answers (SIGSTOP, D2): get is a miss, set is skipped."""
    hung: list[asyncio.StreamWriter] = []

    async def never_answer(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hung.append(writer)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cache = RedisCache(f"redis://127.0.0.1:{port}/0", timeout_s=0.1)
    try:
        async with asyncio.timeout(5):  # a hang guard, not a latency assertion
            with capture_logs():
                assert await cache.get("k") is None
                await cache.set("k", bars(2), ttl_s=10)
                assert await cache.get("k") is None
    finally:
        await cache.aclose()
        for writer in hung:
            writer.close()
        server.close()
        await server.wait_closed()


async def _fifty_at_once(cache: MemoryCache | RedisCache) -> int:
    source = CountingSource(delay_s=0.02)
    cached = CachedSource(source, cache)
    results = await asyncio.gather(
        *(cached.get_candles("ETHUSDT", "1h", 100, T0) for _ in range(50))
    )
    assert all(r.equals(results[0]) for r in results)
    return len(source.calls)


async def test_concurrent_requests_for_one_key_fetch_once_in_memory() -> None:
    """50 concurrent get_candles on one key share one underlying fetch (memory cache)."""
    assert await _fifty_at_once(MemoryCache()) == 1


@pytest.mark.redis
async def test_concurrent_requests_for_one_key_fetch_once_with_redis(
    redis_cache: RedisCache,
) -> None:
    """50 concurrent get_candles on one key share one underlying fetch (real Redis)."""
    assert await _fifty_at_once(redis_cache) == 1


async def test_a_failed_fetch_reaches_every_waiter_and_is_not_cached() -> None:
    """The shared fetch's exception is raised to all 10 waiters; the next call fetches again."""
    source = CountingSource(delay_s=0.01, fail=True)
    cached = CachedSource(source, MemoryCache())
    outcomes = await asyncio.gather(
        *(cached.get_candles("BTCUSDT", "1h", 10, T0) for _ in range(10)), return_exceptions=True
    )
    assert all(isinstance(o, ExchangeUnavailableError) for o in outcomes)
    assert len(source.calls) == 1
    source.fail = False
    assert len(await cached.get_candles("BTCUSDT", "1h", 10, T0)) == 10
    assert len(source.calls) == 2


async def test_a_cancelled_caller_does_not_fail_the_others() -> None:
    """If the caller doing the fetch is cancelled, a waiting caller takes over and succeeds."""
    source = CountingSource(delay_s=0.05)
    cached = CachedSource(source, MemoryCache())
    leader = asyncio.ensure_future(cached.get_candles("BTCUSDT", "1h", 10, T0))
    await asyncio.sleep(0.01)
    followers = [
        asyncio.ensure_future(cached.get_candles("BTCUSDT", "1h", 10, T0)) for _ in range(5)
    ]
    await asyncio.sleep(0.01)
    leader.cancel()
    results = await asyncio.gather(*followers)
    assert all(len(r) == 10 for r in results)
    assert len(source.calls) == 2
    with pytest.raises(asyncio.CancelledError):
        await leader


async def test_entries_never_outlive_one_timeframe() -> None:
    """B4: with a configured TTL of an hour, an entry lives one bar at most: a 1m window is a
    hit at 59 s and refetched at 60 s; the TTL of a 1m entry is 60 s, of a 1s one 1 s (the
    real Redis's PTTL: ``tests/reliability/test_b4_stale_data.py``)."""
    clock = FakeClock()
    source = CountingSource()
    cached = CachedSource(source, MemoryCache(clock=clock), ttl_s=3600)
    assert cached.ttl_for(Timeframe.parse("1m")) == 60
    assert cached.ttl_for(Timeframe.parse("1s")) == 1
    await cached.get_candles("BTCUSDT", "1m", 3, None)
    clock.now += 59
    await cached.get_candles("BTCUSDT", "1m", 3, None)
    assert len(source.calls) == 1
    clock.now += 1
    await cached.get_candles("BTCUSDT", "1m", 3, None)
    assert len(source.calls) == 2


async def test_key_separates_symbol_timeframe_limit_and_end() -> None:
    """Requests that differ in any part of the key are separate fetches."""
    source = CountingSource()
    cached = CachedSource(source, MemoryCache())
    for args in [
        ("BTCUSDT", "1h", 10, T0),
        ("BTCUSDT", "1h", 10, T0),
        ("ETHUSDT", "1h", 10, T0),
        ("BTCUSDT", "4h", 10, T0),
        ("BTCUSDT", "1h", 11, T0),
        ("BTCUSDT", "1h", 10, T0 + HOUR_MS),
    ]:
        await cached.get_candles(*args)
    assert len(source.calls) == 5


async def test_make_cache_picks_redis_only_when_a_url_is_given() -> None:
    """No REDIS_URL: in process; with one: Redis (no connection is made until used)."""
    settings = CacheSettings()
    assert isinstance(make_cache(settings, None), MemoryCache)
    redis_cache = make_cache(settings, "redis://127.0.0.1:1/0")
    assert isinstance(redis_cache, RedisCache)
    await redis_cache.aclose()
