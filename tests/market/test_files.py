"""The file source: every shared candle file reproduces MANIFEST.csv; every format parses."""

from __future__ import annotations

import csv
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conclave.errors import (
    ConfigurationError,
    InvalidCandlesError,
    InvalidRequestError,
    InvalidSymbolError,
    UnknownSymbolError,
)
from conclave.market.candles import Candles
from conclave.market.sources import files
from conclave.market.sources.base import MAX_LIMIT, CandleSource
from conclave.market.sources.files import FileSource, parse_file_name, read_candles, write_candles
from conclave.market.validation import find_gaps, invalid_row_reasons
from conclave.timeframes import HOUR_MS

BTC_1H = "binance_BTCUSDT_1h_20170817-20221011.csv"
MANIFEST = Path(__file__).resolve().parents[3] / "shared" / "data" / "MANIFEST.csv"
ROWS = list(csv.DictReader(MANIFEST.open())) if MANIFEST.is_file() else []


def iso(ms: int | None) -> str:
    assert ms is not None
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def same_bars(a: Candles, b: Candles) -> bool:
    return a.relabel(symbol="X").equals(b.relabel(symbol="X"))


@pytest.mark.parametrize("row", ROWS, ids=[r["file"].split("/")[-1] for r in ROWS])
async def test_every_manifest_file_reproduces_its_figures(
    shared_data: Path, row: dict[str, str]
) -> None:
    """Rows, first and last open time, gaps and missing bars equal MANIFEST.csv's figures."""
    path = shared_data / row["file"]
    source = FileSource(path)
    candles = await source.get_candles(row["symbol"], row["timeframe"], MAX_LIMIT)
    gaps = find_gaps(candles)
    assert len(candles) == int(row["rows"])
    assert iso(candles.first_open_ms) == row["first_open_utc"]
    assert iso(candles.last_open_ms) == row["last_open_utc"]
    assert (gaps.count, gaps.missing_bars) == (int(row["gaps"]), int(row["missing_bars"]))
    assert int(np.count_nonzero(candles.volume == 0)) == int(row["zero_volume_bars"])
    assert all(r is None for r in invalid_row_reasons(candles))
    assert candles.symbol == row["symbol"]
    assert candles.timeframe.name == row["timeframe"]
    assert not candles.simulated
    assert candles.source == f"file:{path}"
    stated = parse_file_name(path.name)
    assert stated is not None
    assert (stated.symbol, str(stated.timeframe)) == (row["symbol"], row["timeframe"])


def test_manifest_was_found() -> None:
    """The manifest lists the 52 candle files (so the parametrized test above ran)."""
    if not ROWS:
        pytest.skip(f"no manifest at {MANIFEST}")
    assert len(ROWS) == 52


ORIGINALS = [
    ("freqtrade/BTC_USDT-1d.json", "binance_BTCUSDT_1d_20170817-20221010.csv"),
    ("freqtrade/UNITTEST_BTC-1m.json", "bittrex_UNITTEST-BTC_1m_20171104-20171114.csv"),
    ("cryptodatadownload/Coinbase_BTCUSD_1h.csv", "coinbase_BTCUSD_1h_20170701-20191017.csv"),
    ("cryptodatadownload/Coinbase_BTCUSD_d.csv", "coinbase_BTCUSD_1d_20141201-20191017.csv"),
    ("backtrader/nvda-1999-2014.txt", "stock_NVDA_1d_19990122-20141231.csv"),
    ("backtrader/orcl-1995-2014.txt", "stock_ORCL_1d_19950103-20141231.csv"),
    ("backtrader/yhoo-1996-2015.txt", "stock_YHOO_1d_19960412-20151231.csv"),
    ("lean/binance_hour_btcusdt_trade.zip", "binance_BTCUSDT_1h_20180501-20180505.csv"),
    ("binance_data_dump/ADABTC-1m-2021-11-27.csv", "binance_ADABTC_1m_20211127.csv"),
    ("binance_data_dump/ADABTC-1m-2021-11-28.csv", "binance_ADABTC_1m_20211128.csv"),
]


