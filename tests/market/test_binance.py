"""BinanceSource against Stub-BX on loopback: wire format, pagination, faults A5 to A7, E4."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conclave.errors import (
    ConclaveError,
    ExchangeDataError,
    ExchangeRejectedError,
    ExchangeTimeoutError,
    ExchangeUnavailableError,
    InvalidSymbolError,
    InvalidTimeframeError,
    IPBannedError,
    RateLimitedError,
    UnknownSymbolError,
)
from conclave.market.candles import Candles
from conclave.market.ratelimit import InProcessBackend, WeightLimiter
from conclave.market.sources.base import CandleSource
from conclave.market.sources.binance import BinanceSource, kline_weight, parse_klines
from conclave.settings import BinanceSettings
from tests.fakes import FakeBinance, FakeClock, Fault
from tests.market.hostile_bodies import GOOD_ROW, malformed_bodies

CSV = "binance_BTCUSDT_1h_20170817-20221011.csv"


def source(stub: FakeBinance, clock: FakeClock | None = None, **overrides: Any) -> BinanceSource:
    settings = BinanceSettings(base_url=stub.base_url, **overrides)
    if clock is None:
        return BinanceSource(settings, rng=random.Random(7))
    return BinanceSource(settings, rng=random.Random(7), sleep=clock.sleep, clock=clock)


def csv_rows(candles_dir: Path) -> np.ndarray[Any, Any]:
    return np.loadtxt(candles_dir / CSV, delimiter=",", skiprows=1)


async def test_pagination_2500_equals_csv_in_three_requests(
    stub: FakeBinance, candles_dir: Path
) -> None:
    """limit 2500 gives exactly the CSV's newest 2500 bars, ascending, in 3 requests <= 1000."""
    src = source(stub)
    assert isinstance(src, CandleSource)
    assert (src.name, src.simulated) == ("binance", False)
    candles = await src.get_candles("BTCUSDT", "1h", 2500)
    await src.aclose()
    rows = csv_rows(candles_dir)[-2500:]
    assert len(candles) == 2500
    assert np.all(np.diff(candles.open_time) > 0)
    assert np.array_equal(candles.open_time, rows[:, 0].astype(np.int64))
    for k, name in enumerate(("open", "high", "low", "close", "volume"), start=1):
        assert np.allclose(getattr(candles, name), rows[:, k], rtol=1e-12), name
    assert candles.taker_buy_volume is not None
    assert candles.trades is not None
    hits = stub.requests()
    assert [int(h.params["limit"]) for h in hits] == [1000, 1000, 500]
    assert all(h.params["interval"] == "1h" and h.params["symbol"] == "BTCUSDT" for h in hits)


async def test_end_is_exclusive_and_walks_back_with_end_time(
    stub: FakeBinance, candles_dir: Path
) -> None:
    """Bars returned opened strictly before ``end``; the first request asks endTime = end - 1."""
    rows = csv_rows(candles_dir)
    end = int(rows[20_000, 0])
    src = source(stub)
    candles = await src.get_candles("BTCUSDT", "1h", 1500, end=end)
    await src.aclose()
    assert len(candles) == 1500
    assert candles.last_open_ms == int(rows[19_999, 0])
    assert np.array_equal(candles.open_time, rows[18_500:20_000, 0].astype(np.int64))
    assert stub.requests()[0].params["endTime"] == str(end - 1)


async def test_captured_response_keeps_trades_and_taker_volume(
    stub: FakeBinance, shared_data: Path
) -> None:
    """The real captured 1m response parses with trades (field 8) and taker volume (field 9)."""
    path = shared_data / "api/binance/captured/spot_klines_BTCUSDT_1m_20211022.json"
    raw = json.loads(path.read_text())
    src = source(stub)
    candles = await src.get_candles("BTCUSDT", "1m", 10)
    await src.aclose()
    assert candles.trades is not None
    assert candles.taker_buy_volume is not None
    assert candles.trades.tolist() == [r[8] for r in raw]
    assert candles.taker_buy_volume.tolist() == [float(r[9]) for r in raw]
    assert candles.close.tolist() == [float(r[4]) for r in raw]


