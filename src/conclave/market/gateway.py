"""The market gateway: everything one pipeline run reads about one symbol, point in time.

`MarketGateway.snapshot` fetches each (symbol, timeframe) once, always with ``end`` = the
open time of the bar in progress at ``as_of_ms``, so the answer depends only on its arguments
and is the same for every ``as_of_ms`` inside one bar (and is therefore cacheable),
validates every window against ``as_of_ms`` (the still-open bar is dropped, stale data
refused) and returns an immutable `MarketSnapshot`.

Higher timeframes are either fetched from the source or resampled from the base timeframe.
The ``"auto"`` policy resamples when the base timeframe tiles the higher one and the base
history needed, ``(higher_limit + 2) * ratio + 1`` bars (one spare bucket for a partial first
bucket, one for the still-open bucket, one for the still-open base bar), is at most
``max(limit, max_resample_bars)``: then one base request (one Binance page by default) serves
both. Otherwise the higher timeframe is one more request, which is cheaper than paging
through many base bars.

A live source's exchange decides which bar has closed (RELIABILITY.md A8): when the source
exposes an ``exchange_clock``, ``as_of_ms`` is capped at the exchange's now (local clock plus
the measured offset), so a caller whose clock runs ahead never gets a bar the exchange still
has open, and `MarketGateway.now_ms` gives callers "now" by that clock. Other sources keep
the caller's clock.

Every fetch that reaches the source (a cache hit does not) is recorded in `FetchLog`: the
newest success and the newest failure with its reason (``exchange_unavailable``,
``rate_limited``, ``ip_banned``, ...), so ``/health`` can say whether the exchange works now
rather than whether it is configured (issue 11 item 5).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from conclave.errors import ConclaveError, InvalidRequestError
from conclave.market.candles import Candles
from conclave.market.exchange_time import exchange_clock_of
from conclave.market.resample import resample
from conclave.market.sources.base import MAX_LIMIT, CandleSource, check_limit, check_symbol
from conclave.market.validation import ValidationReport, find_gaps, validate
from conclave.timeframes import DAY_MS, Timeframe

if TYPE_CHECKING:  # the cache (and its metrics, prometheus_client) loads only when one is used
    from conclave.market.cache import CandleCache

ResamplePolicy = Literal["auto", "fetch", "resample"]


@dataclass(frozen=True, slots=True)
class MarketSnapshot:
    """Validated, closed candles of one symbol by timeframe name, as of ``as_of_ms``.

    ``timeframe`` is the base timeframe; ``resampled`` names the higher timeframes built
    from it rather than fetched. ``simulated`` is true for sim data, which must be labelled.
    """

    symbol: str
    timeframe: str
    as_of_ms: int
    candles: Mapping[str, Candles]
    reports: Mapping[str, ValidationReport]
    source: str
    simulated: bool
    resampled: frozenset[str] = field(default_factory=frozenset)

    @property
    def base(self) -> Candles:
        """The candles of the base timeframe."""
        return self.candles[self.timeframe]


#: Times a window that lost rows to validation is read again, longer, to hold ``limit`` bars.
REFILLS = 3


@dataclass(frozen=True, slots=True)
class Fetch:
    """One recorded fetch: when (ms UTC), and for a failure its ``reason`` code and message."""

    at_ms: int
    seq: int
    reason: str = ""
    message: str = ""


class FetchLog:
    """The newest successful and the newest failed source fetch, for ``/health``.

    Order is by a sequence number, not the clock, so a success and a failure in the same
    millisecond still have a newest. ``clock`` is ms UTC (default: the wall clock).
    """

    def __init__(self, clock: Callable[[], int] | None = None) -> None:
        self._clock = clock or (lambda: time.time_ns() // 1_000_000)
        self._seq = itertools.count(1)
        self.last_success: Fetch | None = None
        self.last_error: Fetch | None = None

    def succeeded(self) -> None:
        self.last_success = Fetch(self._clock(), next(self._seq))

    def failed(self, reason: str, message: str) -> None:
        self.last_error = Fetch(self._clock(), next(self._seq), reason, message[:200])

    @property
    def failing(self) -> bool:
        """True when the newest fetch failed: an error and no success since."""
        err, ok = self.last_error, self.last_success
        return err is not None and (ok is None or err.seq > ok.seq)


class RecordingSource:
    """A `CandleSource` that records each fetch of the wrapped one in a `FetchLog`.

    A bad request (`InvalidRequestError`, an unlisted symbol included) is the caller's
    mistake and says nothing about the exchange: it is not recorded. Cancellation is not
    a failure either. Any other exception is, by its ``reason`` (``internal`` for a
    non-Conclave one, which a source should never let out).
    """

    def __init__(self, source: CandleSource, fetches: FetchLog) -> None:
        self.source = source
        self.fetches = fetches
        self.name = source.name
        self.simulated = source.simulated

    async def get_candles(
        self, symbol: str, timeframe: Timeframe | str, limit: int, end: int | None = None
    ) -> Candles:
        """Same contract as the wrapped source's ``get_candles``."""
        try:
            candles = await self.source.get_candles(symbol, timeframe, limit, end)
        except InvalidRequestError:
            raise
        except ConclaveError as exc:
            self.fetches.failed(exc.reason, str(exc))
            raise
        except Exception as exc:
            self.fetches.failed("internal", type(exc).__name__)
            raise
        self.fetches.succeeded()
        return candles

    async def aclose(self) -> None:
        await self.source.aclose()


