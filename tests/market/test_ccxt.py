"""CcxtSource: ccxt's binance pointed at Stub-BX on loopback; error translation; lazy import."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import ccxt
import numpy as np
import pytest

from conclave.errors import (
    ConfigurationError,
    ExchangeDataError,
    ExchangeRejectedError,
    ExchangeTimeoutError,
    ExchangeUnavailableError,
    InvalidRequestError,
    InvalidSymbolError,
    InvalidTimeframeError,
    IPBannedError,
    RateLimitedError,
    UnknownSymbolError,
)
from conclave.market.sources.base import CandleSource
from conclave.market.sources.ccxt import CcxtSource, translate_error
from tests.fakes import FakeBinance, Fault

CSV = "binance_BTCUSDT_1h_20170817-20221011.csv"


def loopback_config(stub: FakeBinance, timeout_ms: int = 5000) -> dict[str, Any]:
    """ccxt's binance with its spot REST URLs on the stub and market loading limited to spot."""
    api = {name: f"{stub.base_url}/api/v3" for name in ("public", "private")}
    return {
        "urls": {"api": api},
        "options": {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False},
        "timeout": timeout_ms,
        "enableRateLimit": False,  # ccxt's own throttle only slows the tests down
    }


@pytest.fixture
async def source(stub: FakeBinance) -> AsyncIterator[CcxtSource]:
    src = CcxtSource("binance", config=loopback_config(stub))
    yield src
    await src.aclose()


async def test_ccxt_pages_2500_bars_equal_to_the_csv(
    source: CcxtSource, stub: FakeBinance, candles_dir: Path
) -> None:
    """BTCUSDT maps to BTC/USDT; 2500 bars come back ascending and equal to the CSV's newest."""
    assert isinstance(source, CandleSource)
    candles = await source.get_candles("BTCUSDT", "1h", 2500)
    rows = np.loadtxt(candles_dir / CSV, delimiter=",", skiprows=1)[-2500:]
    assert candles.source == source.name == "ccxt:binance"
    assert np.array_equal(candles.open_time, rows[:, 0].astype(np.int64))
    assert np.allclose(candles.close, rows[:, 4])
    assert all(int(h.params["limit"]) <= 1000 for h in stub.requests())
    assert {h.path for h in stub.hits} == {"/api/v3/exchangeInfo", "/api/v3/klines"}


async def test_ccxt_end_is_exclusive(source: CcxtSource, candles_dir: Path) -> None:
    """Bars returned opened strictly before ``end``, newest ``limit`` of them."""
    rows = np.loadtxt(candles_dir / CSV, delimiter=",", skiprows=1)
    end = int(rows[30_000, 0])
    candles = await source.get_candles("BTCUSDT", "1h", 1200, end=end)
    assert np.array_equal(candles.open_time, rows[28_800:30_000, 0].astype(np.int64))


async def test_ccxt_symbol_not_in_markets_sends_no_klines(
    source: CcxtSource, stub: FakeBinance
) -> None:
    """A symbol the exchange does not list is UnknownSymbolError before any klines request."""
    with pytest.raises(UnknownSymbolError, match="LTCUSDT"):
        await source.get_candles("LTCUSDT", "1h", 10)
    assert stub.requests() == []