@pytest.mark.parametrize(("original", "converted"), ORIGINALS)
def test_every_original_format_equals_its_converted_file(
    shared_data: Path, original: str, converted: str
) -> None:
    """Each original (JSON, CryptoDataDownload, Yahoo, LEAN zip, Binance dump) gives the same
    bars as the common-format file made from it: same times, prices and volumes."""
    got = read_candles(shared_data / "originals" / original)
    want = read_candles(shared_data / "candles" / converted)
    assert got.timeframe == want.timeframe
    for name in ("open_time", "open", "high", "low", "close", "volume"):
        assert np.array_equal(getattr(got, name), getattr(want, name)), name
    assert all(r is None for r in invalid_row_reasons(got))


def test_binance_dump_keeps_trades_and_taker_volume(shared_data: Path) -> None:
    """The 12-column dump gives trade counts and taker-buy volume (at most the volume)."""
    got = read_candles(shared_data / "originals/binance_data_dump/ADABTC-1m-2021-11-27.csv")
    assert got.trades is not None
    assert got.taker_buy_volume is not None
    assert got.trades[:2].tolist() == [79, 98]
    assert got.taker_buy_volume[0] == 19523.0
    assert np.all(got.taker_buy_volume <= got.volume)


def test_cryptodatadownload_volume_is_the_base_asset(shared_data: Path) -> None:
    """CryptoDataDownload's ``Volume BTC`` is picked over its USD ``volume`` column."""
    got = read_candles(shared_data / "originals/cryptodatadownload/Coinbase_BTCUSD_d.csv")
    assert got.volume[0] == 0.05656  # 2014-12-01, newest-first file read back sorted
    assert np.all(np.diff(got.open_time) > 0)


def test_freqtrade_json_equals_the_binance_csv(shared_data: Path) -> None:
    """freqtrade's BTC_USDT-1d.json equals candles/binance_BTCUSDT_1d_* bar for bar."""
    got = read_candles(shared_data / "originals/freqtrade/BTC_USDT-1d.json", symbol="BTCUSDT")
    want = read_candles(shared_data / "candles/binance_BTCUSDT_1d_20170817-20221010.csv")
    assert len(got) == 1881
    assert same_bars(got, want)


def test_the_whole_btc_1h_csv_parses_in_order(candles_dir: Path) -> None:
    """The 45,024-row BTC 1h CSV parses whole, sorted and hourly from its first bar (its load
    time is a figure of benchmarks/data_layer.py, not a test)."""
    candles = read_candles(candles_dir / BTC_1H)
    assert len(candles) == 45_024
    assert int(candles.open_time[0]) == 1_502_942_400_000  # 2017-08-17T04:00Z
    assert bool(np.all(np.diff(candles.open_time) > 0))
    assert bool(np.all(np.diff(candles.open_time) % 3_600_000 == 0))


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_round_trip_is_exact(tmp_path: Path, shared_data: Path, suffix: str) -> None:
    """write_candles then read_candles gives equal candles, optional columns included."""
    for src in (
        shared_data / "candles" / BTC_1H,
        shared_data / "originals/binance_data_dump/ADABTC-1m-2021-11-28.csv",
    ):
        original = read_candles(src, symbol="BTCUSDT")
        path = tmp_path / f"BTCUSDT_{original.timeframe}{suffix}"
        write_candles(path, original)
        back = read_candles(path, symbol="BTCUSDT")
        assert back.equals(original)
        assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left
        path.unlink()


def test_write_refuses_other_suffixes(tmp_path: Path) -> None:
    """Only .csv and .parquet can be written."""
    with pytest.raises(ConfigurationError):
        write_candles(tmp_path / "x.json", Candles.empty("BTCUSDT", "1h"))


HEADER_VARIANTS: list[tuple[str, str]] = [
    ("epoch seconds", "Timestamp,Open,High,Low,Close,Volume\n1640995200,{row}\n1640998800,{row}\n"),
    ("epoch ms", "time,open,high,low,close,volume\n1640995200000,{row}\n1640998800000,{row}\n"),
    ("iso and semicolons", "Date;Open;High;Low;Close;Volume\n"
     "2022-01-01T00:00:00Z;{semi}\n2022-01-01T01:00:00Z;{semi}\n"),
    ("datetime", "datetime,open,high,low,close,volume\n"
     "2022-01-01 00:00:00,{row}\n2022-01-01 01:00:00,{row}\n"),
    ("volume units", "date,symbol,open,high,low,close,Volume USDT,Volume BTC\n"
     "2022-01-01 01-AM,BTCUSDT,{ohlc},55,5\n2022-01-01 12-AM,BTCUSDT,{ohlc},55,5\n"),
    ("headerless", "1640995200000,{row}\n1640998800000,{row}\n"),
    ("quoted and spaced", '"Open Time","Open","High","Low","Close","Volume"\n'
     "1640995200000, {row}\n1640998800000, {row}\n"),
]  # fmt: skip