def _bars_wanted(higher_limit: int | Mapping[str, int], tf: Timeframe, limit: int) -> int:
    """Bars of ``tf`` wanted: ``higher_limit`` itself, or its entry for ``tf`` (else ``limit``)."""
    if isinstance(higher_limit, Mapping):
        return higher_limit.get(tf.name, limit)
    return higher_limit


def _trim(candles: Candles, report: ValidationReport, n: int) -> tuple[Candles, ValidationReport]:
    """The newest ``n`` bars with rows and gaps recounted for that window."""
    if len(candles) <= n:
        return candles, report
    out = candles.tail(n)
    return out, replace(report, rows=len(out), gaps=find_gaps(out))


class MarketGateway:
    """Serves `MarketSnapshot`s from a source, optionally through a cache.

    ``cache`` wraps the source in a `CachedSource` (entries live at most ``cache_ttl_s`` and
    one bar); ``origin`` is the source as given (its ``limiter``, if any, holds the pause or
    ban latch), ``fetches`` the `FetchLog` of what reached it. ``resample`` is ``"auto"``
    (see the module docstring), ``"fetch"`` (every timeframe from the source) or
    ``"resample"`` (every higher timeframe the base tiles is built from the base, however
    much base history that takes). ``clock`` (ms UTC; default the exchange clock's local
    clock for a live source, else the wall clock) stamps fetches.
    """

    def __init__(
        self,
        source: CandleSource,
        *,
        cache: CandleCache | None = None,
        cache_ttl_s: float = 30.0,
        resample: ResamplePolicy = "auto",
        max_resample_bars: int = 1000,
        clock: Callable[[], int] | None = None,
    ) -> None:
        if resample not in ("auto", "fetch", "resample"):
            raise ValueError(f"unknown resample policy {resample!r}")
        #: the live source's exchange clock; None: the caller's clock decides what has closed
        self.exchange_clock = exchange_clock_of(source)
        self.origin = source
        self.cache = cache
        if clock is None and self.exchange_clock is not None:
            clock = self.exchange_clock.local_ms  # the clock its skew is measured against
        self.fetches = FetchLog(clock)
        recorded = RecordingSource(source, self.fetches)
        self.source: CandleSource = recorded
        if cache is not None:
            from conclave.market.cache import CachedSource

            self.source = CachedSource(recorded, cache, ttl_s=cache_ttl_s)
        self._policy = resample
        self._max_resample_bars = max_resample_bars

    async def now_ms(self, local_now_ms: int) -> int:
        """Now in ms UTC for closed-candle decisions: ``local_now_ms`` plus the exchange's
        measured offset less half its round trip for a live source (refreshed when due; see
        `ExchangeClock.closed_by_ms`), else ``local_now_ms``."""
        if self.exchange_clock is None:
            return local_now_ms
        await self.exchange_clock.sync()
        return self.exchange_clock.closed_by_ms(local_now_ms)

    def resample_plan(
        self,
        base: Timeframe,
        higher: Sequence[Timeframe],
        limit: int,
        higher_limit: int | Mapping[str, int],
    ) -> tuple[int, list[Timeframe]]:
        """Base bars to fetch and the higher timeframes to resample from them.

        ``higher_limit`` is the number of bars wanted of every higher timeframe, or a
        mapping of timeframe names to it (``limit`` for those it does not name).
        """
        base_limit = min(limit + 1, MAX_LIMIT)  # the newest bar may still be open at as_of
        planned: list[Timeframe] = []
        if self._policy == "fetch":
            return base_limit, planned
        for tf in higher:
            if not base.divides(tf):
                continue
            wanted = _bars_wanted(higher_limit, tf, limit)
            longest = 31 * DAY_MS if tf.is_monthly else tf.ms  # a calendar month: 28-31 days
            needed = (wanted + 2) * -(-longest // base.ms) + 1
            if self._policy == "resample" or needed <= max(limit, self._max_resample_bars):
                planned.append(tf)
                base_limit = min(max(base_limit, needed), MAX_LIMIT)
        return base_limit, planned

    async def snapshot(
        self,
        symbol: str,
        timeframe: Timeframe | str,
        *,
        higher: Sequence[Timeframe | str] = (),
        limit: int,
        higher_limit: int | Mapping[str, int] | None = None,
        as_of_ms: int,
        require_fresh: bool = True,
    ) -> MarketSnapshot:
        """The newest ``limit`` closed bars of ``timeframe`` (and ``higher_limit``, by default
        ``limit``, of each higher timeframe; a mapping gives it per timeframe name) as of
        ``as_of_ms`` ms UTC (for a live source at most the exchange's now).

        Raises `StaleDataError` when the data is stale and ``require_fresh`` is set, and
        `InvalidRequestError` (before any I/O) for a bad symbol, timeframe or limit.
        """
        check_symbol(symbol)
        base = Timeframe.parse(timeframe)
        check_limit(limit)
        if isinstance(higher_limit, Mapping):
            wanted: int | dict[str, int] = {
                Timeframe.parse(k).name: check_limit(v) for k, v in higher_limit.items()
            }
        else:
            wanted = check_limit(limit if higher_limit is None else higher_limit)
        highers: list[Timeframe] = []
        for value in higher:
            tf = Timeframe.parse(value)
            if tf == base or tf in highers:
                continue  # each (symbol, timeframe) once, however often it is listed
            if tf.ms <= base.ms:
                raise InvalidRequestError(
                    f"higher timeframe {tf} is not above the base timeframe {base}",
                    field="higher",
                )
            highers.append(tf)

        if self.exchange_clock is not None:
            # nothing is closed that the exchange still has open, whatever our clock says
            await self.exchange_clock.sync()
            local = self.exchange_clock.local_ms()
            as_of_ms = min(as_of_ms, self.exchange_clock.closed_by_ms(local))
        base_limit, resampled = self.resample_plan(base, highers, limit, wanted)
        fetched = [tf for tf in highers if tf not in resampled]
        requests = [(base, base_limit)] + [
            (tf, min(_bars_wanted(wanted, tf, limit) + 1, MAX_LIMIT)) for tf in fetched
        ]
        results = await asyncio.gather(
            # end = the open of the bar in progress at as_of: exactly the closed bars, and a
            # key that stays the same for every as_of inside one bar (so the cache hits)
            *(self.source.get_candles(symbol, tf, n, tf.floor(as_of_ms)) for tf, n in requests),
            return_exceptions=True,
        )
        raw: dict[Timeframe, Candles] = {}
        for (tf, _), result in zip(requests, results, strict=True):
            if isinstance(result, BaseException):  # base first, so its error is the one raised
                raise result
            raw[tf] = result

        candles: dict[str, Candles] = {}
        reports: dict[str, ValidationReport] = {}
        base_full, base_report = validate(raw[base], as_of_ms, require_fresh=require_fresh)
        for _ in range(REFILLS):  # rows validation removed are made up from older history
            lost = len(base_report.rejected) + base_report.duplicates_merged
            short = len(base_full) < limit and len(raw[base]) >= base_limit
            if not lost or not short or base_limit >= MAX_LIMIT:
                break
            base_limit = min(base_limit + lost, MAX_LIMIT)
            raw[base] = await self.source.get_candles(
                symbol, base, base_limit, base.floor(as_of_ms)
            )
            base_full, base_report = validate(raw[base], as_of_ms, require_fresh=require_fresh)
        candles[base.name], reports[base.name] = _trim(base_full, base_report, limit)
        for tf in highers:
            if tf in resampled:
                built = resample(base_full, tf, as_of_ms=as_of_ms, trim_leading=True)
                out, report = validate(built, as_of_ms, require_fresh=require_fresh)
            else:
                out, report = validate(raw[tf], as_of_ms, require_fresh=require_fresh)
            candles[tf.name], reports[tf.name] = _trim(out, report, _bars_wanted(wanted, tf, limit))

        return MarketSnapshot(
            symbol=symbol,
            timeframe=base.name,
            as_of_ms=as_of_ms,
            candles=MappingProxyType(candles),
            reports=MappingProxyType(reports),
            source=self.source.name,
            simulated=self.source.simulated,
            resampled=frozenset(tf.name for tf in resampled),
        )

    async def aclose(self) -> None:
        """Close the source (and the cache, when the gateway owns one)."""
        await self.source.aclose()
