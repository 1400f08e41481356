"""Candles from any exchange ccxt knows, through ``ccxt.async_support`` (an optional extra).

ccxt is imported when a `CcxtSource` is built, never at module import, so this module loads
without it and the constructor says how to install it. Symbols are given as Binance writes
them (``BTCUSDT``) and mapped to the exchange's market (``BTC/USDT``) through its market list.
ccxt's errors are translated to ours at this boundary; ccxt's own throttle stays on.

Pages walk back from ``end`` with ``since``: each asks for the bars that would fill the gap
before the oldest bar already held, so no wall clock is read to decide what "newest" means.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from conclave.errors import (
    ConfigurationError,
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
from conclave.market.sources.base import check_request
from conclave.timeframes import Timeframe

#: Rows asked for per request (ccxt exchanges commonly cap at 500 to 1,000).
PAGE_LIMIT = 1000
#: Pause assumed when the exchange rate-limits without saying for how long, in seconds.
DEFAULT_RETRY_AFTER_S = 60.0
INSTALL_HINT = "ccxt is not installed; install the extra: pip install 'conclave[ccxt]'"


def _ccxt() -> Any:
    try:
        import ccxt.async_support as ccxt_async
    except ImportError as exc:
        raise ConfigurationError(INSTALL_HINT) from exc
    return ccxt_async


def translate_error(
    exc: Exception, exchange_id: str, symbol: str, *, retry_after_s: float | None = None
) -> Exception:
    """Map a ccxt exception to the Conclave error the caller should act on.

    ``retry_after_s`` is the exchange's ``Retry-After`` when known (else 60 s is assumed).
    """
    import ccxt

    text = str(exc)[:200]
    where = f"{exchange_id} (via ccxt)"
    if isinstance(exc, ccxt.RateLimitExceeded | ccxt.DDoSProtection):
        wait = DEFAULT_RETRY_AFTER_S if retry_after_s is None else retry_after_s
        # ccxt folds 418 into DDoSProtection; its message carries the HTTP status
        if " 418 " in f" {text} ":
            return IPBannedError(f"{where} banned this IP: {text}", retry_after_s=wait)
        return RateLimitedError(f"{where} rate-limited us: {text}", retry_after_s=wait)
    if isinstance(exc, ccxt.RequestTimeout):
        return ExchangeTimeoutError(f"{where} did not answer in time: {text}")
    if isinstance(exc, ccxt.NetworkError):
        return ExchangeUnavailableError(f"{where} is unavailable: {text}")
    if isinstance(exc, ccxt.BadSymbol):
        return UnknownSymbolError(f"{where} does not list symbol {symbol!r}: {text}")
    if isinstance(exc, ccxt.BadResponse):
        return ExchangeDataError(f"{where} answered unusable data: {text}")
    if isinstance(exc, ccxt.ExchangeError):
        return ExchangeRejectedError(f"{where} refused the request: {text}", code=None, status=0)
    if isinstance(exc, ccxt.BaseError):
        return ExchangeUnavailableError(f"{where} failed: {text}")
    return ExchangeDataError(f"{where} answered data ccxt could not parse: {type(exc).__name__}")


def _retry_after(headers: Any) -> float | None:
    if not isinstance(headers, Mapping):
        return None
    raw = next((v for k, v in headers.items() if str(k).lower() == "retry-after"), None)
    try:
        value = float(raw) if raw is not None else math.nan
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


Row = tuple[int, float, float, float, float, float]


def _rows(raw: Any, exchange_id: str) -> list[Row]:
    if not isinstance(raw, list):
        raise ExchangeDataError(f"{exchange_id} (via ccxt) OHLCV is not a list")
    out = []
    for i, row in enumerate(raw):
        if not isinstance(row, list | tuple) or len(row) < 6:
            raise ExchangeDataError(f"{exchange_id} (via ccxt) OHLCV row {i} is malformed")
        t = row[0]
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise ExchangeDataError(f"{exchange_id} (via ccxt) OHLCV row {i} has a bad time")
        values = row[1:6]
        ok = all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in values
        )
        if not ok:
            raise ExchangeDataError(f"{exchange_id} (via ccxt) OHLCV row {i} has a bad number")
        o, h, lo, c, v = (float(x) for x in values)
        out.append((t, o, h, lo, c, v))
    return out


class CcxtSource:
    """Candles from one ccxt exchange, by ccxt exchange id (``kraken``, ``binance``, ...)."""

    simulated = False

    def __init__(
        self,
        exchange_id: str,
        *,
        config: Mapping[str, Any] | None = None,
        page_limit: int = PAGE_LIMIT,
    ) -> None:
        ccxt_async = _ccxt()
        known = set(getattr(ccxt_async, "exchanges", []))
        if exchange_id not in known:
            raise InvalidRequestError(
                f"unknown ccxt exchange id {exchange_id[:40]!r}; see ccxt.exchanges",
                field="exchange",
            )
        self.exchange_id = exchange_id
        self.name = f"ccxt:{exchange_id}"
        self.page_limit = page_limit
        self.exchange: Any = getattr(ccxt_async, exchange_id)(dict(config or {}))
        self._markets_lock = asyncio.Lock()
        self._by_id: dict[str, str] | None = None

    async def _market(self, symbol: str) -> str:
        async with self._markets_lock:
            if self._by_id is None:
                markets = await self._call(self.exchange.load_markets, symbol)
                by_id: dict[str, str] = {}
                for unified, market in markets.items():
                    # prefer spot when several markets share an id
                    if market.get("spot") or market.get("id") not in by_id:
                        by_id[str(market.get("id"))] = unified
                self._by_id = by_id
        unified = self._by_id.get(symbol)
        if unified is None:
            raise UnknownSymbolError(f"{self.exchange_id} (via ccxt) does not list {symbol!r}")
        return unified

    async def _call(self, fn: Any, symbol: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            if isinstance(exc, asyncio.CancelledError):  # pragma: no cover
                raise
            wait = _retry_after(getattr(self.exchange, "last_response_headers", None))
            raise translate_error(exc, self.exchange_id, symbol, retry_after_s=wait) from exc

    async def get_candles(
        self, symbol: str, timeframe: Timeframe | str, limit: int, end: int | None = None
    ) -> Candles:
        """Return the newest ``limit`` bars that opened before ``end`` (ms UTC; None = newest)."""
        tf = check_request(symbol, timeframe, limit)
        if tf.name not in (getattr(self.exchange, "timeframes", None) or {}):
            raise InvalidRequestError(
                f"{self.exchange_id} has no {tf.name} candles via ccxt", field="timeframe"
            )
        unified = await self._market(symbol)
        held: dict[int, Row] = {}
        upper = end  # bars must open strictly before this (None: no bound yet)
        for _ in range(math.ceil(limit / self.page_limit) + 2):
            need = min(limit - len(held), self.page_limit)
            if need <= 0:
                break
            since = None if upper is None else tf.add(tf.floor(upper - 1), -(need - 1))
            raw = await self._call(
                self.exchange.fetch_ohlcv, symbol, unified, tf.name, since=since, limit=need
            )
            rows = [r for r in _rows(raw, self.exchange_id) if upper is None or r[0] < upper]
            fresh = [r for r in rows if r[0] not in held]
            if not fresh:
                break
            held.update((r[0], r) for r in fresh)
            upper = min(held)
        ordered = sorted(held.values())[-limit:]
        if not ordered:
            return Candles.empty(symbol, tf, source=self.name)
        cols = np.array(ordered, dtype=np.float64)
        return Candles.from_arrays(
            symbol,
            tf,
            np.array([r[0] for r in ordered], dtype=np.int64),
            cols[:, 1],
            cols[:, 2],
            cols[:, 3],
            cols[:, 4],
            cols[:, 5],
            source=self.name,
        )

    async def aclose(self) -> None:
        """Close the exchange's HTTP session."""
        await self.exchange.close()
