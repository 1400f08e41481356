"""Signal and trade tables, and their exact round trip through CSV and Parquet."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conclave.backtest.export import iso_array, signals_table, trades_table, write_table
from conclave.backtest.result import BUY, SELL, BacktestResult, Fill
from conclave.errors import InvalidRequestError
from conclave.timeframes import iso_ms

from .helpers import T0, agent, make_result

HOUR = 3_600_000
TRICKY = [0.1 + 0.2, 1 / 3, 1e-17, 123456.789012345678, -2.5e300, 5e-324]


def _result() -> BacktestResult:
    close = np.array([100.0, 0.1 + 0.2, 1 / 3, 101.25, 99.0, 1e-17])
    conviction = np.array([np.nan, 0.2, -0.3, 1 / 7, 0.0, np.nan])
    fills = [
        Fill(T0 + 2 * HOUR, T0 + HOUR, "BUY", 1 / 3, 100.1, 0.0333, None, "buy, strong"),
        Fill(T0 + 4 * HOUR, T0 + 3 * HOUR, "SELL", 1 / 3, 98.9, 0.033, -0.4 / 3, 'sell "all"'),
    ]
    return make_result(
        close,
        conviction=conviction,
        confidence=[np.nan, 55.0, 60.0, 70.0, 0.0, np.nan],
        action=[0, BUY, SELL, 1, 4, 0],
        agents=[
            agent("momentum", TRICKY, [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]),
            agent("risk-manager", np.zeros(6), usable=[False, True, True, True, True, True]),
        ],
        fills=fills,
        position_qty=[0, 0, 1 / 3, 1 / 3, 0, 0],
    )


def test_iso_array_matches_iso_ms() -> None:
    times = [T0, T0 + 123, 0, 1_700_000_000_999, 253402300799999]
    assert iso_array(times).tolist() == [iso_ms(t) for t in times]
    assert iso_array([T0]).tolist() == ["2021-01-01T00:00:00.000Z"]


def test_signals_table_columns_and_values() -> None:
    res = _result()
    table = signals_table(res)
    assert list(table) == [
        "time", "open_time_ms", "open", "close",
        "momentum.score", "momentum.confidence", "momentum.usable",
        "risk-manager.score", "risk-manager.confidence", "risk-manager.usable",
        "conviction", "confidence", "action", "size_multiplier", "risk_level", "allowed",
        "equity", "cash", "position_qty", "exposure",
    ]  # fmt: skip
    assert {len(c) for c in table.values()} == {6}
    assert table["time"][1] == "2021-01-01T01:00:00.000Z"
    assert table["open_time_ms"][5] == T0 + 5 * HOUR
    assert table["action"].tolist() == ["NONE", "BUY", "SELL", "HOLD", "BLOCKED", "NONE"]
    assert table["risk_level"].tolist() == ["ok"] * 6
    assert table["momentum.score"].tolist() == TRICKY
    assert table["risk-manager.usable"].tolist() == [False] + [True] * 5


def test_trades_table() -> None:
    table = trades_table(_result())
    assert list(table) == [
        "time", "time_ms", "decision_time", "decision_ms", "side", "qty", "price",
        "notional", "fee", "realised_pnl", "reason",
    ]  # fmt: skip
    assert table["time"].tolist() == ["2021-01-01T02:00:00.000Z", "2021-01-01T04:00:00.000Z"]
    assert table["decision_time"][0] == "2021-01-01T01:00:00.000Z"
    assert table["side"].tolist() == ["BUY", "SELL"]
    assert table["notional"][0] == (1 / 3) * 100.1
    assert math.isnan(table["realised_pnl"][0])
    assert table["realised_pnl"][1] == -0.4 / 3
    empty = trades_table(make_result([1.0, 2.0]))
    assert all(len(c) == 0 for c in empty.values())
    assert empty["time_ms"].dtype == np.int64


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def test_csv_round_trips_exactly(tmp_path: Path) -> None:
    res = _result()
    table = signals_table(res)
    path = write_table(table, tmp_path / "deep" / "er" / "signals.csv")
    assert path.exists()
    head, rows = _read_csv(path)
    assert head == list(table)
    cols = {name: [row[j] for row in rows] for j, name in enumerate(head)}
    assert [float(v) for v in cols["momentum.score"]] == TRICKY
    assert [float(v) for v in cols["close"]] == res.close.tolist()
    assert cols["conviction"][0] == ""  # NaN is written as an empty field
    assert [float(v) for v in cols["conviction"][1:5]] == res.conviction[1:5].tolist()
    assert [int(v) for v in cols["open_time_ms"]] == res.open_time.tolist()
    assert cols["risk-manager.usable"] == ["false"] + ["true"] * 5
    assert cols["action"][1] == "BUY"
    assert cols["time"][0] == "2021-01-01T00:00:00.000Z"

    trades = write_table(trades_table(res), tmp_path / "trades.csv")
    head, rows = _read_csv(trades)
    assert rows[1][head.index("reason")] == 'sell "all"'
    assert rows[0][head.index("reason")] == "buy, strong"
    assert float(rows[1][head.index("realised_pnl")]) == -0.4 / 3
    assert rows[0][head.index("realised_pnl")] == ""


def test_parquet_round_trips_exactly(tmp_path: Path) -> None:
    res = _result()
    table = signals_table(res)
    path = write_table(table, tmp_path / "out" / "signals.parquet")
    back = pq.read_table(path)
    assert back.column_names == list(table)
    data = back.to_pydict()
    assert data["momentum.score"] == TRICKY
    assert data["close"] == res.close.tolist()
    assert data["conviction"][0] is None  # NaN is a null
    assert data["conviction"][1:5] == res.conviction[1:5].tolist()
    assert data["open_time_ms"] == res.open_time.tolist()
    assert data["risk-manager.usable"] == [False] + [True] * 5
    assert data["action"] == ["NONE", "BUY", "SELL", "HOLD", "BLOCKED", "NONE"]
    assert str(back.schema.field("open_time_ms").type) == "int64"

    trades = pq.read_table(write_table(trades_table(res), tmp_path / "t.parquet")).to_pydict()
    assert trades["realised_pnl"] == [None, -0.4 / 3]
    assert trades["qty"] == [1 / 3, 1 / 3]
    assert trades["reason"] == ["buy, strong", 'sell "all"']

    empty = pq.read_table(write_table(trades_table(make_result([1.0])), tmp_path / "e.parquet"))
    assert empty.num_rows == 0


def test_bad_suffix_is_an_invalid_request(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match=r"\.csv, \.parquet") as info:
        write_table(signals_table(_result()), tmp_path / "signals.xlsx")
    assert info.value.field == "path"
    with pytest.raises(InvalidRequestError, match="no suffix"):
        write_table(signals_table(_result()), tmp_path / "signals")
    assert not (tmp_path / "signals.xlsx").exists()
