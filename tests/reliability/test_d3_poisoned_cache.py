"""RELIABILITY D3: a poisoned cache value (garbage, an old schema, a truncated or lying entry)
is treated as a miss and refetched.

Pass figure of the row: **0 crashes over 1,000 poisoned keys.** The gateway a run uses
reads through the real Redis (``REDIS_URL``, a key prefix of the test's own): 1,000 windows
are fetched once, then every one of the 1,000 keys they left in Redis is overwritten with a
poisoned value of seven kinds (random bytes, a truncated entry, another format version, the
old JSON schema, a header claiming more than there is, trailing bytes, mangled metadata)
and the same 1,000 snapshots are taken again. Each must come back whole and equal to the
first, fetched again from the source (1,000 refetches: nothing poisoned is served), and the
key must then hold a readable entry again.
"""

from __future__ import annotations

import random

import pytest
import redis.asyncio as aioredis

from conclave.market.cache import RedisCache, decode_candles
from conclave.market.gateway import MarketGateway
from conclave.market.sources.sim import SimSource
from tests.market.test_cache import _poison
from tests.pipeline.helpers import CountingSource

KEYS = 1_000
T0 = 1_699_920_000_000  # a day boundary
HOUR_MS = 3_600_000


@pytest.mark.redis
async def test_d3_a_thousand_poisoned_keys_are_misses_refetched_with_0_crashes(
    redis_url: str, redis_prefix: str
) -> None:
    """D3 (pass figure: 0 crashes over 1,000 poisoned keys): 1,000 snapshots through the
    gateway and the real Redis, their 1,000 keys poisoned, the 1,000 snapshots again: 0
    exceptions, every window equal to its first read, 1,000 refetches, and afterwards every
    key decodes."""
    source = CountingSource(SimSource(now_ms=lambda: T0))
    cache = RedisCache(redis_url, key_prefix=redis_prefix, timeout_s=5.0)
    gateway = MarketGateway(source, cache=cache, cache_ttl_s=3600)
    raw = aioredis.Redis.from_url(redis_url)
    as_of = [T0 - i * HOUR_MS + 60_000 for i in range(KEYS)]  # one 1h window each
    try:
        first = [await gateway.snapshot("BTCUSDT", "1h", limit=24, as_of_ms=t) for t in as_of]
        keys = [k async for k in raw.scan_iter(match=f"{redis_prefix}:candles:*")]
        assert len(keys) == KEYS
        fetched = sum(source.calls.values())
        rng = random.Random(3)
        for key in keys:
            await raw.set(key, _poison(rng), px=3_600_000)

        crashes: list[str] = []
        for t, before in zip(as_of, first, strict=True):
            try:
                again = await gateway.snapshot("BTCUSDT", "1h", limit=24, as_of_ms=t)
            except Exception as exc:  # the row's figure: none
                crashes.append(f"{t}: {type(exc).__name__}: {exc}")
                continue
            assert again.base.equals(before.base), t
        assert crashes == []
        assert sum(source.calls.values()) - fetched == KEYS  # each poisoned key refetched
        for key in keys:  # the refetched window replaced the poison
            blob = await raw.get(key)
            assert isinstance(blob, bytes)
            assert len(decode_candles(blob)) >= 24  # the window asked for (and the open bar)
    finally:
        await raw.aclose()
        await gateway.aclose()
