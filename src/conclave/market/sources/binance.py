"""Binance spot candles over REST ``GET /api/v3/klines``, polite and strict.

Before any I/O the symbol and the interval are checked (case-sensitive: ``1m`` is a minute,
``1M`` a month). Every request first reserves its weight with the `WeightLimiter`, and every
answer's ``X-MBX-USED-WEIGHT-1M`` is reported back to it; the limiter counts its windows on
the source's exchange clock. A 429 or 418 sets the fleet-wide
pause latch for ``Retry-After`` and raises at once; 5xx answers, connection errors and
timeouts are retried with full jitter while the deadline leaves room for a whole attempt.
Bodies are parsed strictly: anything but an array of 12-field kline rows with integer times
and finite numbers is an `ExchangeDataError`, and redirects are never followed. The source's
``exchange_clock`` keeps Binance's time (`conclave.market.exchange_time`, A8).
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx2
import numpy as np
import orjson
import structlog

from conclave.errors import (
    ExchangeDataError,
    ExchangeRejectedError,
    ExchangeTimeoutError,
    ExchangeUnavailableError,
    InvalidRequestError,
    IPBannedError,
    RateLimitedError,
    UnknownSymbolError,
)
from conclave.market.candles import Candles
from conclave.market.exchange_time import LocalClock, OffsetStore, wall_clock_ms
from conclave.market.ratelimit import InProcessBackend, WeightLimiter
from conclave.market.sources.base import check_request
from conclave.market.sources.binance_time import binance_clock
from conclave.settings import BinanceSettings
from conclave.timeframes import Timeframe

__all__ = ["KLINES_PATH", "PAGE_LIMIT", "BinanceSource", "kline_weight", "parse_klines"]

log = structlog.get_logger(__name__)

KLINES_PATH = "/api/v3/klines"
#: Binance serves at most this many klines per request.
PAGE_LIMIT = 1000
#: Pause when a 429/418 comes without a usable ``Retry-After``, in seconds.
DEFAULT_RETRY_AFTER_S = 60.0
#: Bodies larger than this are refused without being read further, in bytes.
MAX_BODY_BYTES = 4 * 1024 * 1024
_RATE_LIMIT_CODES = {-1003, -1015}
_DECIMAL = re.compile(r"^-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d{1,3})?$")
_FLOAT_FIELDS = {1: "open", 2: "high", 3: "low", 4: "close", 5: "volume", 9: "taker_buy_volume"}
_CHECKED_FLOATS = (7, 10)  # quote volumes: validated, not kept
_INT_FIELDS = {0: "open_time", 6: "close_time", 8: "trades"}
_I64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class KlineRows:
    """Parsed kline rows as columns, in the order the exchange sent them."""

    FIELDS: ClassVar = (
        "open_time", "open", "high", "low", "close", "volume", "taker_buy_volume", "trades",
    )  # fmt: skip
    open_time: Any
    open: Any
    high: Any
    low: Any
    close: Any
    volume: Any
    taker_buy_volume: Any
    trades: Any

    def __len__(self) -> int:
        return int(self.open_time.shape[0])

    @property
    def first_open(self) -> int:
        """Smallest open time in ms (the page's oldest bar)."""
        return int(self.open_time.min())


def _snip(value: object, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


def _bad(message: str) -> ExchangeDataError:
    return ExchangeDataError(f"Binance klines: {message}")


def _as_int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _I64_MAX:
        return None
    return value


def _as_float(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value) if abs(value) < 1e300 else math.inf
    elif isinstance(value, str) and len(value) <= 64 and _DECIMAL.match(value):
        number = float(value)
    else:
        return None
    return number if math.isfinite(number) else None


def parse_klines(body: bytes, *, limit: int, end_time: int | None = None) -> KlineRows:
    """Parse a klines body strictly; raise `ExchangeDataError` for anything but kline rows.

    ``limit`` is the number of rows asked for (more is an error); with ``end_time`` (ms) a
    row that opened after it is an error too. Messages quote at most 40 characters.
    """
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        kind = "HTML" if body.lstrip()[:1] == b"<" else "not JSON"
        raise _bad(f"body is {kind} ({len(body)} bytes, starts {_snip(body[:40])})") from None
    if not isinstance(data, list):
        code = data.get("code") if isinstance(data, dict) else None
        extra = f" (error code {_snip(code, 12)})" if code is not None else ""
        raise _bad(f"expected an array of rows, got {type(data).__name__}{extra}")
    if len(data) > limit:
        raise _bad(f"{len(data)} rows for a request of {limit}")
    ints = np.zeros((len(data), 3), dtype=np.int64)
    floats = np.zeros((len(data), 6), dtype=np.float64)
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != 12:
            raise _bad(f"row {i} is not an array of 12 fields: {_snip(row)}")
        for k, (j, name) in enumerate(_INT_FIELDS.items()):
            number = _as_int(row[j])
            if number is None:
                raise _bad(f"row {i} field {name} is not a whole number: {_snip(row[j])}")
            ints[i, k] = number
        for k, (j, name) in enumerate(_FLOAT_FIELDS.items()):
            value = _as_float(row[j])
            if value is None:
                raise _bad(f"row {i} field {name} is not a finite number: {_snip(row[j])}")
            floats[i, k] = value
        for j in _CHECKED_FLOATS:
            if _as_float(row[j]) is None:
                raise _bad(f"row {i} field {j} is not a finite number: {_snip(row[j])}")
        if ints[i, 1] < ints[i, 0]:
            raise _bad(f"row {i} closes before it opens")
        if end_time is not None and ints[i, 0] > end_time:
            raise _bad(f"row {i} opened after the endTime asked for")
    return KlineRows(
        open_time=ints[:, 0],
        open=floats[:, 0],
        high=floats[:, 1],
        low=floats[:, 2],
        close=floats[:, 3],
        volume=floats[:, 4],
        taker_buy_volume=floats[:, 5],
        trades=ints[:, 2],
    )


def kline_weight(limit: int) -> int:
    """Request weight of one klines call asking for ``limit`` rows (Binance's table)."""
    if limit < 100:
        return 1
    if limit < 500:
        return 2
    if limit <= 1000:
        return 5
    return 10


class BinanceSource:
    """Candles from Binance's public REST API (one pooled HTTP client per source); its
    ``exchange_clock`` is ``wall_ms`` + the offset to Binance, shared through ``offsets``."""

    name = "binance"
    simulated = False

    def __init__(
        self,
        settings: BinanceSettings,
        *,
        limiter: WeightLimiter | None = None,
        transport: httpx2.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: LocalClock = wall_clock_ms,
        offsets: OffsetStore | None = None,
    ) -> None:
        self.settings = settings
        self.limiter = limiter or WeightLimiter(
            InProcessBackend(), budget=settings.weight_budget, sleep=sleep
        )
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._clock = clock
        self._client = httpx2.AsyncClient(
            base_url=settings.base_url,
            transport=transport,
            timeout=self._timeout(math.inf),
            follow_redirects=False,
            headers={"Accept": "application/json"},
        )
        self.exchange_clock = binance_clock(
            settings, offsets, send=self._send, refuse=self._refusal, observe=self._observe,
            limiter=self.limiter, local_ms=wall_ms, mono=clock,
        )  # fmt: skip
        self.limiter.align(self.exchange_clock)

    def _timeout(self, remaining_s: float) -> httpx2.Timeout:
        s = self.settings
        connect = max(0.001, min(s.connect_timeout_s, remaining_s))
        read = max(0.001, min(s.read_timeout_s, remaining_s))
        return httpx2.Timeout(connect=connect, read=read, write=read, pool=connect)

    async def get_candles(
        self, symbol: str, timeframe: Timeframe | str, limit: int, end: int | None = None
    ) -> Candles:
        """Return the newest ``limit`` bars that opened before ``end`` (ms UTC; None = newest)."""
        tf = check_request(symbol, timeframe, limit)
        if end is not None and (isinstance(end, bool) or not isinstance(end, int) or end <= 0):
            raise InvalidRequestError(
                f"end must be a positive ms timestamp, got {end!r}", field="end"
            )
        deadline = self._clock() + self.settings.deadline_s
        pages: list[KlineRows] = []
        remaining = limit
        end_time = None if end is None else end - 1
        while remaining > 0:
            page_limit = min(remaining, PAGE_LIMIT)
            params: dict[str, str | int] = {
                "symbol": symbol,
                "interval": tf.name,
                "limit": page_limit,
            }
            if end_time is not None:
                params["endTime"] = end_time
            body = await self._request(params, kline_weight(page_limit), deadline, symbol)
            rows = parse_klines(body, limit=page_limit, end_time=end_time)
            if len(rows):
                pages.append(rows)
            remaining -= len(rows)
            if len(rows) < page_limit or rows.first_open <= 0:
                break
            end_time = rows.first_open - 1
        return _to_candles(symbol, tf, pages, limit)

    async def _request(
        self, params: Mapping[str, str | int], weight: int, deadline: float, symbol: str
    ) -> bytes:
        s = self.settings
        failure: ExchangeUnavailableError | None = None
        for attempt in range(s.max_retries + 1):
            left = deadline - self._clock()
            if left <= 0:
                break
            at = await self.limiter.acquire(weight, max_wait_s=max(0.0, left - s.read_timeout_s))
            try:
                status, headers, body = await self._send(params, deadline - self._clock())
            except httpx2.TimeoutException as exc:
                failure = ExchangeTimeoutError(
                    f"Binance did not answer in time ({type(exc).__name__}, attempt {attempt + 1})"
                )
            except httpx2.TransportError as exc:
                failure = ExchangeUnavailableError(
                    f"Binance could not be reached ({type(exc).__name__}, attempt {attempt + 1})"
                )
            else:
                await self._observe(headers, at)
                if status == 200:
                    await self.limiter.succeeded()
                    return body
                if status < 500:
                    raise await self._refusal(status, headers, body, symbol)
                failure = ExchangeUnavailableError(
                    f"Binance answered HTTP {status} (attempt {attempt + 1})"
                )
            if attempt == s.max_retries:
                break
            delay = self._rng.uniform(0.0, min(s.retry_cap_s, s.retry_base_s * 2.0**attempt))
            # retry only when a whole attempt still fits before the deadline
            if deadline - (self._clock() + delay) < s.read_timeout_s:
                break
            log.info("binance_retry", attempt=attempt + 1, delay_s=round(delay, 3), error=failure)
            await self._sleep(delay)
        if failure is None:
            failure = ExchangeTimeoutError("Binance deadline passed before a request could be sent")
        raise failure

    async def _send(
        self, params: Mapping[str, str | int], remaining_s: float, path: str = KLINES_PATH
    ) -> tuple[int, httpx2.Headers, bytes]:
        timeout = self._timeout(remaining_s)
        async with self._client.stream("GET", path, params=params, timeout=timeout) as resp:
            if 300 <= resp.status_code < 400:
                # a redirect is never followed and never trusted: the body is not read
                return resp.status_code, resp.headers, b""
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise ExchangeDataError(
                        f"Binance body larger than {MAX_BODY_BYTES} bytes (HTTP {resp.status_code})"
                    )
                chunks.append(chunk)
            return resp.status_code, resp.headers, b"".join(chunks)

    async def _observe(self, headers: httpx2.Headers, at: float | None = None) -> None:
        raw = headers.get("x-mbx-used-weight-1m")
        if raw is not None and raw.strip().isdigit():
            await self.limiter.observe(int(raw.strip()), at=at)

    async def _refusal(
        self, status: int, headers: httpx2.Headers, body: bytes, symbol: str
    ) -> Exception:
        if 300 <= status < 400:
            return ExchangeDataError(f"Binance answered a redirect (HTTP {status}); not followed")
        if status < 300:
            return ExchangeDataError(f"Binance answered HTTP {status} without klines")
        code, msg = _error_body(body)
        if status in (418, 429) or code in _RATE_LIMIT_CODES:
            banned = status == 418
            pause_s = await self.limiter.pause(_retry_after(headers), banned=banned)
            what = "banned this IP (418)" if banned else f"rate-limited us (HTTP {status})"
            text = f"Binance {what}; every caller pauses for {pause_s:.0f} s"
            if banned:
                return IPBannedError(text, retry_after_s=pause_s)
            return RateLimitedError(text, retry_after_s=pause_s)
        if code == -1121:
            return UnknownSymbolError(
                f"Binance does not list symbol {symbol!r}: -1121 {msg or 'Invalid symbol.'}"
            )
        detail = f"{code} {msg}" if code is not None else "no error code in the body"
        return ExchangeRejectedError(
            f"Binance refused the request (HTTP {status}): {detail}", code=code, status=status
        )

    async def aclose(self) -> None:
        """Close the HTTP connection pool and the limiter's and the clock's connections."""
        await self._client.aclose()
        await self.limiter.aclose()
        await self.exchange_clock.aclose()


def _retry_after(headers: httpx2.Headers) -> float:
    raw = headers.get("retry-after", "")
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_RETRY_AFTER_S
    return value if math.isfinite(value) and value >= 0 else DEFAULT_RETRY_AFTER_S


def _error_body(body: bytes) -> tuple[int | None, str | None]:
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    code = data.get("code")
    msg = data.get("msg")
    return (
        code if isinstance(code, int) and not isinstance(code, bool) else None,
        msg[:200] if isinstance(msg, str) else None,
    )


def _to_candles(symbol: str, tf: Timeframe, pages: list[KlineRows], limit: int) -> Candles:
    if not pages:
        return Candles.empty(symbol, tf, source=BinanceSource.name)
    cols = {name: np.concatenate([getattr(p, name) for p in pages]) for name in KlineRows.FIELDS}
    order = np.argsort(cols["open_time"], kind="stable")
    times = cols["open_time"][order]
    keep = order[np.concatenate(([True], times[1:] != times[:-1]))][-limit:]
    return Candles.from_arrays(
        symbol,
        tf,
        cols["open_time"][keep],
        cols["open"][keep],
        cols["high"][keep],
        cols["low"][keep],
        cols["close"][keep],
        cols["volume"][keep],
        taker_buy_volume=cols["taker_buy_volume"][keep],
        trades=cols["trades"][keep],
        source=BinanceSource.name,
    )