def test_kline_weight_follows_binance_table() -> None:
    """Weight is 1 below 100 rows, 2 below 500, 5 up to 1000, 10 beyond."""
    assert [kline_weight(n) for n in (1, 99, 100, 499, 500, 1000, 1001)] == [1, 1, 2, 2, 5, 5, 10]


# -- E4: bad input never reaches the exchange ----------------------------------------------


@pytest.mark.parametrize(
    ("symbol", "timeframe", "error"),
    [
        ("btcusdt", "1h", InvalidSymbolError),
        ("../", "1h", InvalidSymbolError),
        ("../../etc/passwd", "1h", InvalidSymbolError),
        ("A" * 10_240, "1h", InvalidSymbolError),
        ("BTC/USDT", "1h", InvalidSymbolError),
        ("BTCUSDT", "1H", InvalidTimeframeError),
        ("BTCUSDT", "1min", InvalidTimeframeError),
        ("BTCUSDT", "m1", InvalidTimeframeError),
        ("BTCUSDT", "", InvalidTimeframeError),
    ],
)
async def test_e4_bad_symbol_or_interval_sends_nothing(
    stub: FakeBinance, symbol: str, timeframe: str, error: type[Exception]
) -> None:
    """E4: a bad symbol or interval raises a typed error naming it, with 0 stub requests."""
    src = source(stub)
    with pytest.raises(error) as caught:
        await src.get_candles(symbol, timeframe, 10)
    await src.aclose()
    assert len(str(caught.value)) < 300
    assert stub.hits == []


async def test_e4_interval_case_reaches_the_wire_unchanged(stub: FakeBinance) -> None:
    """``1m`` and ``1M`` are both valid and distinct: each is sent exactly as written."""
    src = source(stub)
    await src.get_candles("BTCUSDT", "1m", 5)
    await src.get_candles("BTCUSDT", "1M", 5)
    await src.aclose()
    assert [h.params["interval"] for h in stub.requests()] == ["1m", "1M"]


async def test_unknown_symbol_is_a_clear_typed_error(stub: FakeBinance) -> None:
    """-1121 Invalid symbol. becomes UnknownSymbolError naming the symbol, without retries."""
    src = source(stub)
    with pytest.raises(UnknownSymbolError, match=r"ETHBTC.*-1121 Invalid symbol\."):
        await src.get_candles("ETHBTC", "1h", 10)
    await src.aclose()
    assert len(stub.requests()) == 1


async def test_other_error_codes_are_rejections_with_code_and_message(stub: FakeBinance) -> None:
    """A 4xx {"code","msg"} other than rate limits becomes ExchangeRejectedError(code, msg)."""
    body = b'{"code":-1100,"msg":"Illegal characters found in parameter \'limit\'."}'
    stub.push(Fault(status=400, body=body))
    src = source(stub)
    with pytest.raises(ExchangeRejectedError, match="-1100 Illegal characters") as caught:
        await src.get_candles("BTCUSDT", "1h", 10)
    await src.aclose()
    assert (caught.value.code, caught.value.status) == (-1100, 400)


@pytest.mark.parametrize(("status", "error"), [(429, RateLimitedError), (418, IPBannedError)])
async def test_rate_limit_answers_pause_and_raise(
    stub: FakeBinance, status: int, error: type[RateLimitedError]
) -> None:
    """429 / 418 set the pause latch for Retry-After and raise the typed error at once."""
    stub.push(Fault(status=status, headers={"Retry-After": "7"}))
    src = source(stub)
    with pytest.raises(error) as caught:
        await src.get_candles("BTCUSDT", "1h", 10)
    pause = await src.limiter.paused_until()
    await src.aclose()
    assert caught.value.retry_after_s == 7
    assert pause is not None
    assert pause.banned is (status == 418)
    assert len(stub.requests()) == 1


async def test_used_weight_header_is_observed(stub: FakeBinance) -> None:
    """X-MBX-USED-WEIGHT-1M raises the limiter's count; a spent budget stops the next call."""
    clock = FakeClock(start=60.0 * 28_000_000 + 1)
    stub.clock = clock
    stub.extra_weight = 4795
    settings = BinanceSettings(base_url=stub.base_url)
    limiter = WeightLimiter(InProcessBackend(clock), budget=4800, clock=clock, sleep=clock.sleep)
    src = BinanceSource(settings, limiter=limiter, sleep=clock.sleep, clock=clock)
    await src.get_candles("BTCUSDT", "1h", 10)
    assert await src.limiter.used() >= 4795
    with pytest.raises(RateLimitedError) as caught:
        await src.get_candles("BTCUSDT", "1h", 500)
    await src.aclose()
    assert caught.value.reason == "weight_budget"
    assert len(stub.requests()) == 1