@pytest.mark.parametrize(("label", "text"), HEADER_VARIANTS, ids=[v[0] for v in HEADER_VARIANTS])
def test_header_variants(tmp_path: Path, label: str, text: str) -> None:
    """Common CSV variants load as two 1h bars at 2022-01-01 00:00 and 01:00 UTC."""
    row = "10,12,9,11,5"
    path = tmp_path / "variant.csv"
    path.write_text(text.format(row=row, semi=row.replace(",", ";"), ohlc=row.rsplit(",", 1)[0]))
    got = read_candles(path, symbol="BTCUSDT")
    assert got.open_time.tolist() == [1_640_995_200_000, 1_640_995_200_000 + HOUR_MS]
    assert got.timeframe.name == "1h"
    assert got.close.tolist() == [11.0, 11.0]
    assert got.volume.tolist() == [5.0, 5.0], label


BAD_FILES = [
    ("text in a price", "open_time_ms,open,high,low,close,volume\n1,1,2,1,1,1\n2,1,x,1,1,1\n",
     "line 3, column 3"),
    ("empty cell", "open_time_ms,open,high,low,close,volume\n1,1,2,1,1,1\n2,1,2,1,,1\n",
     "line 3, column close"),
    ("short row", "open_time_ms,open,high,low,close,volume\n1,1,2,1,1,1\n2,1,2,1\n",
     "line 3: expected 6 columns, got 4"),
    ("duplicate time", "open_time_ms,open,high,low,close,volume\n1,1,2,1,1,1\n1,1,3,1,1,1\n",
     "line 2 and line 3"),
    ("no header", "hello\nworld\n", "no header"),
    ("missing volume", "time,open,high,low,close\n1,1,2,1,1\n", "no column for volume"),
    ("bad time", "date,open,high,low,close,volume\nyesterday,1,2,1,1,1\n", "time column"),
]  # fmt: skip


