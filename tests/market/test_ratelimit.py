"""WeightLimiter: budget, header, pause latch across replicas (A1 to A3), Redis fallback (D1)."""

from __future__ import annotations

import random
import socket
import time
from collections import defaultdict

import pytest
import structlog

from conclave.errors import IPBannedError, RateLimitedError
from conclave.market.ratelimit import InProcessBackend, WeightLimiter, make_limiter
from conclave.market.sources.binance import BinanceSource
from conclave.settings import BinanceSettings
from tests.fakes import FakeBinance, FakeClock, Fault, TaggedTransport

SETTINGS = BinanceSettings()
WINDOW_START = 60.0 * 28_000_000  # a minute boundary on the fake clock


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def replicas(
    stub: FakeBinance, clock: FakeClock, n: int, redis_url: str | None, prefix: str = "x"
) -> list[BinanceSource]:
    """``n`` replicas of the service: each its own source, client and limiter object."""
    settings = BinanceSettings(base_url=stub.base_url)
    out = []
    for i in range(n):
        limiter = make_limiter(
            settings, redis_url, key_prefix=prefix, clock=clock, sleep=clock.sleep
        )
        out.append(
            BinanceSource(
                settings,
                limiter=limiter,
                transport=TaggedTransport(f"r{i}"),
                sleep=clock.sleep,
                clock=clock,
                rng=random.Random(i),
            )
        )
    return out


async def close_all(sources: list[BinanceSource]) -> None:
    for src in sources:
        await src.aclose()


# -- the budget and the header --------------------------------------------------------------


@pytest.mark.parametrize("shared", [False, True], ids=["in_process", "redis"])
async def test_budget_is_never_exceeded_in_any_window(
    shared: bool, request: pytest.FixtureRequest
) -> None:
    """3,000 acquisitions of weight 5 never put more than 4,800 weight in one minute window."""
    clock = FakeClock(start=WINDOW_START)
    url = request.getfixturevalue("redis_url") if shared else None
    prefix = request.getfixturevalue("redis_prefix") if shared else "x"
    limiter = make_limiter(SETTINGS, url, key_prefix=prefix, clock=clock, sleep=clock.sleep)
    per_window: dict[int, int] = defaultdict(int)
    for _ in range(3000):
        await limiter.acquire(5, max_wait_s=120)
        per_window[int(clock() // 60)] += 5
        clock.advance(0.01)
    await limiter.aclose()
    print(f"weight per window: {dict(per_window)}")
    assert max(per_window.values()) <= SETTINGS.weight_budget == 4800
    assert len(per_window) >= 4


async def test_spent_budget_raises_when_the_wait_is_too_long() -> None:
    """With the budget spent and no time to wait, acquire raises RateLimitedError at once."""
    clock = FakeClock(start=WINDOW_START + 1)
    limiter = WeightLimiter(InProcessBackend(clock), budget=100, clock=clock, sleep=clock.sleep)
    await limiter.observe(98)
    assert await limiter.used() == 98
    await limiter.observe(50)  # a lower report never lowers the count
    assert await limiter.used() == 98
    with pytest.raises(RateLimitedError) as caught:
        await limiter.acquire(5, max_wait_s=10)
    assert caught.value.reason == "weight_budget"
    assert caught.value.retry_after_s == pytest.approx(59)
    await limiter.acquire(5, max_wait_s=60)  # waits for the next window
    assert clock.sleeps == [pytest.approx(59)]


async def test_pause_escalates_on_a_streak_and_resets_after_success() -> None:
    """Consecutive 429s double the pause (never below Retry-After); a success resets it."""
    clock = FakeClock()
    limiter = WeightLimiter(InProcessBackend(clock), budget=100, clock=clock, sleep=clock.sleep)
    assert [await limiter.pause(3, banned=False) for _ in range(6)] == [3, 6, 12, 24, 48, 60]
    assert await limiter.pause(120, banned=True) == 120
    await limiter.succeeded()
    clock.advance(200)
    assert await limiter.pause(3, banned=False) == 3


async def test_acquire_waits_out_a_short_pause_and_refuses_a_long_one() -> None:
    """A pause within max_wait_s is slept through; a longer one raises the typed error."""
    clock = FakeClock()
    limiter = WeightLimiter(InProcessBackend(clock), budget=100, clock=clock, sleep=clock.sleep)
    await limiter.pause(3, banned=False)
    with pytest.raises(RateLimitedError):
        await limiter.acquire(1, max_wait_s=2)
    await limiter.acquire(1, max_wait_s=5)
    assert clock.sleeps == [3]
    await limiter.pause(120, banned=True)
    with pytest.raises(IPBannedError):
        await limiter.acquire(1, max_wait_s=5)


# -- A1: 429 + Retry-After 3 pauses the whole fleet -----------------------------------------


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "in_process"])
async def test_a1_429_pauses_every_replica_for_retry_after(
    stub: FakeBinance, shared: bool, request: pytest.FixtureRequest
) -> None:
    """A1: after 429 + Retry-After: 3, none of 3 replicas sends a request for 3 s."""
    clock = FakeClock()
    stub.clock = clock
    if shared:
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        fleet = replicas(stub, clock, 3, url, prefix)
    else:  # one process: three callers share one in-process limiter
        fleet = replicas(stub, clock, 1, None) * 3
    stub.push(Fault(status=429, headers={"Retry-After": "3"}))
    t0 = clock()
    with pytest.raises(RateLimitedError) as caught:
        await fleet[0].get_candles("BTCUSDT", "1h", 10)
    assert caught.value.retry_after_s == 3
    for _ in range(3):  # every replica tries at t0, t0+1, t0+2 with a 2 s deadline
        for src in fleet:
            src.settings = src.settings.model_copy(update={"deadline_s": 2.0})
            with pytest.raises(RateLimitedError):
                await src.get_candles("BTCUSDT", "1h", 10)
        clock.advance(1)
    inside = [h for h in stub.requests() if t0 <= h.t < t0 + 3]
    assert len(inside) == 1  # only the request that got the 429
    assert stub.would_ban == 0
    for src in fleet:
        assert len(await src.get_candles("BTCUSDT", "1h", 10)) == 10
    await close_all(list(dict.fromkeys(fleet)))


