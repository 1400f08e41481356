"""The local candle store that ``conclave data fetch`` fills, one file per series.

Layout: ``<root>/<source-slug>/<SYMBOL>_<tf>.parquet`` (or ``.csv``), for example
``data/candles/binance/BTCUSDT_1h.parquet``; a store directory of one source is readable
afterwards as the source ``file:<root>/<source-slug>``.

Updates are incremental: what is stored is read, only bars after the last stored one are
asked for, paging forward in windows of ``page_limit`` bars by passing each window's end as
``end``, and only closed bars are kept (a still-open bar would never be corrected later).
The merged series is written atomically, so an interrupted fetch leaves the old file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conclave.market.candles import Candles, concat
from conclave.market.sources.base import MAX_LIMIT, CandleSource, check_limit, check_symbol
from conclave.market.validation import drop_unclosed, sort_and_merge_duplicates
from conclave.timeframes import Timeframe

#: Called after each page with (pages done, pages planned).
ProgressCallback = Callable[[int, int], None]

_SLUG_BAD = re.compile(r"[^A-Za-z0-9._-]+")


def source_slug(name: str) -> str:
    """A directory name for a source name: ``sim:7`` -> ``sim-7``, ``ccxt:okx`` -> ``ccxt-okx``."""
    slug = _SLUG_BAD.sub("-", name).strip("-.")
    return slug or "source"


@dataclass(frozen=True, slots=True)
class UpdateResult:
    """What one incremental update did: rows added, rows now stored, requests made."""

    symbol: str
    timeframe: str
    path: Path
    added: int
    rows: int
    requests: int
    first_open_ms: int | None
    last_open_ms: int | None


class CandleStore:
    """Candle files under ``root``, one directory per source; ``suffix`` picks the format."""

    def __init__(self, root: Path, *, suffix: str = ".parquet") -> None:
        if suffix not in (".parquet", ".csv"):
            raise ValueError(f"suffix must be .parquet or .csv, got {suffix!r}")
        self.root = root
        self.suffix = suffix

    def directory(self, source_name: str) -> Path:
        """The directory holding one source's files (read it back with ``file:<dir>``)."""
        return self.root / source_slug(source_name)

    def path_for(self, source_name: str, symbol: str, timeframe: Timeframe | str) -> Path:
        """The file of one series."""
        tf = Timeframe.parse(timeframe)
        return self.directory(source_name) / f"{check_symbol(symbol)}_{tf.name}{self.suffix}"

    async def read(
        self, source_name: str, symbol: str, timeframe: Timeframe | str
    ) -> Candles | None:
        """Every stored bar of one series, or None when nothing is stored yet."""
        from conclave.market.sources.files import FileSource

        path = self.path_for(source_name, symbol, timeframe)
        if not path.is_file():
            return None
        reader = FileSource(path)
        try:
            stored = await reader.get_candles(symbol, timeframe, MAX_LIMIT)
        finally:
            await reader.aclose()
        return stored.relabel(symbol=symbol, source=source_name)

    async def update(
        self,
        source: CandleSource,
        symbol: str,
        timeframe: Timeframe | str,
        *,
        now_ms: int,
        since_ms: int | None = None,
        backfill_bars: int = 1000,
        page_limit: int = 1000,
        on_progress: ProgressCallback | None = None,
    ) -> UpdateResult:
        """Fetch the closed bars after the last stored one (up to ``now_ms``) and store them.

        With nothing stored, start at ``since_ms`` or, without it, ``backfill_bars`` bars
        before ``now_ms``. Each request asks for ``page_limit`` bars (Binance's maximum is
        1000) ending at the window's end.
        """
        from conclave.market.sources.files import write_candles

        check_symbol(symbol)
        tf = Timeframe.parse(timeframe)
        check_limit(page_limit)
        path = self.path_for(source.name, symbol, tf)
        stored = await self.read(source.name, symbol, tf)

        if stored is not None and stored.last_open_ms is not None:
            start = tf.add(stored.last_open_ms, 1)
        elif since_ms is not None:
            start = tf.floor(since_ms)
        else:
            start = tf.add(tf.floor(now_ms), -check_limit(backfill_bars))
        # bars opening at or after the current bucket are still open: never ask for them
        stop = tf.floor(now_ms)
        window_ms = page_limit * tf.ms
        planned = max(1, math.ceil((stop - start) / window_ms)) if start < stop else 0

        pages: list[Candles] = []
        requests = 0
        while start < stop:
            end = min(tf.add(start, page_limit), stop)
            wanted = min(page_limit, tf.bars_between(start, tf.floor(end - 1)) + 1)
            page = await source.get_candles(symbol, tf, wanted, end)
            requests += 1
            pages.append(page.take(page.open_time >= start).relabel(symbol=symbol))
            start = end
            if on_progress is not None:
                on_progress(requests, max(planned, requests))

        fresh, _ = drop_unclosed(concat(pages), now_ms) if pages else (None, 0)
        before = 0 if stored is None else len(stored)
        if fresh is None or len(fresh) == 0:
            final = stored
        else:
            parts = [fresh] if stored is None else [stored.relabel(source=fresh.source), fresh]
            final, _ = sort_and_merge_duplicates(concat(parts))
            path.parent.mkdir(parents=True, exist_ok=True)
            write_candles(path, final)
        rows = 0 if final is None else len(final)
        return UpdateResult(
            symbol=symbol,
            timeframe=tf.name,
            path=path,
            added=rows - before,
            rows=rows,
            requests=requests,
            first_open_ms=None if final is None else final.first_open_ms,
            last_open_ms=None if final is None else final.last_open_ms,
        )