@pytest.mark.parametrize(("label", "text", "where"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_malformed_files_name_the_file_and_place(
    tmp_path: Path, label: str, text: str, where: str
) -> None:
    """Bad content raises InvalidCandlesError naming the file and where it went wrong."""
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(InvalidCandlesError) as err:
        read_candles(path, timeframe="1m")
    assert str(path) in str(err.value)
    assert where in str(err.value), label


def test_malformed_json(tmp_path: Path) -> None:
    """A JSON file that is not rows of numbers raises InvalidCandlesError naming it."""
    path = tmp_path / "BTC_USDT-1h.json"
    for text in ("{not json", '{"a": 1}', "[[1, 2, 3]]"):
        path.write_text(text)
        with pytest.raises(InvalidCandlesError, match=r"BTC_USDT-1h\.json"):
            read_candles(path)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    """A missing file raises ConfigurationError naming the path, from both entry points."""
    missing = tmp_path / "nope" / "BTCUSDT_1h.csv"
    with pytest.raises(ConfigurationError, match="nope"):
        read_candles(missing)
    with pytest.raises(ConfigurationError, match="nope"):
        FileSource(missing).locate("BTCUSDT", "1h")


async def test_limit_and_end_are_point_in_time(candles_dir: Path) -> None:
    """get_candles gives the newest ``limit`` bars that opened strictly before ``end``."""
    source = FileSource(candles_dir / BTC_1H)
    assert isinstance(source, CandleSource)
    full = await source.get_candles("BTCUSDT", "1h", MAX_LIMIT)
    end = int(full.open_time[1000])
    got = await source.get_candles("BTCUSDT", "1h", 10, end)
    assert got.open_time.tolist() == full.open_time[990:1000].tolist()
    assert len(await source.get_candles("BTCUSDT", "1h", 10, int(full.open_time[0]))) == 0
    assert (await source.get_candles("BTCUSDT", "1h", 3)).equals(full.tail(3))
    with pytest.raises(InvalidRequestError):
        await source.get_candles("BTCUSDT", "1h", 0)
    with pytest.raises(InvalidSymbolError):
        await source.get_candles("btcusdt", "1h", 10)


async def test_a_file_refuses_another_timeframe(candles_dir: Path, tmp_path: Path) -> None:
    """A file named 1h refuses a 4h request; an unnamed file refuses one its spacing denies."""
    with pytest.raises(InvalidRequestError, match="1h candles, not 4h") as err:
        await FileSource(candles_dir / BTC_1H).get_candles("BTCUSDT", "4h", 10)
    assert err.value.field == "timeframe"
    unnamed = tmp_path / "prices.csv"
    unnamed.write_bytes((candles_dir / BTC_1H).read_bytes())
    assert len(await FileSource(unnamed).get_candles("ANY", "1h", 5)) == 5
    with pytest.raises(InvalidRequestError, match="apart"):
        await FileSource(unnamed).get_candles("ANY", "1d", 5)


async def test_parsed_files_are_cached_until_they_change(
    candles_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Repeated calls parse once; a new modification time makes the source parse again."""
    path = tmp_path / "BTCUSDT_1h.csv"
    write_candles(path, read_candles(candles_dir / BTC_1H).tail(100))
    calls: list[Any] = []
    real = files.read_candles

    def counting(*args: Any, **kwargs: Any) -> Candles:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(files, "read_candles", counting)
    source = FileSource(tmp_path)
    for limit in (5, 50, 100):
        assert len(await source.get_candles("BTCUSDT", "1h", limit)) == limit
    assert len(calls) == 1
    write_candles(path, read_candles(candles_dir / BTC_1H).tail(20))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert len(await source.get_candles("BTCUSDT", "1h", 100)) == 20
    assert len(calls) == 2


async def test_directory_finds_files_by_name(candles_dir: Path) -> None:
    """In a directory, (symbol, timeframe) picks the file reaching furthest, or by venue."""
    source = FileSource(candles_dir)
    btc = await source.get_candles("BTCUSDT", "1h", MAX_LIMIT)
    assert len(btc) == 45_024  # not the 5-day LEAN excerpt of the same market
    assert btc.source == f"file:{candles_dir}"
    assert source.locate("BTCUSD", "1d").name.startswith("bitstamp_")
    coinbase = FileSource(candles_dir, venue="coinbase").locate("BTCUSD", "1d")
    assert coinbase.name == "coinbase_BTCUSD_1d_20141201-20191017.csv"
    assert len(await source.get_candles("BTCUSD", "1M", 10)) == 10
    with pytest.raises(UnknownSymbolError, match="NOPEUSDT"):
        await source.get_candles("NOPEUSDT", "1h", 10)
    with pytest.raises(InvalidRequestError, match="1d, 1h, 4h, 5m"):
        await source.get_candles("BTCUSDT", "15m", 10)


async def test_store_naming_is_preferred(candles_dir: Path, tmp_path: Path) -> None:
    """Our store's ``<SYMBOL>_<tf>.parquet`` wins over a common-named file in the directory."""
    real = read_candles(candles_dir / BTC_1H, symbol="BTCUSDT")
    write_candles(tmp_path / "binance_BTCUSDT_1h_20170817-20221011.csv", real)
    write_candles(tmp_path / "BTCUSDT_1h.parquet", real.tail(7))
    source = FileSource(tmp_path)
    assert source.locate("BTCUSDT", "1h").name == "BTCUSDT_1h.parquet"
    assert len(await source.get_candles("BTCUSDT", "1h", 100)) == 7


def test_file_names_are_understood() -> None:
    """Every naming convention gives symbol and timeframe (``d`` means 1d)."""
    cases = {
        "BTCUSDT_1h.parquet": ("store", "BTCUSDT", "1h"),
        "BTC_USDT_4h.csv": ("store", "BTC_USDT", "4h"),
        "binance_BTCUSDT_1M_20120101-20240601.csv": ("common", "BTCUSDT", "1M"),
        "binance_ADABTC_1m_20211127.csv": ("common", "ADABTC", "1m"),
        "BTC_USDT-1d.json": ("freqtrade", "BTCUSDT", "1d"),
        "ADABTC-1m-2021-11-27.csv": ("dump", "ADABTC", "1m"),
        "Coinbase_BTCUSD_d.csv": ("cryptodatadownload", "BTCUSD", "1d"),
    }
    for name, (kind, symbol, tf) in cases.items():
        got = parse_file_name(name)
        assert got is not None, name
        assert (got.kind, got.symbol, str(got.timeframe)) == (kind, symbol, tf)
    assert parse_file_name("nvda-1999-2014.txt") is None