# -- A5: 5xx retried with full jitter within the deadline ----------------------------------


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_a5_server_errors_retry_at_most_four_times_with_jitter(
    stub: FakeBinance, status: int
) -> None:
    """A5: 5xx gives at most 4 attempts, jittered unequal gaps, then ExchangeUnavailableError."""
    stub.rule = lambda path, params: Fault(status=status, body=b"<html>oops</html>")
    clock = FakeClock()
    src = source(stub, clock)
    start = clock()
    with pytest.raises(ExchangeUnavailableError) as caught:
        await src.get_candles("BTCUSDT", "1h", 10)
    await src.aclose()
    assert type(caught.value) is ExchangeUnavailableError
    assert str(status) in str(caught.value)
    assert len(stub.requests()) == 4
    gaps = clock.sleeps
    print(f"A5 {status}: jittered gaps {[round(g, 3) for g in gaps]}")
    assert len(gaps) == 3
    assert len(set(gaps)) == 3
    assert all(0 <= g <= cap for g, cap in zip(gaps, (0.5, 1.0, 2.0), strict=True))
    assert clock() - start < src.settings.deadline_s


async def test_a5_retry_that_succeeds_returns_the_data(stub: FakeBinance) -> None:
    """A 503 followed by a 200 returns candles after exactly 2 attempts."""
    stub.push(Fault(status=503))
    clock = FakeClock()
    src = source(stub, clock)
    candles = await src.get_candles("BTCUSDT", "1h", 10)
    await src.aclose()
    assert len(candles) == 10
    assert [h.status for h in stub.requests()] == [503, 200]


# -- A6: a slow server costs one read timeout, and no file descriptors --------------------


async def test_a6_slow_server_gives_up_at_the_read_timeout(stub: FakeBinance) -> None:
    """A6: a 15 s stall ends in ExchangeTimeoutError after one read timeout (no retry fits)."""
    stub.rule = lambda path, params: Fault(delay_s=15.0)
    src = source(stub, read_timeout_s=0.3, deadline_s=0.5)
    started = time.perf_counter()
    with pytest.raises(ExchangeTimeoutError):
        await src.get_candles("BTCUSDT", "1h", 10)
    elapsed = time.perf_counter() - started
    await src.aclose()
    print(f"A6: gave up after {elapsed * 1000:.0f} ms (read timeout 300 ms)")
    assert len(stub.requests()) == 1


async def test_a6_timeouts_are_retried_while_the_deadline_allows(stub: FakeBinance) -> None:
    """With room in the deadline, a timeout is retried: 4 attempts, then ExchangeTimeoutError."""
    stub.rule = lambda path, params: Fault(delay_s=15.0)
    src = source(stub, read_timeout_s=0.1, deadline_s=5.0, retry_base_s=0.01, retry_cap_s=0.02)
    with pytest.raises(ExchangeTimeoutError):
        await src.get_candles("BTCUSDT", "1h", 10)
    await src.aclose()
    assert len(stub.requests()) == 4


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _drain(stub: FakeBinance) -> None:
    for _ in range(200):  # until the stub has noticed every hang-up
        if stub.active == 0:
            break
        await asyncio.sleep(0.01)


async def test_a6_open_fds_stay_flat_after_many_timeouts(stub: FakeBinance) -> None:
    """A6: 1,000 read timeouts leave the number of open file descriptors flat (within 5)."""
    stub.rule = lambda path, params: Fault(delay_s=15.0)
    src = source(stub, read_timeout_s=0.05, max_retries=0, deadline_s=2.0)

    async def one() -> None:
        with pytest.raises(ExchangeTimeoutError):
            await src.get_candles("BTCUSDT", "1h", 5)

    await asyncio.gather(*(one() for _ in range(25)))  # warm the pool
    await _drain(stub)
    before = _open_fds()
    for _ in range(40):
        await asyncio.gather(*(one() for _ in range(25)))
    await _drain(stub)
    after = _open_fds()
    await src.aclose()
    print(f"A6: open fds {before} -> {after} after {len(stub.requests())} timeouts")
    assert abs(after - before) <= 5