@pytest.mark.parametrize(
    ("symbol", "timeframe", "error"),
    [
        ("btcusdt", "1h", InvalidSymbolError),
        ("../", "1h", InvalidSymbolError),
        ("BTCUSDT", "1H", InvalidTimeframeError),
    ],
)
async def test_ccxt_bad_input_sends_nothing(
    source: CcxtSource, stub: FakeBinance, symbol: str, timeframe: str, error: type[Exception]
) -> None:
    """E4 holds for ccxt too: typed error, 0 stub requests."""
    with pytest.raises(error):
        await source.get_candles(symbol, timeframe, 10)
    assert stub.hits == []


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault(status=429, headers={"Retry-After": "3"}), RateLimitedError),
        (Fault(status=418, headers={"Retry-After": "120"}), IPBannedError),
        (Fault(status=503, body=b"<html>down</html>"), ExchangeUnavailableError),
        (Fault(status=400, body=b'{"code":-1121,"msg":"Invalid symbol."}'), UnknownSymbolError),
        (Fault(body=b"<html>not json</html>"), ExchangeDataError),
        (Fault(body=b'[[1,"x"]]'), ExchangeDataError),
        (Fault(body=b'{"code":-1121}'), UnknownSymbolError),  # ccxt reads the code
    ],
)
async def test_ccxt_faults_become_typed_errors(
    source: CcxtSource, stub: FakeBinance, fault: Fault, error: type[Exception]
) -> None:
    """Stub faults reach the caller as Conclave errors, never as ccxt's."""
    await source.get_candles("BTCUSDT", "1h", 1)  # markets loaded first
    stub.push(fault)
    with pytest.raises(error) as caught:
        await source.get_candles("BTCUSDT", "1h", 5)
    assert not isinstance(caught.value, ccxt.BaseError)
    if isinstance(caught.value, RateLimitedError):
        assert caught.value.retry_after_s == float(fault.headers["Retry-After"])


async def test_ccxt_slow_server_is_a_timeout(stub: FakeBinance) -> None:
    """A stalled answer becomes ExchangeTimeoutError at ccxt's timeout."""
    src = CcxtSource("binance", config=loopback_config(stub, timeout_ms=300))
    await src.get_candles("BTCUSDT", "1h", 1)
    stub.push(Fault(delay_s=15.0))
    with pytest.raises(ExchangeTimeoutError):
        await src.get_candles("BTCUSDT", "1h", 5)
    await src.aclose()


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (ccxt.RateLimitExceeded("binance 429 Too Many Requests"), RateLimitedError),
        (ccxt.DDoSProtection("binance 418 I'm a teapot"), IPBannedError),
        (ccxt.DDoSProtection("cloudflare"), RateLimitedError),
        (ccxt.RequestTimeout("timed out"), ExchangeTimeoutError),
        (ccxt.NetworkError("reset"), ExchangeUnavailableError),
        (ccxt.ExchangeNotAvailable("503"), ExchangeUnavailableError),
        (ccxt.BadSymbol("no such market"), UnknownSymbolError),
        (ccxt.BadResponse("garbage"), ExchangeDataError),
        (ccxt.ExchangeError("refused"), ExchangeRejectedError),
        (ccxt.AuthenticationError("key"), ExchangeRejectedError),
        (TypeError("'NoneType' object is not subscriptable"), ExchangeDataError),
    ],
)
def test_translate_error_maps_ccxt_errors(exc: Exception, error: type[Exception]) -> None:
    """Each ccxt error family maps to the Conclave error the caller acts on."""
    assert type(translate_error(exc, "binance", "BTCUSDT")) is error


def test_unknown_exchange_id_is_named() -> None:
    """An exchange id ccxt does not know is InvalidRequestError naming it."""
    with pytest.raises(InvalidRequestError, match="nosuchexchange") as caught:
        CcxtSource("nosuchexchange")
    assert caught.value.field == "exchange"


def test_module_imports_without_ccxt_and_says_how_to_install() -> None:
    """Without ccxt the module still imports; building a source says to install the extra."""
    code = (
        "import sys; sys.modules['ccxt'] = None; sys.modules['ccxt.async_support'] = None\n"
        "from conclave.market.sources.ccxt import CcxtSource\n"
        "from conclave.errors import ConfigurationError\n"
        "try:\n    CcxtSource('binance')\n"
        "except ConfigurationError as e:\n    print('OK', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.startswith("OK")
    assert "pip install 'conclave[ccxt]'" in out.stdout
    assert ConfigurationError.reason == "configuration"
