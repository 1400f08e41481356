"""Exchange time (A8): the offset to Stub-BX's ``/api/v3/time``, its refresh, its round-trip
filter, its sharing through Redis, and closed-candle decisions around a close under skew."""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import structlog

from conclave.errors import ConfigurationError
from conclave.market.candles import Candles
from conclave.market.exchange_time import (
    RETRY_S,
    ClockSample,
    ExchangeClock,
    InProcessOffsets,
    RedisOffsets,
    make_offset_store,
)
from conclave.market.gateway import MarketGateway
from conclave.market.sources import open_source
from conclave.market.sources.binance import BinanceSource
from conclave.market.sources.binance_time import TIME_PATH
from conclave.settings import (
    BinanceSettings,
    CacheSettings,
    MarketSettings,
    Settings,
    load_settings,
)
from conclave.timeframes import Timeframe
from tests.fakes import FakeBinance, Fault

H1 = Timeframe.parse("1h")
#: a 1h close: the open of Stub-BX's newest 1h bar (2022-10-11 10:00 UTC)
CLOSE = 1_665_482_400_000


class Wall:
    """A local wall clock in ms that moves only when told; Stub-BX reads it too (its server
    time is this plus its skew), so the only difference between the two clocks is the skew."""

    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


@pytest.fixture
def wall() -> Wall:
    return Wall(CLOSE - 1000)


@pytest.fixture
def stub(shared_data: Path, wall: Wall) -> Iterator[FakeBinance]:
    with FakeBinance(shared_data, wall_ms=wall).running() as fake:
        yield fake
    assert fake.server_errors == []


@pytest.fixture
async def src(stub: FakeBinance, wall: Wall) -> AsyncIterator[BinanceSource]:
    source = binance(stub, wall)
    yield source
    await source.aclose()


def binance(stub: FakeBinance, wall: Wall, **overrides: Any) -> BinanceSource:
    settings = BinanceSettings(base_url=stub.base_url, **overrides)
    return BinanceSource(settings, rng=random.Random(7), wall_ms=wall)


def time_hits(stub: FakeBinance) -> int:
    return len(stub.requests(TIME_PATH))


# -- measuring ----------------------------------------------------------------------------


async def test_offset_is_server_time_minus_the_local_midpoint(
    stub: FakeBinance, wall: Wall, src: BinanceSource
) -> None:
    """Against a server 2 s ahead the offset is +2000 ms, taken with one weight-1 request,
    and exchange now is local now + 2 s."""
    stub.skew_ms = 2000
    clock = src.exchange_clock
    assert (clock.offset_ms, clock.sample) == (0, None)  # nothing measured: the local clock
    sample = await clock.sync()
    assert sample is not None
    assert (sample.offset_ms, sample.measured_at_ms) == (2000, wall.t)
    assert 0 <= sample.rtt_ms <= src.settings.time_max_rtt_ms
    assert clock.now_ms() == wall.t + 2000 == stub.server_ms()
    assert [h.weight for h in stub.requests(TIME_PATH)] == [1]


async def test_the_offset_is_cached_until_the_refresh_interval_passes(
    stub: FakeBinance, wall: Wall
) -> None:
    """Within ``time_refresh_s`` no request is sent; after it the offset is measured again."""
    src = binance(stub, wall, time_refresh_s=60)
    stub.skew_ms = 2000
    await src.exchange_clock.sync()
    stub.skew_ms = -2000
    wall.t += 59_000
    await src.exchange_clock.sync()
    assert (time_hits(stub), src.exchange_clock.offset_ms) == (1, 2000)
    wall.t += 2_000
    await src.exchange_clock.sync()
    assert (time_hits(stub), src.exchange_clock.offset_ms) == (2, -2000)
    await src.aclose()


async def test_concurrent_callers_share_one_measurement(
    stub: FakeBinance, src: BinanceSource
) -> None:
    """Twenty runs starting together send one time request and all use its offset."""
    stub.skew_ms = -2000
    samples = await asyncio.gather(*(src.exchange_clock.sync() for _ in range(20)))
    assert time_hits(stub) == 1
    assert {None if s is None else s.offset_ms for s in samples} == {-2000}


