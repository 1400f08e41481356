"""Read and write candle files: our CSV, common CSV variants, Parquet and freqtrade JSON.

`read_candles` accepts our format (``open_time_ms,open,high,low,close,volume`` plus the
optional ``taker_buy_volume,trades``), CSV files with other headers (case-insensitive
aliases such as ``Date``/``timestamp``, ``Volume BTC``; times as epoch s/ms/us or date
strings), Yahoo exports, CryptoDataDownload exports (banner line, newest first, 12-hour
times), Binance's public kline dumps (12 columns, no header), LEAN zips, Parquet and
freqtrade's ``[[ms, o, h, l, c, v], ...]`` JSON. Rows come back sorted by open time; bad
content raises `InvalidCandlesError` naming the file and the line (or row) and column.
`write_candles` writes our CSV or Parquet atomically.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa
import pyarrow.csv as pcsv

from conclave.errors import ConfigurationError, InvalidCandlesError
from conclave.market.candles import Candles
from conclave.timeframes import BINANCE_INTERVALS, DAY_MS, Timeframe

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
_Columns = dict[str, npt.NDArray[Any]]

OUR_COLUMNS = ("open_time_ms", "open", "high", "low", "close", "volume")
_NUMERIC = ("open", "high", "low", "close", "volume", "taker_buy_volume", "trades")
_ALIASES = {
    "time": {"open_time_ms", "open_time", "opentime", "timestamp", "time", "date", "datetime",
             "date_time", "unix", "unix_timestamp", "ts", "t", "date_utc", "time_utc"},
    "open": {"open", "o", "open_price"},
    "high": {"high", "h", "high_price"},
    "low": {"low", "l", "low_price"},
    "close": {"close", "c", "close_price", "last"},
    "taker_buy_volume": {"taker_buy_volume", "taker_buy_base_volume",
                         "taker_buy_base_asset_volume"},
    "trades": {"trades", "number_of_trades", "num_trades", "trade_count", "count"},
}  # fmt: skip
_VOLUME_RE = re.compile(r"^(?:volume|vol|v|base_volume)(?:_(?P<unit>[a-z0-9]+))?$")
_QUOTES = {"usd", "usdt", "usdc", "busd", "eur", "gbp", "quote", "from", "to", "base"}
#: Binance kline dump / REST order: the 12 columns of ``/api/v3/klines``.
_KLINE_COLUMNS = (*OUR_COLUMNS, "close_time", "quote_volume", "trades", "taker_buy_volume",
                  "taker_buy_quote", "ignore")  # fmt: skip
#: Arrow types whose buffer numpy reads as it is.
_NUMPY_TYPES: dict[pa.DataType, type[np.generic]] = {pa.float64(): np.float64, pa.int64(): np.int64}
_TIME_FORMATS = ("%Y-%m-%d %I-%p", "%Y%m%d %H:%M", "%Y%m%d", "%Y-%m-%d %I:%M:%S %p",
                 "%m/%d/%Y %H:%M", "%m/%d/%Y", "%d.%m.%Y %H:%M", "%d.%m.%Y")  # fmt: skip


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.strip().strip('"').lower()).strip("_")


def _bad(path: Path, what: str) -> InvalidCandlesError:
    return InvalidCandlesError(f"{path}: {what}")


def map_columns(names: list[str], symbol: str | None) -> dict[str, int]:
    """Map canonical fields (``time``, ``open``, ..., ``volume``) to column positions.

    Volume prefers a ``volume_<base>`` column whose unit starts the symbol, then any
    ``volume_<unit>`` not in a quote currency, then plain ``volume`` (in CryptoDataDownload
    files the plain one is in the quote currency).
    """
    normed = [_norm(n) for n in names]
    found: dict[str, int] = {}
    for field, aliases in _ALIASES.items():
        for i, n in enumerate(normed):
            if n in aliases and field not in found:
                found[field] = i
    volumes = [(i, m.group("unit")) for i, n in enumerate(normed) if (m := _VOLUME_RE.match(n))]
    base = [i for i, u in volumes if u and symbol and symbol.lower().startswith(u)]
    other = [i for i, u in volumes if u and u not in _QUOTES]
    plain = [i for i, u in volumes if not u]
    for pick in (base, other, plain):
        if pick:
            found["volume"] = pick[0]
            break
    return found


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _sniff(path: Path, data: bytes) -> tuple[int, str, list[str] | None]:
    """Find the first header or data line: (lines to skip, delimiter, header or None)."""
    for i, raw in enumerate(data[:16384].splitlines()[:4]):
        line = raw.decode("utf-8-sig", errors="replace")
        delim = max((",", ";", "\t"), key=line.count)
        fields = [f.strip().strip('"') for f in line.split(delim)]
        if {"open", "high", "low", "close"} <= set(map_columns(fields, None)):
            return i, delim, fields
        if len(fields) >= 5 and all(_is_number(f) for f in fields[1:5]):
            return i, delim, None
    raise _bad(path, "no header with open/high/low/close and no data row in the first lines")


def _locate_csv_error(path: Path, text: str, skip: int, delim: str, width: int) -> str:
    """Slow path for an error message: the first line and column that do not parse."""
    lines = text.splitlines()[skip:]
    for n, row in enumerate(csv.reader(lines, delimiter=delim), start=skip + 1):
        if n == skip + 1 and not _is_number(row[1] if len(row) > 1 else ""):
            continue
        if len(row) != width:
            return f"line {n}: expected {width} columns, got {len(row)}"
        for j, cell in enumerate(row[1:5], start=2):
            if not _is_number(cell):
                return f"line {n}, column {j}: not a number: {cell[:40]!r}"
    return "unparseable content"


def _numpy(col: pa.ChunkedArray | pa.Array, dtype: type[np.generic]) -> npt.NDArray[Any]:
    """A column without nulls as a numpy array of ``dtype``, as ``np.asarray(col.to_numpy())``.

    Float64 and int64 columns are read from the Arrow buffers: ``to_numpy`` goes through
    Arrow's pandas conversion, which imports pandas (about 0.3 s) on first use.
    """
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    parts: list[npt.NDArray[Any]] = []
    for chunk in chunks:
        np_type = _NUMPY_TYPES.get(chunk.type)
        if np_type is None:  # another type: Arrow's own conversion
            parts.append(np.asarray(chunk.to_numpy(zero_copy_only=False), dtype=dtype))
        elif len(chunk):
            width = np.dtype(np_type).itemsize
            parts.append(np.frombuffer(chunk.buffers()[1], dtype=np_type, count=len(chunk),
                                       offset=chunk.offset * width))  # fmt: skip
    return np.asarray(np.concatenate(parts) if parts else np.empty(0, dtype), dtype=dtype)


def _arrow(values: npt.NDArray[Any]) -> pa.Array:
    """A numpy column as an Arrow array, as ``pa.array(values)``; float64 and int64 ones over
    the numpy buffer (``pa.array`` imports pandas on first use, about 0.3 s)."""
    arr = np.ascontiguousarray(values)
    typ = {np.dtype(np.float64): pa.float64(), np.dtype(np.int64): pa.int64()}.get(arr.dtype)
    if typ is None:
        return pa.array(arr)
    return pa.Array.from_buffers(typ, len(arr), [None, pa.py_buffer(arr)])


def _epoch_ms(values: npt.NDArray[Any]) -> I64:
    """Epoch numbers in s, ms, us or ns (told apart by magnitude) to integer ms."""
    v = np.asarray(values, dtype=np.float64)
    top = float(np.nanmax(np.abs(v))) if v.size else 0.0
    scale = 1e3 if top < 1e11 else 1.0 if top < 1e14 else 1e-3 if top < 1e17 else 1e-6
    return np.asarray(np.round(v * scale), dtype=np.int64)


def _time_ms(path: Path, col: pa.ChunkedArray) -> I64:
    """Convert a time column of any supported type to epoch ms (naive times are UTC)."""
    typ = col.type
    if pa.types.is_integer(typ) or pa.types.is_floating(typ):
        return _epoch_ms(_numpy(col, np.float64))
    import pyarrow.compute as pc  # here: about 0.1 s to import, for times as text or dates

    if pa.types.is_date(typ) or pa.types.is_timestamp(typ):
        ts = pc.cast(col, pa.timestamp("ms", tz=getattr(typ, "tz", None)))
        return np.asarray(_numpy(pc.cast(ts, pa.int64()), np.int64))
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        text = pc.utf8_trim_whitespace(col)
        attempts: list[Any] = [
            lambda: pc.cast(text, pa.timestamp("ms")),
            lambda: pc.cast(text, pa.timestamp("ms", tz="UTC")),
            *[lambda f=f: pc.strptime(text, format=f, unit="ms") for f in _TIME_FORMATS],
        ]
        for attempt in attempts:
            try:
                ts = attempt()
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
            return np.asarray(_numpy(pc.cast(ts, pa.int64()), np.int64))
        raise _bad(path, f"time column: cannot parse values such as {str(col[0])[:40]!r}")
    raise _bad(path, f"time column has unsupported type {typ}")


def _read_csv(path: Path, data: bytes, symbol: str | None) -> _Columns:
    skip, delim, header = _sniff(path, data)
    first_line = skip + (2 if header is not None else 1)
    if header is None:
        width = len(data[:16384].splitlines()[skip].split(delim.encode()))
        names = list(_KLINE_COLUMNS[:width]) + [f"extra_{i}" for i in range(12, width)]
        if width == 8:
            names = [*OUR_COLUMNS, "taker_buy_volume", "trades"]
        mapping = map_columns(names, symbol)
    else:
        width = len(header)
        names = [f"c{i}" for i in range(width)]
        mapping = map_columns(header, symbol)
    missing = [f for f in ("time", "open", "high", "low", "close", "volume") if f not in mapping]
    if missing:
        raise _bad(path, f"no column for {', '.join(missing)} in {header or names}")
    types = {names[i]: pa.int64() if f == "trades" else pa.float64() for f, i in mapping.items()}
    del types[names[mapping["time"]]]
    try:
        table = pcsv.read_csv(
            pa.BufferReader(data),
            read_options=pcsv.ReadOptions(
                skip_rows=skip + (1 if header is not None else 0),
                column_names=names,
            ),
            parse_options=pcsv.ParseOptions(delimiter=delim),
            convert_options=pcsv.ConvertOptions(
                column_types=types, include_columns=[names[i] for i in mapping.values()]
            ),
        )
    except pa.ArrowInvalid as exc:
        where = _locate_csv_error(path, data.decode("utf-8", "replace"), skip, delim, width)
        raise _bad(path, f"{where} ({exc})") from exc
    cols = {f: table.column(names[i]) for f, i in mapping.items()}
    return _build(path, cols, lambda row: f"line {first_line + row}")


def _read_json(path: Path, data: bytes, symbol: str | None) -> _Columns:
    try:
        rows = orjson.loads(data)
        arr = np.asarray(rows, dtype=np.float64)
    except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
        what = "not a JSON array of [ms, open, high, low, close, volume] rows"
        raise _bad(path, f"{what}: {exc}") from exc
    if arr.size == 0:
        arr = arr.reshape(0, 6)
    if arr.ndim != 2 or arr.shape[1] < 6:
        raise _bad(path, f"expected rows of at least 6 numbers, got shape {arr.shape}")
    names = _KLINE_COLUMNS if arr.shape[1] >= 12 else OUR_COLUMNS
    cols: dict[str, Any] = {f: pa.chunked_array([arr[:, i]]) for f, i in
                            map_columns(list(names), symbol).items()}  # fmt: skip
    return _build(path, cols, lambda row: f"row {row}")


def _read_parquet(path: Path, symbol: str | None) -> _Columns:
    import pyarrow.parquet as pq  # here: only Parquet files need it

    try:  # one file, without `read_table`'s dataset layer (which imports pandas, ~0.3 s)
        table = pq.ParquetFile(path).read()
    except (pa.ArrowInvalid, OSError):
        try:  # a directory of parts, or the error message `read_table` gives
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise _bad(path, f"not a readable Parquet file: {exc}") from exc
    mapping = map_columns(table.column_names, symbol)
    cols = {f: table.column(i) for f, i in mapping.items()}
    return _build(path, cols, lambda row: f"row {row}")


def _build(path: Path, cols: dict[str, Any], where: Any) -> _Columns:
    """Columns to sorted candles; null, non-finite or conflicting duplicate rows raise."""
    missing = [f for f in ("time", "open", "high", "low", "close", "volume") if f not in cols]
    if missing:
        raise _bad(path, f"no column for {', '.join(missing)}")
    arrays: dict[str, npt.NDArray[Any]] = {}
    for field in _NUMERIC:
        if field not in cols:
            continue
        col = cols[field]
        if col.null_count:
            row = int(np.flatnonzero(np.asarray(col.is_null().to_numpy(zero_copy_only=False)))[0])
            raise _bad(path, f"{where(row)}, column {field}: empty or not a number")
        values = _numpy(col, np.int64 if field == "trades" else np.float64)
        if field != "trades" and not np.all(np.isfinite(values)):
            row = int(np.flatnonzero(~np.isfinite(values))[0])
            raise _bad(path, f"{where(row)}, column {field}: not a finite number")
        arrays[field] = values
    if cols["time"].null_count:
        row = int(np.flatnonzero(np.asarray(cols["time"].is_null().to_numpy(False)))[0])
        raise _bad(path, f"{where(row)}, time column: empty")
    t = _time_ms(path, cols["time"])
    order = np.argsort(t, kind="stable")
    if len(t) > 1 and not np.all(t[1:] > t[:-1]):
        ts = t[order]
        dup = np.flatnonzero(ts[1:] == ts[:-1])
        rows = np.stack([a[order] for a in arrays.values()])
        same = np.all(rows[:, dup] == rows[:, dup + 1], axis=0)
        if not same.all():
            i = int(dup[np.flatnonzero(~same)[0]])
            a, b = sorted((int(order[i]), int(order[i + 1])))
            raise _bad(path, f"{where(a)} and {where(b)}: same open time, different values")
        order = np.delete(order, dup + 1)
    arrays["open_time"] = t
    return {k: v[order] for k, v in arrays.items()}


def infer_timeframe(open_time: I64) -> Timeframe | None:
    """The known timeframe equal to the most common step between open times, if any."""
    if len(open_time) < 2:
        return None
    steps, counts = np.unique(np.diff(open_time), return_counts=True)
    step = int(steps[np.argmax(counts)])
    if 28 * DAY_MS <= step <= 31 * DAY_MS:
        return Timeframe.parse("1M")
    by_ms = {Timeframe.parse(n).ms: n for n in BINANCE_INTERVALS if n != "1M"}
    return Timeframe.parse(by_ms[step]) if step in by_ms else None


def read_candles(
    path: Path | str, *, symbol: str | None = None, timeframe: Timeframe | str | None = None
) -> Candles:
    """Parse one candle file into sorted candles (open times in ms UTC).

    The format follows the suffix (``.parquet``, ``.json``, ``.zip``, ``.gz``, else CSV).
    ``timeframe`` labels the result; without it, the most common step between bars decides.
    Raises `ConfigurationError` when the file is missing and `InvalidCandlesError` naming
    the file, line and column when its content is not candles.
    """
    p = Path(path)
    try:
        if p.suffix.lower() in {".parquet", ".pq"}:
            out = _read_parquet(p, symbol)
        else:
            data = p.read_bytes()
            if p.suffix.lower() == ".gz":
                data = gzip.decompress(data)
            if p.suffix.lower() == ".zip":
                with zipfile.ZipFile(io.BytesIO(data)) as zf:
                    members = [n for n in zf.namelist() if not n.endswith("/")]
                    if len(members) != 1:
                        raise _bad(p, f"expected one file in the zip, found {len(members)}")
                    data = zf.read(members[0])
            is_json = p.name.lower().endswith((".json", ".json.gz"))
            out = _read_json(p, data, symbol) if is_json else _read_csv(p, data, symbol)
    except FileNotFoundError as exc:
        raise ConfigurationError(f"candle file not found: {p}", reason="file_not_found") from exc
    except (IsADirectoryError, PermissionError, zipfile.BadZipFile, gzip.BadGzipFile) as exc:
        raise _bad(p, f"cannot read: {exc}") from exc
    tf = Timeframe.parse(timeframe) if timeframe is not None else infer_timeframe(out["open_time"])
    if tf is None:
        raise _bad(p, "cannot tell the timeframe from the bar spacing: pass timeframe=")
    return Candles.from_column_map(symbol or "UNKNOWN", tf, out, source=f"file:{p}")


def write_candles(path: Path | str, candles: Candles) -> None:
    """Write ``candles`` as our CSV or as Parquet (by suffix), atomically via a temp file.

    Optional ``taker_buy_volume`` and ``trades`` columns are written when present; floats
    are written in their shortest exact form, so reading the file back gives equal candles.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in {".csv", ".parquet"}:
        raise ConfigurationError(f"cannot write candles to {p}: use a .csv or .parquet name")
    cols = {"open_time_ms" if k == "open_time" else k: v for k, v in candles.columns().items()}
    meta = {"symbol": candles.symbol, "timeframe": candles.timeframe.name}
    table = pa.table({k: _arrow(v) for k, v in cols.items()}, metadata=meta)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            if suffix == ".parquet":
                import pyarrow.parquet as pq

                pq.write_table(table, fh)
            else:
                fh.write((",".join(cols) + "\n").encode())
                pcsv.write_csv(table, fh, pcsv.WriteOptions(include_header=False))
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
