"""The immutable candles type: one numpy column per field, open times in ms UTC.

A `Candles` value is a window of bars for one symbol and timeframe, sorted by open time.
Columns are read-only arrays; every operation returns a new value. Optional columns
(``taker_buy_volume``, ``trades``) are ``None`` when the source does not provide them.
``simulated`` is true for data from the sim source, so whatever shows it can label it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from conclave.errors import InvalidCandlesError
from conclave.slots import slot_setters
from conclave.timeframes import Timeframe

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

PRICE_FIELDS = ("open", "high", "low", "close")
REQUIRED_FIELDS = ("open_time", "open", "high", "low", "close", "volume")
OPTIONAL_FIELDS = ("taker_buy_volume", "trades")


def _frozen(values: Any, dtype: type[np.generic]) -> Any:
    arr = np.array(values, dtype=dtype, copy=True)
    if arr.ndim != 1:
        raise InvalidCandlesError(f"candle columns must be one-dimensional, got shape {arr.shape}")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, slots=True, eq=False)
class Candles:
    """OHLCV bars on numpy columns; prices in the quote currency, volume in the base asset."""

    symbol: str
    timeframe: Timeframe
    open_time: I64
    open: F64
    high: F64
    low: F64
    close: F64
    volume: F64
    taker_buy_volume: F64 | None = None
    trades: I64 | None = None
    source: str = "unknown"
    simulated: bool = False

    @classmethod
    def from_arrays(
        cls,
        symbol: str,
        timeframe: Timeframe | str,
        open_time: Any,
        open: Any,
        high: Any,
        low: Any,
        close: Any,
        volume: Any,
        taker_buy_volume: Any | None = None,
        trades: Any | None = None,
        *,
        source: str = "unknown",
        simulated: bool = False,
    ) -> Candles:
        """Build from array-likes, copying them into read-only columns of equal length."""
        tf = Timeframe.parse(timeframe)
        cols = {
            "open_time": _frozen(open_time, np.int64),
            "open": _frozen(open, np.float64),
            "high": _frozen(high, np.float64),
            "low": _frozen(low, np.float64),
            "close": _frozen(close, np.float64),
            "volume": _frozen(volume, np.float64),
            "taker_buy_volume": (
                None if taker_buy_volume is None else _frozen(taker_buy_volume, np.float64)
            ),
            "trades": None if trades is None else _frozen(trades, np.int64),
        }
        lengths = {name: len(col) for name, col in cols.items() if col is not None}
        if len(set(lengths.values())) > 1:
            raise InvalidCandlesError(f"candle columns differ in length: {lengths}")
        return cls(symbol=symbol, timeframe=tf, source=source, simulated=simulated, **cols)

    @classmethod
    def from_column_map(
        cls,
        symbol: str,
        timeframe: Timeframe | str,
        cols: Mapping[str, Any],
        *,
        source: str = "unknown",
        simulated: bool = False,
    ) -> Candles:
        """Build from a mapping of column name to array-like (optional columns may be absent)."""
        return cls.from_arrays(
            symbol,
            timeframe,
            cols["open_time"],
            cols["open"],
            cols["high"],
            cols["low"],
            cols["close"],
            cols["volume"],
            taker_buy_volume=cols.get("taker_buy_volume"),
            trades=cols.get("trades"),
            source=source,
            simulated=simulated,
        )

    @classmethod
    def empty(cls, symbol: str, timeframe: Timeframe | str, *, source: str = "unknown") -> Candles:
        """No bars: what a source returns when none exist in the range asked."""
        z: list[float] = []
        return cls.from_arrays(symbol, timeframe, z, z, z, z, z, z, source=source)

    @classmethod
    def from_columns(cls, data: Mapping[str, Any]) -> Candles:
        """Build from the compact columnar mapping produced by `to_columns`."""
        missing = [k for k in ("symbol", "timeframe", *REQUIRED_FIELDS) if k not in data]
        if missing:
            raise InvalidCandlesError(f"candles are missing field(s): {', '.join(missing)}")
        return cls.from_column_map(
            str(data["symbol"]),
            str(data["timeframe"]),
            data,
            source=str(data.get("source", "unknown")),
            simulated=bool(data.get("simulated", False)),
        )

    def to_columns(self) -> dict[str, Any]:
        """A compact columnar mapping (one list per field), ready for JSON."""
        out: dict[str, Any] = {
            "symbol": self.symbol,
            "timeframe": self.timeframe.name,
            "source": self.source,
            "simulated": self.simulated,
        }
        for name in REQUIRED_FIELDS + OPTIONAL_FIELDS:
            col = getattr(self, name)
            if col is not None:
                out[name] = col.tolist()
        return out

    def __len__(self) -> int:
        return int(self.open_time.shape[0])

    @property
    def close_time(self) -> I64:
        """Exclusive close instant of every bar, in ms (the next bar's open time)."""
        return self.timeframe.close_time_array(self.open_time)

    @property
    def first_open_ms(self) -> int | None:
        return int(self.open_time[0]) if len(self) else None

    @property
    def last_open_ms(self) -> int | None:
        return int(self.open_time[-1]) if len(self) else None

    def columns(self) -> dict[str, Any]:
        """The data columns by name (optional ones only when present)."""
        names = REQUIRED_FIELDS + OPTIONAL_FIELDS
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def take(self, index: Any) -> Candles:
        """Rows selected by a slice, boolean mask or integer index array, as new candles."""
        cols = {n: c[index] for n, c in self.columns().items()}
        return self.with_columns(cols)

    def with_columns(self, cols: Mapping[str, Any]) -> Candles:
        """Same symbol, timeframe and labels with new columns (copied and frozen)."""
        return Candles.from_column_map(
            self.symbol, self.timeframe, cols, source=self.source, simulated=self.simulated
        )

    def tail(self, n: int) -> Candles:
        """The last ``n`` bars (all of them when fewer exist), as views: no copy is made,
        which is safe because every column is read-only (and a view of one is too)."""
        size = self.open_time.shape[0]
        if n >= size:
            return self
        cut = slice(size - max(n, 0), None)
        tb, tr = self.taker_buy_volume, self.trades
        # nine tails a pipeline run: the slots written through their descriptors, as
        # `conclave.agents.outputs` does, in about half the generated ``__init__``'s time
        out = _new_candles(Candles)
        _c_symbol(out, self.symbol)
        _c_timeframe(out, self.timeframe)
        _c_open_time(out, self.open_time[cut])
        _c_open(out, self.open[cut])
        _c_high(out, self.high[cut])
        _c_low(out, self.low[cut])
        _c_close(out, self.close[cut])
        _c_volume(out, self.volume[cut])
        _c_taker_buy_volume(out, None if tb is None else tb[cut])
        _c_trades(out, None if tr is None else tr[cut])
        _c_source(out, self.source)
        _c_simulated(out, self.simulated)
        return out

    def relabel(self, *, symbol: str | None = None, source: str | None = None) -> Candles:
        """Same data under another symbol or source label."""
        return replace(self, symbol=symbol or self.symbol, source=source or self.source)

    def equals(self, other: Candles) -> bool:
        """Exact equality of symbol, timeframe and every column (NaNs compare equal)."""
        if (self.symbol, self.timeframe, len(self)) != (other.symbol, other.timeframe, len(other)):
            return False
        mine, theirs = self.columns(), other.columns()
        if mine.keys() != theirs.keys():
            return False
        return all(np.array_equal(mine[k], theirs[k], equal_nan=True) for k in mine)


_new_candles = object.__new__
(
    _c_symbol, _c_timeframe, _c_open_time, _c_open, _c_high, _c_low, _c_close, _c_volume,
    _c_taker_buy_volume, _c_trades, _c_source, _c_simulated,
) = slot_setters(Candles)  # fmt: skip


def concat(parts: Sequence[Candles]) -> Candles:
    """Join windows of the same symbol and timeframe in the given order (no re-sorting)."""
    if not parts:
        raise InvalidCandlesError("nothing to concatenate")
    first = parts[0]
    if any((p.symbol, p.timeframe) != (first.symbol, first.timeframe) for p in parts):
        raise InvalidCandlesError("cannot concatenate candles of different symbols or timeframes")
    cols: dict[str, Any] = {}
    for name in REQUIRED_FIELDS + OPTIONAL_FIELDS:
        pieces = [getattr(p, name) for p in parts]
        if all(x is not None for x in pieces):
            cols[name] = np.concatenate(pieces)
    return first.with_columns(cols)