def test_time_settings_live_in_the_binance_section(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """CONCLAVE_MARKET__BINANCE__TIME_* set the clock's interval, RTT limit and warning; a
    misspelt one stops start-up."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONCLAVE_MARKET__BINANCE__TIME_REFRESH_S", "30")
    monkeypatch.setenv("CONCLAVE_MARKET__BINANCE__TIME_MAX_RTT_MS", "400")
    b = load_settings().market.binance
    assert (b.time_refresh_s, b.time_max_rtt_ms, b.time_skew_warn_ms) == (30, 400, 1000)
    monkeypatch.setenv("CONCLAVE_MARKET__BINANCE__TIME_REFRESH", "30")
    with pytest.raises(ConfigurationError, match="TIME_REFRESH_S"):
        load_settings()


async def test_a_sample_with_a_long_round_trip_is_ignored(stub: FakeBinance, wall: Wall) -> None:
    """A time answer slower than ``time_max_rtt_ms`` is not trusted, however wrong it is: its
    server time (60 s off) is dropped and the next, fast sample gives the offset."""
    src = binance(stub, wall, time_max_rtt_ms=250)
    stub.skew_ms = -2000
    wrong = json.dumps({"serverTime": wall.t + 60_000}).encode()
    stub.push(Fault(path=TIME_PATH, body=wrong, delay_s=0.3))  # RTT >= 300 ms > 250 ms
    sample = await src.exchange_clock.sync()
    assert sample is not None
    assert sample.offset_ms == -2000
    assert sample.rtt_ms <= 250
    assert time_hits(stub) == 2
    await src.aclose()


async def test_round_trip_filter_and_retry_pause_with_a_scripted_probe() -> None:
    """Slow samples are skipped; when every sample is slow the local clock stays in use and
    nothing is probed again for `RETRY_S`."""
    wall = Wall(CLOSE)
    script = [ClockSample(9_999, 1500.0, CLOSE), ClockSample(-2000, 30.0, CLOSE)]
    calls: list[int] = []

    async def probe() -> ClockSample:
        calls.append(wall.t)
        return script.pop(0) if script else ClockSample(7_777, 5000.0, wall.t)

    clock = ExchangeClock(probe, InProcessOffsets(), local_ms=wall, max_rtt_ms=1000)
    assert (await clock.sync(), clock.offset_ms) == (ClockSample(-2000, 30.0, CLOSE), -2000)
    wall.t += 61_000
    await clock.sync()  # two slow samples: both ignored, the last good offset stays
    assert (len(calls), clock.offset_ms) == (4, -2000)
    wall.t += int(RETRY_S * 1000) - 1
    await clock.sync()
    assert len(calls) == 4
    wall.t += 1
    await clock.sync()
    assert len(calls) == 6
    assert "round trip" in (await clock.health(timeout_s=1))["clockError"]


async def test_a_failed_measurement_keeps_the_offset_and_honours_the_pause(
    stub: FakeBinance, wall: Wall, src: BinanceSource
) -> None:
    """503 on /time keeps the last offset and raises nothing; a 429 on /time pauses every
    caller like a klines 429, and no time request goes out during the pause."""
    stub.skew_ms = 2000
    clock = src.exchange_clock
    await clock.sync()
    wall.t += 61_000
    stub.push(Fault(path=TIME_PATH, status=503))
    assert await clock.sync() is not None
    assert clock.offset_ms == 2000
    wall.t += int(RETRY_S * 1000)
    stub.push(Fault(path=TIME_PATH, status=429, headers={"Retry-After": "30"}))
    await clock.sync()
    assert await src.limiter.paused_until() is not None
    wall.t += int(RETRY_S * 1000)
    await clock.sync()
    assert (time_hits(stub), clock.offset_ms, stub.would_ban) == (3, 2000, 0)


# -- closed candles around a close ---------------------------------------------------------


class NoClock:
    """The same source seen without its exchange clock (the local clock decides)."""

    def __init__(self, inner: BinanceSource) -> None:
        self.inner, self.name, self.simulated = inner, inner.name, inner.simulated

    async def get_candles(self, symbol: str, timeframe: Any, limit: int, end: Any) -> Candles:
        return await self.inner.get_candles(symbol, timeframe, limit, end)

    async def aclose(self) -> None:
        return None


@pytest.mark.parametrize("skew_ms", [2000, -2000])
@pytest.mark.parametrize("local_ms", [CLOSE - 1000, CLOSE + 1000], ids=["before", "after"])
async def test_no_partial_candle_around_a_close_under_skew(
    stub: FakeBinance, wall: Wall, src: BinanceSource, skew_ms: int, local_ms: int
) -> None:
    """With the exchange 2 s ahead or behind, a second either side of a 1h close, the newest
    bar used closed at or before the exchange's now: for a caller on the local clock (the
    gateway caps as_of) and for a run as of exchange now (the newest closed bar, exactly)."""
    wall.t, stub.skew_ms = local_ms, skew_ms
    gateway = MarketGateway(src)
    server_now = stub.server_ms()
    snap = await gateway.snapshot("BTCUSDT", "1h", limit=48, as_of_ms=local_ms)
    assert int(snap.base.close_time[-1]) <= server_now
    margin = src.exchange_clock.margin_ms  # half the measured round trip: what it may be off
    assert 0 < margin <= 1000
    assert snap.as_of_ms == min(local_ms, server_now - margin)
    as_of = await gateway.now_ms(wall())
    assert as_of == server_now - margin
    snap = await gateway.snapshot("BTCUSDT", "1h", higher=["4h"], limit=48, as_of_ms=as_of)
    assert int(snap.base.close_time[-1]) == H1.floor(server_now)  # fresh, and closed
    assert int(snap.candles["4h"].close_time[-1]) <= server_now
    assert [h.open_rows for h in stub.requests()] == [0] * len(stub.requests())


async def test_by_the_local_clock_alone_the_open_candle_would_be_used(
    stub: FakeBinance, wall: Wall, src: BinanceSource
) -> None:
    """The control: Stub-BX 2 s behind, 1 s after the local close, the bar it still has open
    is served and kept when nothing applies the exchange's clock."""
    wall.t, stub.skew_ms = CLOSE + 1000, -2000
    snap = await MarketGateway(NoClock(src)).snapshot("BTCUSDT", "1h", limit=48, as_of_ms=wall.t)
    assert int(snap.base.close_time[-1]) == CLOSE > stub.server_ms()
    assert stub.requests()[-1].open_rows == 1


