"""The one protocol every candle source implements, and the checks made before any I/O."""

from __future__ import annotations

import re
from typing import Protocol, runtime_checkable

from conclave.errors import InvalidRequestError, InvalidSymbolError
from conclave.market.candles import Candles
from conclave.timeframes import Timeframe

#: Binance's documented symbol pattern, upper case only (E4: ``btcusdt`` is refused).
SYMBOL_RE = re.compile(r"^[A-Z0-9_.-]{1,20}$")
MAX_LIMIT = 1_000_000


def check_symbol(symbol: str) -> str:
    """Return ``symbol`` unchanged or raise `InvalidSymbolError` naming it (before any I/O)."""
    if not isinstance(symbol, str) or not SYMBOL_RE.match(symbol):
        shown = repr(symbol)[:40] + ("..." if len(repr(symbol)) > 40 else "")
        raise InvalidSymbolError(
            f"invalid symbol {shown}: expected 1 to 20 of A-Z 0-9 _ . - (upper case, e.g. BTCUSDT)"
        )
    return symbol


def check_limit(limit: int) -> int:
    """Return ``limit`` or raise `InvalidRequestError` unless 1 <= limit <= `MAX_LIMIT`."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequestError(
            f"limit must be a whole number from 1 to {MAX_LIMIT}, got {limit!r}", field="limit"
        )
    return limit


def check_request(symbol: str, timeframe: Timeframe | str, limit: int) -> Timeframe:
    """Check a ``get_candles`` request before any I/O; return the parsed timeframe."""
    check_symbol(symbol)
    tf = Timeframe.parse(timeframe)
    check_limit(limit)
    return tf


@runtime_checkable
class CandleSource(Protocol):
    """Where candles come from: an exchange, a file, the simulator.

    ``get_candles`` returns the newest ``limit`` bars of ``symbol`` at ``timeframe`` that
    opened strictly before ``end`` (ms UTC; ``None`` means the newest the source has). It is
    point in time: it never reads the clock to decide what ``end`` means beyond that, and the
    last bar may still be open at ``end`` (the gateway's validation drops it). An empty result
    means no bars exist in that range; a failure raises a `conclave.errors` error.
    """

    name: str
    simulated: bool

    async def get_candles(
        self, symbol: str, timeframe: Timeframe | str, limit: int, end: int | None = None
    ) -> Candles: ...

    async def aclose(self) -> None: ...
