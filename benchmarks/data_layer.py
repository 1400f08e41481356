"""Data-layer figures, measured side by side in one run (PERFORMANCE.md: quote ratios).

Prints: CSV load and validation of the 45,024-row BTC 1h file (median ms, ns per row; load,
validation and both together), the cost of the Redis entry encoding against JSON, and the
cache-hit latency (median and p99 us) of the memory and the Redis cache for a 500-bar and a
45,024-bar entry, with the Redis/memory ratio. Redis: ``--redis-url``, else ``REDIS_URL``,
else redis://127.0.0.1:6379/0; skipped (and said so) when it does not answer.

    .venv/bin/python benchmarks/data_layer.py [--runs 15] [--hits 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import numpy as np
import orjson
from rich.console import Console
from rich.table import Table

from conclave.market.cache import (
    CachedSource,
    CandleCache,
    MemoryCache,
    RedisCache,
    decode_candles,
    encode_candles,
)
from conclave.market.candles import Candles
from conclave.market.sources.file_formats import read_candles
from conclave.market.validation import validate

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT.parent / "shared/data/candles/binance_BTCUSDT_1h_20170817-20221011.csv"
AS_OF = 1_665_486_060_000  # one minute after the file's last bar closed
console = Console(width=110)


def timed_ns(fn: Callable[[], object], runs: int) -> list[int]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        out.append(time.perf_counter_ns() - t0)
    return out


async def timed_async_ns(fn: Callable[[], Awaitable[object]], runs: int) -> list[int]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        await fn()
        out.append(time.perf_counter_ns() - t0)
    return out


def p(samples: list[int], q: float) -> float:
    return float(np.percentile(samples, q))


def bench_csv(runs: int) -> Candles:
    loaded = read_candles(CSV, symbol="BTCUSDT", timeframe="1h")
    rows = len(loaded)
    load = timed_ns(lambda: read_candles(CSV, symbol="BTCUSDT", timeframe="1h"), runs)
    check = timed_ns(lambda: validate(loaded, AS_OF), runs)
    both = timed_ns(
        lambda: validate(read_candles(CSV, symbol="BTCUSDT", timeframe="1h"), AS_OF), runs
    )
    table = Table(title=f"CSV load + validation: {CSV.name} ({rows:,} rows, {runs} runs)")
    for col in ("step", "median ms", "ns per row", "min ms"):
        table.add_column(col, justify="left" if col == "step" else "right")
    for name, samples in (
        ("load (parse CSV)", load),
        ("validate", check),
        ("load + validate", both),
    ):
        med = statistics.median(samples)
        table.add_row(name, f"{med / 1e6:.2f}", f"{med / rows:.0f}", f"{min(samples) / 1e6:.2f}")
    console.print(table)
    return loaded


def bench_encoding(full: Candles, runs: int) -> None:
    table = Table(title=f"cache entry encoding, {len(full):,} bars ({runs} runs)")
    for col in ("format", "bytes", "encode median ms", "decode median ms"):
        table.add_column(col, justify="left" if col == "format" else "right")
    blob = encode_candles(full)
    enc = timed_ns(lambda: encode_candles(full), runs)
    dec = timed_ns(lambda: decode_candles(blob), runs)
    js = orjson.dumps(full.to_columns())
    jenc = timed_ns(lambda: orjson.dumps(full.to_columns()), runs)
    jdec = timed_ns(lambda: Candles.from_columns(orjson.loads(js)), runs)
    for name, size, e, d in (
        ("binary v2 (ours)", len(blob), enc, dec),
        ("JSON columns (orjson)", len(js), jenc, jdec),
    ):
        table.add_row(
            name,
            f"{size:,}",
            f"{statistics.median(e) / 1e6:.3f}",
            f"{statistics.median(d) / 1e6:.3f}",
        )
    console.print(table)


async def redis_answers(url: str) -> str | None:
    import redis.asyncio as aredis

    client = aredis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        await client.ping()
        return None
    except Exception as exc:  # any failure means: skip the Redis rows
        return f"{type(exc).__name__}: {exc}"
    finally:
        await client.aclose()


class _Fixed:
    """A source that always returns one window (only reached on a miss)."""

    simulated = False

    def __init__(self, candles: Candles) -> None:
        self.name = "bench"
        self.candles = candles

    async def get_candles(
        self, symbol: str, timeframe: object, limit: int, end: int | None = None
    ) -> Candles:
        return self.candles

    async def aclose(self) -> None:
        return None


async def bench_hits(full: Candles, hits: int, redis_url: str) -> None:
    entries = {"500 bars": full.tail(500), f"{len(full):,} bars": full}
    caches: dict[str, CandleCache] = {"memory": MemoryCache()}
    why_not = await redis_answers(redis_url)
    prefix = f"conclave:bench:{uuid.uuid4().hex}"
    if why_not is None:
        caches["redis"] = RedisCache(redis_url, key_prefix=prefix, timeout_s=1.0)
    table = Table(title=f"cache hit latency ({hits} hits per row, one event loop)")
    for col in ("entry", "cache", "median us", "p99 us", "vs memory (median)"):
        table.add_column(col, justify="left" if col in ("entry", "cache") else "right")
    try:
        for label, candles in entries.items():
            n = hits if len(candles) <= 500 else max(hits // 10, 50)
            base_med = 0.0
            for cname, cache in caches.items():
                key = f"k:{label}"
                await cache.set(key, candles, ttl_s=600)
                assert await cache.get(key) is not None, f"{cname} did not store the entry"
                samples = await timed_async_ns(partial(cache.get, key), n)
                med = statistics.median(samples) / 1e3
                base_med = base_med or med
                table.add_row(label, cname, f"{med:.1f}", f"{p(samples, 99) / 1e3:.1f}",
                              f"{med / base_med:.1f}x")  # fmt: skip
            wrapped = CachedSource(_Fixed(candles), MemoryCache(), ttl_s=600)
            await wrapped.get_candles("BTCUSDT", "1h", 500, AS_OF)
            hit = partial(wrapped.get_candles, "BTCUSDT", "1h", 500, AS_OF)
            samples = await timed_async_ns(hit, n)
            med = statistics.median(samples) / 1e3
            table.add_row(label, "CachedSource hit (memory)", f"{med:.1f}",
                          f"{p(samples, 99) / 1e3:.1f}", f"{med / base_med:.1f}x")  # fmt: skip
    finally:
        for cache in caches.values():
            if isinstance(cache, RedisCache):
                client = cache._client
                keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
                if keys:
                    await client.delete(*keys)
            await cache.aclose()
    console.print(table)
    if why_not is not None:
        console.print(f"[yellow]Redis at {redis_url} skipped: {why_not}[/]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=15, help="runs per CSV/encoding figure")
    parser.add_argument("--hits", type=int, default=2000, help="cache hits per 500-bar row")
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    redis_url = args.redis_url or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    if not CSV.is_file():
        console.print(f"[red]data file not found: {CSV}[/]")
        sys.exit(1)
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    console.print(f"command: {command}  (redis: {redis_url})")
    console.print(f"python {sys.version.split()[0]}, numpy {np.__version__}, cpus {os.cpu_count()}")
    full = bench_csv(args.runs)
    bench_encoding(full, args.runs)
    asyncio.run(bench_hits(full, args.hits, redis_url))


if __name__ == "__main__":
    main()