# -- one offset for the fleet ---------------------------------------------------------------


def replica(stub: FakeBinance, wall: Wall, redis_url: str, prefix: str) -> BinanceSource:
    market = MarketSettings(
        source="binance",
        binance=BinanceSettings(base_url=stub.base_url),
        cache=CacheSettings(key_prefix=prefix),
    )
    settings = Settings(_env_file=None, redis_url=redis_url, market=market)  # type: ignore[call-arg]
    source = open_source("binance", settings, now_ms=wall)
    assert isinstance(source, BinanceSource)
    return source


@pytest.mark.redis
async def test_two_replicas_share_one_offset_through_redis(
    stub: FakeBinance, wall: Wall, redis_url: str, redis_prefix: str
) -> None:
    """Replica B on the same host uses the offset replica A measured (no request of its own),
    until it is due again; then B measures and A adopts B's."""
    a, b = (replica(stub, wall, redis_url, redis_prefix) for _ in "ab")
    stub.skew_ms = 2000
    await a.exchange_clock.sync()
    stub.skew_ms = -2000  # the truth moves; within the interval nobody measures again
    await b.exchange_clock.sync()
    assert time_hits(stub) == 1
    assert b.exchange_clock.sample == a.exchange_clock.sample
    assert b.exchange_clock.now_ms() == wall.t + 2000
    key = f"{redis_prefix}:exchange_time:binance:{socket.gethostname()}"
    ttl_ms = redis.Redis.from_url(redis_url).pttl(key)
    assert 0 < ttl_ms <= 600_000
    wall.t += 61_000
    await b.exchange_clock.sync()
    await a.exchange_clock.sync()
    assert time_hits(stub) == 2
    assert a.exchange_clock.offset_ms == b.exchange_clock.offset_ms == -2000
    await a.aclose()
    await b.aclose()


async def test_redis_down_still_measures_in_process_with_a_warning(
    stub: FakeBinance, wall: Wall
) -> None:
    """D1: with the offset store's Redis unreachable the offset is measured and kept locally."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    offsets = make_offset_store(f"redis://127.0.0.1:{port}/0")
    settings = BinanceSettings(base_url=stub.base_url)
    src = BinanceSource(settings, wall_ms=wall, offsets=offsets)
    stub.skew_ms = 1500
    with structlog.testing.capture_logs() as logs:
        await src.exchange_clock.sync()
    await src.aclose()
    assert src.exchange_clock.offset_ms == 1500
    assert any(e["event"] == "exchange_time_redis_unavailable" for e in logs)


@pytest.mark.redis
async def test_another_host_measures_its_own_offset(redis_url: str, redis_prefix: str) -> None:
    """An offset is exchange minus one host's clock: a store on another host name never hands
    it over (a host 2 s slow would otherwise move a correct host 2 s early)."""
    wall = Wall(CLOSE)
    measured: list[str] = []

    def clock_on(host: str, offset: int) -> ExchangeClock:
        async def probe() -> ClockSample:
            measured.append(host)
            return ClockSample(offset, 10.0, wall.t)

        client = redis.asyncio.Redis.from_url(redis_url)
        store = RedisOffsets(client, key_prefix=redis_prefix, host=host)
        return ExchangeClock(probe, store, local_ms=wall)

    slow, right = clock_on("slow-host", 2000), clock_on("right-host", 0)
    await slow.sync()
    await right.sync()
    assert measured == ["slow-host", "right-host"]
    assert (slow.offset_ms, right.offset_ms) == (2000, 0)
    await slow.aclose()
    await right.aclose()


async def test_closed_candle_time_leaves_out_half_the_round_trip() -> None:
    """A sample with a 401 ms round trip may be 201 ms off: closed-candle time is exchange time
    less that, so a bar closing inside the uncertainty is not taken as closed."""
    wall = Wall(CLOSE + 100)

    async def probe() -> ClockSample:
        return ClockSample(0, 401.0, wall.t)

    clock = ExchangeClock(probe, InProcessOffsets(), local_ms=wall)
    await clock.sync()
    assert clock.margin_ms == 201
    assert clock.now_ms() == CLOSE + 100
    assert clock.closed_by_ms(wall.t) == CLOSE - 101  # the bar closing at CLOSE: not yet