async def test_a1_callers_with_time_left_wait_then_send(stub: FakeBinance) -> None:
    """A1: a caller whose deadline outlasts the pause waits it out; its request comes after."""
    clock = FakeClock()
    stub.clock = clock
    [src] = replicas(stub, clock, 1, None)
    stub.push(Fault(status=429, headers={"Retry-After": "3"}))
    t0 = clock()
    with pytest.raises(RateLimitedError):
        await src.get_candles("BTCUSDT", "1h", 10)
    assert len(await src.get_candles("BTCUSDT", "1h", 10)) == 10
    await src.aclose()
    assert [h.t - t0 for h in stub.requests()] == [0, 3]
    assert stub.would_ban == 0


# -- A2: 429 on every request for 60 s ------------------------------------------------------


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "in_process"])
async def test_a2_constant_429_never_escalates_to_a_ban(
    stub: FakeBinance, shared: bool, request: pytest.FixtureRequest
) -> None:
    """A2 (pass figure: <= 10 Stub-BX requests per replica per 60 s; 0 would-ban events):
    429 + ``Retry-After: 3`` on every request for 60 simulated seconds, each replica (3
    sharing the latch in the real Redis, or 1 in process) trying once a second: at most 10
    requests reach Stub-BX from each, and none inside an announced Retry-After window (the
    stub counts those as would-ban, stricter than the row's more than 3)."""
    clock = FakeClock()
    stub.clock = clock
    stub.rule = lambda path, params: Fault(status=429, headers={"Retry-After": "3"})
    n = 3 if shared else 1
    url = request.getfixturevalue("redis_url") if shared else None
    prefix = request.getfixturevalue("redis_prefix") if shared else "x"
    fleet = replicas(stub, clock, n, url, prefix)
    t0 = clock()
    while clock() < t0 + 60:  # each replica runs once per simulated second
        for src in fleet:
            with pytest.raises(RateLimitedError):
                await src.get_candles("BTCUSDT", "1h", 10)
        clock.advance(1)
    await close_all(fleet)
    per_replica = {f"r{i}": len(stub.requests(client=f"r{i}")) for i in range(n)}
    print(f"A2: requests per replica in 60 s: {per_replica}, would-ban {stub.would_ban}")
    assert all(count <= 10 for count in per_replica.values())
    assert stub.would_ban == 0


# -- A3: 418 + Retry-After 120 bans the fleet ----------------------------------------------


async def test_a3_ban_latch_reaches_every_replica_and_holds_120_s(
    stub: FakeBinance, redis_url: str, redis_prefix: str
) -> None:
    """A3: after 418 + Retry-After: 120, all replicas see the latch at once; 0 requests in 120 s."""
    clock = FakeClock()
    stub.clock = clock
    fleet = replicas(stub, clock, 3, redis_url, redis_prefix)
    stub.push(Fault(status=418, headers={"Retry-After": "120"}))
    t0 = clock()
    with pytest.raises(IPBannedError):
        await fleet[0].get_candles("BTCUSDT", "1h", 10)
    seen_at = time.perf_counter()
    latches = [await src.limiter.paused_until() for src in fleet]
    visible_s = time.perf_counter() - seen_at
    print(f"A3: latch visible on all replicas after {visible_s * 1000:.1f} ms")
    assert all(p is not None and p.banned and p.until_s == t0 + 120 for p in latches)
    refused = 0
    while clock() < t0 + 120:
        for src in fleet:
            try:  # near the end a caller may wait out the rest of the ban, then send
                await src.get_candles("BTCUSDT", "1h", 10)
            except IPBannedError:
                refused += 1
        clock.advance(1)
    assert refused >= 3 * 114
    assert len([h for h in stub.requests() if h.t < t0 + 120]) == 1
    assert len(await fleet[1].get_candles("BTCUSDT", "1h", 10)) == 10
    await close_all(fleet)
    assert stub.would_ban == 0


# -- D1: Redis down ------------------------------------------------------------------------


async def test_redis_down_falls_back_to_in_process_with_a_warning(stub: FakeBinance) -> None:
    """D1: a limiter whose Redis is unreachable still lets the fetch through, and warns."""
    settings = BinanceSettings(base_url=stub.base_url)
    limiter = make_limiter(settings, f"redis://127.0.0.1:{closed_port()}/0")
    src = BinanceSource(settings, limiter=limiter)
    with structlog.testing.capture_logs() as logs:
        started = time.perf_counter()
        candles = await src.get_candles("BTCUSDT", "1h", 10)
        elapsed = time.perf_counter() - started
        await src.limiter.pause(1, banned=False)
        latch = await src.limiter.paused_until()
    await src.aclose()
    print(f"D1: fetch with Redis down took {elapsed * 1000:.0f} ms")
    assert len(candles) == 10
    assert any(e["event"] == "ratelimit_redis_unavailable" for e in logs)
    assert latch is not None  # the latch still holds, in process
