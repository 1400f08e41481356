"""The file source: candles from one file, or from a directory of files named by convention.

A directory is searched by file name: our store naming ``<SYMBOL>_<tf>.parquet|.csv``
(written by `write_candles`, preferred), the shared data set's
``<venue>_<SYMBOL>_<tf>_<first>-<last>.csv`` (the file reaching furthest wins, then the
longest), freqtrade's ``BTC_USDT-1h.json`` and Binance's dump ``ADABTC-1m-2021-11-27.csv``.
Parsed files are cached per instance by path, size and modification time. The source is
point in time: it returns bars that opened before ``end`` and never reads the clock.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conclave.errors import (
    ConfigurationError,
    InvalidRequestError,
    InvalidTimeframeError,
    UnknownSymbolError,
)
from conclave.market.candles import Candles
from conclave.market.sources.base import check_limit, check_symbol
from conclave.market.sources.file_formats import infer_timeframe, read_candles, write_candles
from conclave.timeframes import Timeframe

__all__ = ["FileName", "FileSource", "parse_file_name", "read_candles", "write_candles"]

_TF = r"(?P<tf>\d+[smhdwM])"
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("store", re.compile(rf"^(?P<symbol>[A-Z0-9_.-]+)_{_TF}\.(?:parquet|csv)$")),
    ("common", re.compile(
        rf"^(?P<venue>[a-z0-9]+)_(?P<symbol>[A-Z0-9.-]+)_{_TF}_(?P<first>\d{{8}})"
        r"(?:-(?P<last>\d{8}))?\.csv$")),
    ("freqtrade", re.compile(
        rf"^(?P<base>[A-Z0-9]+)_(?P<quote>[A-Z0-9]+)(?:_[A-Z0-9]+)?-{_TF}(?:-[a-z_]+)?"
        r"\.(?:json|json\.gz|parquet)$")),
    ("dump", re.compile(
        rf"^(?P<symbol>[A-Z0-9]+)-{_TF}-\d{{4}}-\d{{2}}(?:-\d{{2}})?\.(?:csv|zip)$")),
    ("cryptodatadownload", re.compile(
        r"^(?P<venue>[A-Za-z]+)_(?P<symbol>[A-Z0-9]+)_(?P<tf>\d*[mhd])\.csv$")),
)  # fmt: skip
_RANK = {kind: i for i, (kind, _) in enumerate(_PATTERNS)}


@dataclass(frozen=True, slots=True)
class FileName:
    """What a candle file's name states: its naming kind, symbol, timeframe and span."""

    kind: str
    symbol: str
    timeframe: Timeframe | None
    venue: str | None = None
    first_day: str = ""
    last_day: str = ""


def parse_file_name(name: str) -> FileName | None:
    """Read symbol, timeframe and span from a file name; None when no convention matches."""
    for kind, pattern in _PATTERNS:
        m = pattern.match(name)
        if m is None:
            continue
        groups = m.groupdict()
        tf_text = groups["tf"] if groups["tf"][0].isdigit() else "1" + groups["tf"]
        try:
            tf: Timeframe | None = Timeframe.parse(tf_text)
        except InvalidTimeframeError:
            tf = None
        symbol = groups.get("symbol") or f"{groups['base']}{groups['quote']}"
        first = groups.get("first") or ""
        return FileName(kind, symbol, tf, groups.get("venue"), first, groups.get("last") or first)
    return None


class FileSource:
    """Candles read from a file or a directory of files; never simulated."""

    simulated = False

    def __init__(self, path: Path | str, *, venue: str | None = None) -> None:
        """Serve ``path`` (a file, or a directory searched by name, optionally one venue)."""
        self.path = Path(path)
        self.venue = venue
        self.name = f"file:{self.path}"
        self._cache: dict[Path, tuple[int, int, Candles]] = {}

    def locate(self, symbol: str, timeframe: Timeframe | str) -> Path:
        """The file holding ``symbol`` at ``timeframe``; raises naming what is available."""
        tf = Timeframe.parse(timeframe)
        check_symbol(symbol)
        if not self.path.exists():
            raise ConfigurationError(f"candle path not found: {self.path}", reason="file_not_found")
        if not self.path.is_dir():
            stated = parse_file_name(self.path.name)
            if stated is not None and stated.timeframe not in (None, tf):
                raise InvalidRequestError(
                    f"{self.path} holds {stated.timeframe} candles, not {tf}", field="timeframe"
                )
            return self.path
        named = [(p, parse_file_name(p.name)) for p in sorted(self.path.iterdir()) if p.is_file()]
        mine = [
            (p, n)
            for p, n in named
            if n is not None and n.symbol == symbol and (self.venue in (None, n.venue))
        ]
        hits = [(p, n) for p, n in mine if n.timeframe == tf]
        if not hits:
            if mine:
                have = ", ".join(sorted({str(n.timeframe) for _, n in mine}))
                raise InvalidRequestError(
                    f"no {symbol} {tf} candle file in {self.path} (it has {symbol} at {have})",
                    field="timeframe",
                )
            raise UnknownSymbolError(f"no candle file for {symbol} in {self.path}")

        def rank(item: tuple[Path, FileName]) -> tuple[int, int, int, str]:
            p, n = item
            last, first = int(n.last_day or 0), int(n.first_day or 0)
            return (_RANK[n.kind], p.suffix != ".parquet", -last, f"{first:08d}{p.name}")

        return min(hits, key=rank)[0]

    def load(self, symbol: str, timeframe: Timeframe | str) -> Candles:
        """Every bar of the file for ``symbol`` at ``timeframe``, sorted, parsed once per change.

        Raises `InvalidRequestError` when the bars are spaced at another known timeframe.
        """
        tf = Timeframe.parse(timeframe)
        path = self.locate(symbol, tf)
        stat = path.stat()
        cached = self._cache.get(path)
        if cached is not None and cached[:2] == (stat.st_mtime_ns, stat.st_size):
            return cached[2].relabel(symbol=symbol)
        stated = parse_file_name(path.name)
        candles = read_candles(path, symbol=stated.symbol if stated else symbol, timeframe=tf)
        spaced = infer_timeframe(candles.open_time)
        if spaced is not None and spaced != tf:
            raise InvalidRequestError(
                f"{path} holds bars {spaced} apart, not {tf} candles", field="timeframe"
            )
        candles = candles.relabel(symbol=symbol, source=self.name)
        self._cache[path] = (stat.st_mtime_ns, stat.st_size, candles)
        return candles

    async def get_candles(
        self, symbol: str, timeframe: Timeframe | str, limit: int, end: int | None = None
    ) -> Candles:
        """The newest ``limit`` bars that opened strictly before ``end`` (ms UTC; None: all)."""
        check_limit(limit)
        check_symbol(symbol)
        tf = Timeframe.parse(timeframe)
        candles = await asyncio.to_thread(self.load, symbol, tf)
        # cut by index first, so that only the ``limit`` bars returned are copied
        stop = len(candles) if end is None else int(np.searchsorted(candles.open_time, end))
        return candles.take(slice(max(0, stop - limit), stop))

    async def aclose(self) -> None:
        """Drop the parsed files."""
        self._cache.clear()