# -- A7: malformed bodies --------------------------------------------------------------------


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=malformed_bodies(), limit=st.integers(1, 6))
def test_a7_parser_raises_only_exchange_data_error(body: bytes, limit: int) -> None:
    """A7: any body parses to rows within the limit or raises ExchangeDataError, nothing else."""
    try:
        rows = parse_klines(body, limit=limit)
    except ExchangeDataError as exc:
        message = str(exc)
    else:
        assert len(rows) <= limit
        assert np.all(np.isfinite(rows.close))
        return
    assert len(message) < 300


@pytest.mark.parametrize(
    "body",
    [
        b"<!DOCTYPE html><html><body>Service Temporarily Unavailable</body></html>",
        b'[[1634943780000,"60685.22"',
        b'{"code":-1121}',
        b'{"code":-1121,"msg":"Invalid symbol."}',
        b'[[1634943780000,"abc","1","1","1","1",1634943839999,"1",5,"1","1","0"]]',
        b'[["1634943780000","1","1","1","1","1",1634943839999,"1",5,"1","1","0"]]',
        b'[[1634943780000,"NaN","1","1","1","1",1634943839999,"1",5,"1","1","0"]]',
        b'[[1634943780000,null,"1","1","1","1",1634943839999,"1",5,"1","1","0"]]',
        b'[[[[[[[[[[[[["deep"]]]]]]]]]]]]]',
        b"[" * 5000,
        b"",
    ],
)
async def test_a7_malformed_bodies_over_the_wire(stub: FakeBinance, body: bytes) -> None:
    """A7: each malformed 200 body becomes ExchangeDataError with a short message."""
    stub.push(Fault(body=body))
    src = source(stub)
    with pytest.raises(ExchangeDataError) as caught:
        await src.get_candles("BTCUSDT", "1h", 10)
    await src.aclose()
    assert len(str(caught.value)) < 300


async def test_a7_row_count_1001_is_refused_and_empty_means_no_bars(stub: FakeBinance) -> None:
    """A7: 1,001 rows for a request of 1,000 is ExchangeDataError; ``[]`` is empty candles."""
    stub.push(Fault(body=json.dumps([GOOD_ROW] * 1001).encode()), Fault(body=b"[]"))
    src = source(stub)
    with pytest.raises(ExchangeDataError, match="1001 rows"):
        await src.get_candles("BTCUSDT", "1h", 1000)
    assert len(await src.get_candles("BTCUSDT", "1h", 10)) == 0
    await src.aclose()


@pytest.mark.parametrize("status", [301, 302, 307])
async def test_a7_redirects_are_not_followed(stub: FakeBinance, status: int) -> None:
    """A7: a 3xx is ExchangeDataError and its Location is never requested."""
    target = f"{stub.base_url}/api/v3/klines?symbol=BTCUSDT&interval=1h&limit=5"
    stub.push(Fault(status=status, headers={"Location": target}))
    src = source(stub)
    with pytest.raises(ExchangeDataError, match="redirect"):
        await src.get_candles("BTCUSDT", "1h", 10)
    await src.aclose()
    assert len(stub.requests()) == 1


@pytest.fixture(scope="module")
def shared_stub(shared_data: Path) -> Iterator[FakeBinance]:
    with FakeBinance(shared_data).running() as fake:
        yield fake
    assert fake.server_errors == []


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=malformed_bodies(), status=st.sampled_from([200, 200, 200, 400, 404, 500, 503]))
def test_a7_generated_bodies_over_the_wire(
    shared_stub: FakeBinance, body: bytes, status: int
) -> None:
    """A7: generated bodies and statuses over real HTTP end in candles or a Conclave error."""

    async def fetch() -> Candles | ConclaveError:
        src = source(shared_stub, max_retries=0)
        try:
            return await src.get_candles("BTCUSDT", "1h", 5)
        except ConclaveError as exc:
            return exc
        finally:
            await src.aclose()

    shared_stub.push(Fault(status=status, body=body))
    outcome = asyncio.run(fetch())
    assert isinstance(outcome, Candles | ConclaveError)
