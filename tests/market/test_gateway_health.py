"""The gateway's fetch log: the newest success and failure of what reached the source."""

from __future__ import annotations

import pytest

from conclave.errors import (
    ConclaveError,
    ExchangeUnavailableError,
    IPBannedError,
    StaleDataError,
    UnknownSymbolError,
)
from conclave.market.cache import MemoryCache
from conclave.market.candles import Candles
from conclave.market.gateway import FetchLog, MarketGateway
from conclave.timeframes import DAY_MS, Timeframe
from tests.market.test_gateway import AS_OF, GridSource


class FlakySource(GridSource):
    """The grid market, failing with ``fail`` while it is set, ``lag_ms`` behind ``end``."""

    def __init__(self) -> None:
        super().__init__()
        self.fail: Exception | None = None
        self.lag_ms = 0

    async def get_candles(
        self, symbol: str, timeframe: Timeframe | str, limit: int, end: int | None = None
    ) -> Candles:
        if self.fail is not None:
            raise self.fail
        assert end is not None
        return await super().get_candles(symbol, timeframe, limit, end - self.lag_ms)


class Clock:
    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


async def test_a_failure_is_recorded_then_cleared_by_the_next_success() -> None:
    """Nothing fetched: no success, no error, not failing. A 5xx-style failure is the newest
    (failing, reason and message kept); the next success clears ``failing`` but keeps the
    error's record."""
    source, clock = FlakySource(), Clock(1_000)
    gateway = MarketGateway(source, resample="fetch", clock=clock)
    log = gateway.fetches
    assert (log.last_success, log.last_error, log.failing) == (None, None, False)

    source.fail = ExchangeUnavailableError("Binance answered HTTP 503 (attempt 1)")
    with pytest.raises(ExchangeUnavailableError):
        await gateway.snapshot("BTCUSDT", "1h", limit=50, as_of_ms=AS_OF)
    assert log.failing
    assert log.last_error is not None
    assert (log.last_error.at_ms, log.last_error.reason) == (1_000, "exchange_unavailable")
    assert log.last_error.message == "Binance answered HTTP 503 (attempt 1)"
    assert log.last_success is None

    clock.t = 2_000
    source.fail = None
    await gateway.snapshot("BTCUSDT", "1h", limit=50, as_of_ms=AS_OF)
    assert not log.failing
    assert log.last_success is not None
    assert log.last_success.at_ms == 2_000
    assert log.last_error.reason == "exchange_unavailable"


async def test_a_failure_in_the_same_millisecond_as_a_success_is_still_the_newest() -> None:
    """Order is by sequence, not by clock: success then failure at one instant is failing."""
    log = FetchLog(lambda: 5)
    log.succeeded()
    log.failed("ip_banned", "banned")
    assert log.failing
    log.succeeded()
    assert not log.failing


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (IPBannedError("Binance banned this IP (418)", retry_after_s=120), "ip_banned"),
        (RuntimeError("a bug in a source"), "internal"),
    ],
)
async def test_each_failure_is_recorded_by_its_reason(error: Exception, reason: str) -> None:
    """A ban is ``ip_banned``; an exception a source should have translated is ``internal``."""
    source = FlakySource()
    source.fail = error
    gateway = MarketGateway(source, resample="fetch")
    with pytest.raises(type(error)):
        await gateway.snapshot("BTCUSDT", "1h", limit=50, as_of_ms=AS_OF)
    assert gateway.fetches.last_error is not None
    assert gateway.fetches.last_error.reason == reason
    assert gateway.fetches.failing


async def test_a_bad_request_says_nothing_about_the_exchange() -> None:
    """An unlisted symbol is the caller's mistake: neither a success nor a failure."""
    source = FlakySource()
    source.fail = UnknownSymbolError("Binance does not list symbol 'NOPEUSDT'")
    gateway = MarketGateway(source, resample="fetch")
    with pytest.raises(UnknownSymbolError):
        await gateway.snapshot("NOPEUSDT", "1h", limit=50, as_of_ms=AS_OF)
    assert (gateway.fetches.last_success, gateway.fetches.last_error) == (None, None)


async def test_stale_data_is_not_an_exchange_failure() -> None:
    """The source answered; that its data is too old is validation's verdict, not a failed
    fetch: the fetch is a success."""
    source = FlakySource()
    source.lag_ms = 30 * DAY_MS  # the newest bar a month old
    gateway = MarketGateway(source, resample="fetch")
    with pytest.raises(StaleDataError):
        await gateway.snapshot("BTCUSDT", "1h", limit=50, as_of_ms=AS_OF, require_fresh=True)
    assert gateway.fetches.last_success is not None
    assert not gateway.fetches.failing


async def test_a_cache_hit_is_not_a_fetch() -> None:
    """Behind a cache, only what reaches the source is recorded: a failure stays the newest
    while repeated requests are served from the cache."""
    source, clock = FlakySource(), Clock(1_000)
    gateway = MarketGateway(source, cache=MemoryCache(), resample="fetch", clock=clock)
    await gateway.snapshot("BTCUSDT", "1h", limit=50, as_of_ms=AS_OF)
    assert gateway.fetches.last_success is not None
    first = gateway.fetches.last_success
    clock.t = 2_000
    await gateway.snapshot("BTCUSDT", "1h", limit=50, as_of_ms=AS_OF)  # a hit
    assert gateway.fetches.last_success is first
    source.fail = ConclaveError("boom", reason="exchange_data")
    with pytest.raises(ConclaveError):
        await gateway.snapshot("BTCUSDT", "1h", limit=50, as_of_ms=AS_OF + 3_600_000)
    assert gateway.fetches.failing
    assert gateway.origin is source
