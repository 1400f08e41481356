"""A4 weight under load, the short version (``benchmarks/a4_weight.py`` runs the full 10 min).

RELIABILITY A4's pass figure: with 3 replicas, 9 agents, 20 symbols and every timeframe,
peak ``X-MBX-USED-WEIGHT-1M`` <= 4,800 (80 % of Binance's 6,000 a minute), 0 429s, no
request with ``limit`` > 1000.

Here the budget is scaled down so a short run spends it many times over: Stub-BX enforces
a limit of 500 weight per minute window of the wall clock (429 + ``Retry-After`` past it,
418 for requests sent inside that pause), and the replicas are told the same limit with
the same 80 % share (budget 400), so the figure keeps its meaning: at most 80 % of what the
exchange allows, counted by the exchange. The candle cache lives 1 ms, so every run
fetches; three ``conclave serve`` replicas (monolithic, SQLite files of their own, one
Redis for the limiter and the cache) take runs over the 20 symbols x 7 timeframes as fast
as they answer, until 20 s into the next minute window, so the throttle is crossed from
one window into the next under load.

Three ways the fleet went over the exchange's count before, each pinned by a test below
against Stub-BX or the real Redis: a request reserved just before a window ended reached the
exchange in the next one (410 of 400 counted there); a replica whose Redis call timed out on
the loaded machine counted on its own from zero (415 of 400); windows on our clock while the
exchange's clock is ahead put two budgets in one of its windows. And one way it wasted a
whole minute of budget (10-minute benchmark: a window of 32 weight amid ones of 4,798): an
answer read after its window ended raised the new window's count to the old one's total.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from conclave.errors import RateLimitedError
from conclave.market.ratelimit import InProcessBackend, RedisBackend, WeightLimiter
from conclave.market.ratelimit_backends import REDIS_RETRY_S
from conclave.market.sources.binance import BinanceSource
from conclave.settings import BinanceSettings
from tests.fakes import FakeBinance, FakeClock
from tests.fakes.binance_weight import WeightRules
from tests.reliability.a4_fleet import (
    SYMBOLS,
    Replica,
    drive,
    exchange_figures,
    fleet,
    outcomes,
)

LIMIT = 500
SHARE = 0.8
BUDGET = int(LIMIT * SHARE)
WINDOW_S = 60.0
#: Redis calls may take 2 s, not 250 ms: on this loaded machine a 250 ms timeout trips now
#: and then, and a replica cut off from Redis at the start of a window knows nothing of what
#: the fleet spent in it until its first answer's header: it may send one request too many
#: (fallback, tested below on its own; Redis outages are rows D1 and D2).
REPLICA_ENV = {"CONCLAVE_LOG_LEVEL": "WARNING", "CONCLAVE_MARKET__CACHE__REDIS_TIMEOUT_S": "2"}


@pytest.fixture
def exchange(shared_data: Path) -> Iterator[FakeBinance]:
    """Stub-BX enforcing ``LIMIT`` a minute, serving the 20 symbols fresh."""
    fake = FakeBinance(shared_data, clock=time.time, weights=WeightRules(limit=LIMIT))
    fake.serve_live(SYMBOLS)
    with fake.running():
        yield fake
    assert fake.server_errors == []


@pytest.fixture
def replicas(tmp_path: Path, exchange: FakeBinance, redis_url: str) -> Iterator[list[Replica]]:
    """Three orchestrators on Stub-BX and one Redis, stopped by PID after the test."""
    with fleet(
        tmp_path, exchange.base_url, redis_url, replicas=3, weight_limit=LIMIT,
        budget_share=SHARE, extra_env=REPLICA_ENV,
    ) as running:  # fmt: skip
        yield running


@pytest.mark.redis
def test_a4_three_replicas_keep_under_80_percent_of_the_exchange_limit(
    exchange: FakeBinance, replicas: list[Replica]
) -> None:
    """A4 (pass figure: peak weight per minute <= 80 % of the exchange's limit, 0 429s, no
    ``limit`` > 1000): with demand far over the budget in two consecutive windows, Stub-BX
    counts at most 400 of its 500 in every window, answers 0 429s and 0 418s and sees no
    request inside a pause; every run is answered 201 (a run the throttle held past its
    deadline is ``no_signal`` ``weight_budget``; one it held into the next window decides),
    never a 5xx."""
    seconds = max(30.0, WINDOW_S - time.time() % WINDOW_S + 20.0)
    answers = drive(replicas, seconds, per_replica=3)
    figures = exchange_figures(exchange, WINDOW_S)
    by_outcome = outcomes(answers)
    print(f"A4 short: {figures.weight_by_window} {figures.status} {dict(by_outcome)}")

    assert figures.peak_window <= BUDGET, figures.weight_by_window
    assert figures.throttled == 0, figures.status
    assert exchange.would_ban == 0
    assert 0 < figures.max_limit <= 1000
    assert {a.status for a in answers} == {201}, by_outcome  # 0 5xx, 0 transport errors
    # the throttle was exercised: two windows spent to most of the budget, runs refused
    spent = sorted(figures.weight_by_window.values(), reverse=True)
    assert len(spent) >= 2, figures.weight_by_window
    assert spent[1] >= BUDGET * 0.75, figures.weight_by_window
    throttled = [a for a in answers if a.decision == "no_signal"]
    assert throttled, by_outcome
    # the client's throttle refused them (``weight_budget``), not an exchange 429
    assert all(a.reason.startswith("weight_budget") for a in throttled), by_outcome
    # ... and runs it held until the next window went through there and decided
    held = [a for a in answers if a.decision == "ok" and _crossed_a_window(a.at, a.seconds)]
    assert held, "no run waited for the next window"


def _crossed_a_window(at: float, seconds: float) -> bool:
    return int(at // WINDOW_S) != int((at + seconds) // WINDOW_S) and seconds >= 0.2


# -- the limiter's edges, one at a time, against Stub-BX -------------------------------------

MINUTE = 60.0 * 28_000_000  # a window boundary on the fake clock


async def _spend(src: BinanceSource, n: int) -> None:
    for _ in range(n):
        await src.get_candles("BTCUSDT", "1h", 100)  # weight 2 each


async def test_a4_a_request_reserved_at_a_window_end_counts_in_the_next_window(
    shared_data: Path,
) -> None:
    """A request reserved in the last second of a window that reaches the exchange after it
    counts in the next window too: Stub-BX (limit 10, requests arriving 0.3 s after they
    are sent) counts at most 8 in every window, 0 429s."""
    clock = FakeClock(start=MINUTE - 0.5)
    fake = FakeBinance(shared_data, clock=lambda: clock() + 0.3, weights=WeightRules(limit=10))
    with fake.running():
        limiter = WeightLimiter(InProcessBackend(clock), budget=8, clock=clock, sleep=clock.sleep)
        src = BinanceSource(BinanceSettings(base_url=fake.base_url), limiter=limiter,
                            sleep=clock.sleep, clock=clock)  # fmt: skip
        await _spend(src, 4)  # reserved at 59.5 s, counted by Stub-BX in the next minute
        clock.advance(0.6)
        with pytest.raises(RateLimitedError) as caught:
            await _spend(src, 1)
        await src.aclose()
    assert caught.value.reason == "weight_budget"
    assert max(fake.book.by_window.values()) <= 8, fake.book.by_window
    assert {h.status for h in fake.hits} == {200}


async def test_a4_windows_follow_the_exchange_clock(shared_data: Path) -> None:
    """With the exchange's clock 2 s ahead of ours, the budget's windows are its minutes:
    7 weight sent 1.5 s before our minute ends (0.5 s into its next one), then our minute
    turns: the next 2 are refused by our throttle, Stub-BX (limit 10) counts at most 8 in
    every window, 0 429s (on our own minutes 8 more would go out: 429)."""
    clock = FakeClock(start=MINUTE - 1.5)
    ahead = 2.0
    fake = FakeBinance(shared_data, clock=lambda: clock() + ahead,
                       wall_ms=lambda: int((clock() + ahead) * 1000),
                       weights=WeightRules(limit=10))  # fmt: skip
    with fake.running():
        limiter = WeightLimiter(InProcessBackend(clock), budget=8, clock=clock, sleep=clock.sleep)
        src = BinanceSource(BinanceSettings(base_url=fake.base_url), limiter=limiter,
                            sleep=clock.sleep, clock=clock,
                            wall_ms=lambda: int(clock() * 1000))  # fmt: skip
        await src.exchange_clock.sync()  # weight 1
        assert src.exchange_clock.offset_ms == 2000
        await _spend(src, 3)
        clock.advance(1.7)  # our next minute, still the exchange's same one
        with pytest.raises(RateLimitedError) as caught:
            await _spend(src, 4)
        await src.aclose()
    assert caught.value.reason == "weight_budget"
    assert max(fake.book.by_window.values()) <= 8, fake.book.by_window
    assert {h.status for h in fake.hits} == {200}


@pytest.mark.redis
async def test_a4_a_replica_that_loses_redis_carries_on_from_the_fleet_total(
    redis_url: str, redis_prefix: str
) -> None:
    """A replica whose Redis stops answering mid-window counts on from the fleet's total it
    last saw, and spends at most 90 % of the budget meanwhile: 90 of 100 spent through
    Redis, then with Redis gone the next reservation of 5 is refused (``weight_budget``)."""
    clock = FakeClock(start=MINUTE + 1)
    local = InProcessBackend(clock)
    live = RedisBackend(aioredis.Redis.from_url(redis_url), key_prefix=redis_prefix,
                        clock=clock, fallback=local)  # fmt: skip
    fleet_limiter = WeightLimiter(live, budget=100, clock=clock, sleep=clock.sleep)
    for _ in range(18):
        await fleet_limiter.acquire(5)
    dead_client = aioredis.Redis(
        host="127.0.0.1", port=_closed_port(), socket_timeout=0.2,
        socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0),
    )  # fmt: skip
    dead = RedisBackend(dead_client, key_prefix=redis_prefix, clock=clock, fallback=local)
    alone = WeightLimiter(dead, budget=100, clock=clock, sleep=clock.sleep)
    with pytest.raises(RateLimitedError) as caught:
        await alone.acquire(5)
    assert dead.degraded
    assert caught.value.reason == "weight_budget"
    await fleet_limiter.aclose()
    await alone.aclose()


class _Switch:
    """A Redis client that can be switched off (every call raises ConnectionError)."""

    def __init__(self, real: aioredis.Redis) -> None:
        self.real, self.down = real, False

    def __getattr__(self, name: str) -> Any:
        if self.down:
            raise RedisConnectionError("switched off")
        return getattr(self.real, name)


@pytest.mark.redis
async def test_a4_what_a_replica_reserved_without_redis_reaches_the_shared_count(
    redis_url: str, redis_prefix: str
) -> None:
    """Weight a replica reserved on its own while Redis was unreachable is added to the
    shared count when Redis answers again: 40 through Redis, 25 alone, then 5 through Redis
    again: the other replicas read 70 (not 45: they would spend the 25 a second time)."""
    clock = FakeClock(start=MINUTE + 1)
    switch = _Switch(aioredis.Redis.from_url(redis_url))
    backend = RedisBackend(switch, key_prefix=redis_prefix, clock=clock)
    replica = WeightLimiter(backend, budget=100, clock=clock, sleep=clock.sleep)
    other = WeightLimiter(RedisBackend(aioredis.Redis.from_url(redis_url),
                                       key_prefix=redis_prefix, clock=clock),
                          budget=100, clock=clock, sleep=clock.sleep)  # fmt: skip
    for _ in range(8):
        await replica.acquire(5)
    switch.down = True
    for _ in range(5):
        await replica.acquire(5)
    assert backend.degraded
    assert await other.used() == 40
    clock.advance(REDIS_RETRY_S)
    switch.down = False
    await replica.acquire(5)
    assert await other.used() == 70
    await replica.aclose()
    await other.aclose()


class _SlowAnswer(httpx2.AsyncBaseTransport):
    """A real transport whose ``nth`` answer is read ``delay_s`` later on ``clock``."""

    def __init__(self, clock: FakeClock, nth: int, delay_s: float) -> None:
        self._inner = httpx2.AsyncHTTPTransport()
        self.clock, self.nth, self.delay_s, self.sent = clock, nth, delay_s, 0

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        self.sent += 1
        if self.sent == self.nth:
            self.clock.advance(self.delay_s)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_a4_an_answer_read_after_its_window_counts_in_that_window(
    shared_data: Path,
) -> None:
    """An answer sent in one window and read in the next reports the old window's total;
    it raises that window's count, not the new one's: with the old window spent (8 of 8)
    and its last answer read 2 s into the next, the next window's budget is whole (4
    requests of weight 2 go out), and Stub-BX counts at most 8 in every window, 0 429s."""
    clock = FakeClock(start=MINUTE - 1.5)
    fake = FakeBinance(shared_data, clock=clock, weights=WeightRules(limit=10))
    with fake.running():
        limiter = WeightLimiter(InProcessBackend(clock), budget=8, clock=clock, sleep=clock.sleep)
        src = BinanceSource(BinanceSettings(base_url=fake.base_url), limiter=limiter,
                            transport=_SlowAnswer(clock, nth=4, delay_s=2.0),
                            sleep=clock.sleep, clock=clock)  # fmt: skip
        await _spend(src, 4)  # the 4th answer is read at 0.5 s into the next minute
        await _spend(src, 4)
        await src.aclose()
    assert sorted(fake.book.by_window.values()) == [8, 8], fake.book.by_window
    assert {h.status for h in fake.hits} == {200}


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
