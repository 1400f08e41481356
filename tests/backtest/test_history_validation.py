"""What validation removed while the history loaded: counts by reason on `History.validation`,
over the rows the backtest uses; and bad data raising the data errors (the CLI's exit 3)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from conclave.backtest.history import History, SeriesValidation, load_history
from conclave.errors import InsufficientDataError, InvalidCandlesError
from conclave.market.candles import Candles
from conclave.market.gateway import ResamplePolicy
from conclave.market.resample import resample
from conclave.market.sources.files import FileSource, parse_file_name
from conclave.market.validation import validate
from conclave.pipeline.orchestrator import default_agents
from conclave.timeframes import DAY_MS, HOUR_MS, Timeframe

NOW_MS = 1_700_000_000_000
BTC_1H = "binance_BTCUSDT_1h_20170817-20221011.csv"
JAN_2021 = 1_609_459_200_000
MAR_2021 = JAN_2021 + 59 * DAY_MS


class Doctored:
    """Candles served as a file source serves them, with rows we broke on purpose."""

    simulated = False

    def __init__(self, series: dict[str, Candles], name: str = "file:doctored") -> None:
        self.series = series
        self.name = name

    async def get_candles(
        self, symbol: str, timeframe: Timeframe | str, limit: int, end: int | None = None
    ) -> Candles:
        c = self.series[Timeframe.parse(timeframe).name]
        stop = len(c) if end is None else int(np.searchsorted(c.open_time, end))
        return c.take(slice(max(0, stop - limit), stop))

    async def aclose(self) -> None:
        return None


def _break(candles: Candles, at_ms: dict[int, str], duplicate_ms: tuple[int, ...] = ()) -> Candles:
    """``candles`` with the bar opened at each key broken as its value says, and a second,
    different row inserted after each bar of ``duplicate_ms``."""
    cols = {k: np.array(v, copy=True) for k, v in candles.columns().items()}
    for t, how in at_ms.items():
        i = int(np.searchsorted(cols["open_time"], t))
        if how == "high below low":
            cols["high"][i], cols["low"][i] = cols["low"][i], cols["high"][i]
        elif how == "price not positive":
            cols["close"][i] = 0.0
    for t in duplicate_ms:
        i = int(np.searchsorted(cols["open_time"], t))
        for name, col in cols.items():
            extra = col[i] * 1.001 if name in ("close", "high") else col[i]
            cols[name] = np.insert(col, i + 1, extra)
    return candles.with_columns(cols)


def _btc(candles_dir: Path) -> Candles:
    return FileSource(candles_dir / BTC_1H).load("BTCUSDT", "1h")


async def _load(source: Doctored, *, policy: ResamplePolicy = "resample") -> History:
    return await load_history(
        source, "BTCUSDT", "1h", default_agents(), start_ms=JAN_2021, end_ms=MAR_2021,
        now_ms=NOW_MS, resample_policy=policy,
    )  # fmt: skip


async def test_rows_rejected_and_merged_in_the_history_are_counted_by_reason(
    candles_dir: Path,
) -> None:
    """Two rows broken inside the period, two duplicates merged, and a broken row long
    before the warm-up (read, but not used: not counted); the higher timeframes are built
    from the validated base bars."""
    broken = {
        JAN_2021 + 10 * DAY_MS: "high below low",
        JAN_2021 + 30 * DAY_MS: "price not positive",
        JAN_2021 - 400 * DAY_MS: "high below low",
    }
    dups = (JAN_2021 + 5 * DAY_MS, JAN_2021 + 40 * DAY_MS)
    history = await _load(Doctored({"1h": _break(_btc(candles_dir), broken, dups)}))
    assert history.validation is not None
    base = history.validation.base
    assert base.timeframe == "1h"
    assert base.rejected == {"high below low": 1, "price not positive": 1}
    assert base.duplicates_merged == 2
    assert base.dropped_unclosed == 0
    assert base.rows_kept == len(history.candles)
    assert base.rows_read == base.rows_kept + 2 + 2
    assert history.validation.higher == ()
    assert set(history.validation.resampled) == set(history.resampled) != set()
    shown = history.validation.to_json()
    assert (shown["rejectedRows"], shown["duplicatesMerged"]) == (2, 2)
    assert shown["base"]["rejected"] == {"high below low": 1, "price not positive": 1}
    # the rejected bars are gone, not repaired: each leaves a gap
    assert JAN_2021 + 10 * DAY_MS not in set(history.candles.open_time.tolist())


async def test_a_higher_timeframe_read_from_the_source_is_counted_on_its_own(
    candles_dir: Path,
) -> None:
    base = _btc(candles_dir)
    four = resample(base.take(base.open_time < MAR_2021), "4h", trim_leading=True)
    four = _break(four, {JAN_2021 + 20 * DAY_MS: "price not positive"})
    day = resample(base.take(base.open_time < MAR_2021), "1d", trim_leading=True)
    history = await _load(Doctored({"1h": base, "4h": four, "1d": day}), policy="fetch")
    assert history.validation is not None
    assert history.validation.base.rejected == {}
    higher = {s.timeframe: s for s in history.validation.higher}
    assert set(higher) == {"4h", "1d"}
    assert higher["4h"].rejected == {"price not positive": 1}
    assert higher["4h"].rows_kept == len(history.higher["4h"]) == higher["4h"].rows_read - 1
    assert higher["1d"].rejected_rows == 0
    assert history.validation.resampled == ()
    assert history.validation.to_json()["rejected"] == {"price not positive": 1}


def test_a_bar_still_open_at_as_of_is_counted_as_dropped(candles_dir: Path) -> None:
    raw = _btc(candles_dir).take(slice(0, 50))
    as_of = int(raw.close_time[-2])
    kept, report = validate(raw, as_of, require_fresh=False)
    found = SeriesValidation.of(raw, report, kept)
    assert found.to_json() == {
        "timeframe": "1h", "rowsRead": 50, "rowsKept": 49, "rejectedRows": 0, "rejected": {},
        "duplicatesMerged": 0, "droppedUnclosed": 1,
    }  # fmt: skip


async def test_data_that_cannot_be_backtested_raises_a_data_error(candles_dir: Path) -> None:
    """Every row rejected: InvalidCandlesError with the counts; a period past the data or
    a source without a bar before the end: InsufficientDataError."""
    c = _btc(candles_dir).take(slice(0, 30))
    cols = c.columns()
    cols["high"], cols["low"] = cols["low"], cols["high"]
    with pytest.raises(InvalidCandlesError, match=r"every one of the 30 .*high below low 30"):
        await load_history(Doctored({"1h": c.with_columns(cols)}), "BTCUSDT", "1h",
                           default_agents(), start_ms=None, end_ms=None, now_ms=NOW_MS)  # fmt: skip
    whole = Doctored({"1h": _btc(candles_dir)})
    with pytest.raises(InsufficientDataError, match=r"no BTCUSDT 1h bar from 2030-01-01"):
        await load_history(whole, "BTCUSDT", "1h", default_agents(), start_ms=1_893_456_000_000,
                           end_ms=None, now_ms=NOW_MS)  # fmt: skip
    with pytest.raises(InsufficientDataError, match=r"no BTCUSDT 1h bar opened before 2017"):
        await load_history(whole, "BTCUSDT", "1h", default_agents(), start_ms=None,
                           end_ms=1_500_000_000_000 + HOUR_MS, now_ms=NOW_MS)  # fmt: skip


async def test_the_shared_candle_files_validate_as_the_manifest_says(shared_data: Path) -> None:
    """MANIFEST.csv lists no OHLC violation, negative volume or duplicate in any file, and
    validation agrees: nothing is rejected, merged or dropped in any of them."""
    with (shared_data / "MANIFEST.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["file"].startswith("candles/")]
    assert len(rows) == 52
    for row in rows:
        name = Path(row["file"]).name
        parsed = parse_file_name(name)
        assert parsed is not None
        assert parsed.timeframe is not None
        history = await load_history(
            FileSource(shared_data / row["file"]), parsed.symbol, parsed.timeframe.name,
            default_agents(), start_ms=None, end_ms=None, now_ms=NOW_MS,
            resample_policy="resample",
        )  # fmt: skip
        assert history.validation is not None
        shown = history.validation.to_json()
        expected = int(row["ohlc_violations"]) + int(row["negative_volume"])
        assert shown["rejectedRows"] == expected, name
        assert shown["duplicatesMerged"] == int(row["dup_rows_dropped"]), name
        assert shown["base"]["rowsKept"] == int(row["rows"]), name
