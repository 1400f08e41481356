"""Candle sources and the factory that opens one from a spec string.

Specs: ``binance``, ``ccxt:EXCHANGE``, ``file:PATH``, ``sim`` and ``sim:SEED``. Concrete
classes are imported inside `open_source`, so an optional extra (ccxt) costs nothing unless
it is asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from conclave.errors import InvalidRequestError
from conclave.market.sources.base import CandleSource, check_limit, check_symbol
from conclave.settings import Settings

__all__ = ["SOURCE_FORMS", "CandleSource", "check_limit", "check_symbol", "open_source"]

#: The spec forms `open_source` accepts, for messages and help text.
SOURCE_FORMS = ("binance", "ccxt:EXCHANGE", "file:PATH", "sim", "sim:SEED")


def _invalid(spec: str, why: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"invalid source {spec!r}: {why}; expected one of {', '.join(SOURCE_FORMS)}",
        field="source",
    )


def open_source(spec: str, settings: Settings, *, now_ms: Callable[[], int]) -> CandleSource:
    """Open the source named by ``spec``; raise `InvalidRequestError` for a bad spec.

    ``now_ms`` is the wall clock in ms UTC, read at the edge: the simulator uses it to know
    which bars exist yet, Binance's exchange clock as the local clock it measures against.
    """
    kind, sep, arg = spec.partition(":")
    if kind == "binance" and not sep:
        from conclave.market.exchange_time import make_offset_store
        from conclave.market.ratelimit import make_limiter
        from conclave.market.sources.binance import BinanceSource

        market, url = settings.market, settings.redis_url
        prefix, timeout_s = market.cache.key_prefix, market.cache.redis_timeout_s
        limiter = make_limiter(market.binance, url, key_prefix=prefix, redis_timeout_s=timeout_s)
        offsets = make_offset_store(url, key_prefix=prefix, redis_timeout_s=timeout_s)
        return BinanceSource(market.binance, limiter=limiter, wall_ms=now_ms, offsets=offsets)
    if kind == "ccxt":
        if not arg.strip() or not arg.replace("_", "").isalnum():
            raise _invalid(spec, "ccxt needs an exchange id such as ccxt:kraken")
        from conclave.market.sources.ccxt import CcxtSource

        return CcxtSource(arg)
    if kind == "file":
        if not arg.strip():
            raise _invalid(spec, "file needs a path such as file:data/candles")
        from conclave.market.sources.files import FileSource

        return FileSource(Path(arg).expanduser())
    if kind == "sim":
        from conclave.market.sources.sim import SimSource

        if not sep:
            return SimSource(now_ms=now_ms)
        if not arg.isdigit():
            raise _invalid(spec, "the seed must be a whole number such as sim:42")
        return SimSource(int(arg), now_ms=now_ms)
    raise _invalid(spec, "unknown source")
