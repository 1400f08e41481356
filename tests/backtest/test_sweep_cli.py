"""``conclave backtest --sweep``: ranked rows that are plain backtests, the spread and the
in-sample warning, every row written, and exit 2 naming the key for a bad sweep."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conclave import cli

BTC_1H = "binance_BTCUSDT_1h_20170817-20221011.csv"
PERIOD = ["--from", "2021-01-01", "--to", "2021-04-01"]
SWEEP = """
[grid]
fee_rate = [0.001, 0.002]
weights.momentum = [1.0, 2.0]
account.max_position_fraction = [0.25, 0.5]

[[configs]]
name = "defaults"
"""


def _source(candles_dir: Path) -> list[str]:
    return ["--source", f"file:{candles_dir / BTC_1H}", "--symbol", "BTCUSDT", "--timeframe", "1h"]


def _sweep(tmp_path: Path, text: str = SWEEP, name: str = "sweep[x].toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.shared_data
def test_the_json_ranks_rows_that_are_plain_backtests(
    runner: CliRunner, candles_dir: Path, tmp_path: Path
) -> None:
    """One JSON object: the run's fields as a plain ``--json`` names them, every
    configuration ranked by Sharpe (descending, the stated tie-break), and a row whose
    settings the plain command can take (fee, weights) equal to that command's figures."""
    args = ["backtest", *_source(candles_dir), *PERIOD, "--json"]
    result = runner.invoke(cli.app, [*args, "--sweep", str(_sweep(tmp_path))])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    sweep = shown["sweep"]
    assert sweep["configurations"] == len(shown["results"]) == 9
    assert (sweep["rankBy"], sweep["figure"], sweep["better"]) == ("sharpe", "sharpe", "higher")
    assert "lower max drawdown" in sweep["tieBreak"]
    assert "In-sample: the best row was picked out of 9 configurations" in sweep["warning"]
    assert sweep["keys"] == ["fee_rate", "weights.momentum", "account.max_position_fraction"]
    sharpes = [r["performance"]["sharpe"] for r in shown["results"]]
    assert sharpes == sorted(sharpes, reverse=True)
    assert [r["rank"] for r in shown["results"]] == list(range(1, 10))
    assert (sweep["spread"]["min"], sweep["spread"]["max"]) == (sharpes[-1], sharpes[0])

    plain = runner.invoke(cli.app, [*args, "--fee", "0.002", "--weights", "momentum=2"])
    assert plain.exit_code == 0, plain.output
    single = json.loads(plain.stdout)
    shared = ("symbol", "timeframe", "source", "simulated", "from", "to", "bars", "gaps",
              "missingBars", "validation")  # fmt: skip
    assert {k: shown[k] for k in shared} == {k: single[k] for k in shared}
    assert shown["settings"]["agents"] == single["settings"]["agents"]
    params = {"fee_rate": 0.002, "weights.momentum": 2.0, "account.max_position_fraction": 0.25}
    row = next(r for r in shown["results"] if r["params"] == params)
    want = single["performance"]
    assert row["performance"].keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, float):
            assert row["performance"][key] == pytest.approx(value, rel=1e-9, abs=1e-9), key
        elif key != "buyAndHold":
            assert row["performance"][key] == value, key
    defaults = next(r for r in shown["results"] if r["name"] == "defaults")
    assert defaults["number"] == 1
    assert defaults["params"]["fee_rate"] == 0.001  # the command line's --fee (default)


@pytest.mark.shared_data
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_the_table_the_spread_and_every_row_written(
    runner: CliRunner, candles_dir: Path, tmp_path: Path, suffix: str
) -> None:
    """Printed: the top rows ranked by total return, the spread of total return with how
    many beat buy and hold, and the in-sample warning in words; written: every row."""
    out = tmp_path / f"rows{suffix}"
    args = ["backtest", *_source(candles_dir), *PERIOD, "--sweep", str(_sweep(tmp_path)),
            "--rank-by", "total-return", "--top", "3", "--results", str(out)]  # fmt: skip
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "top 3 of 9 by total return (higher is better)" in text
    assert "total return across the 9 configurations: min" in text
    assert "Beat buy and hold on total return:" in text
    assert "In-sample: the best row was picked out of 9 configurations" in text
    assert "momentum weight" in text
    assert f"wrote results: {out} (9 rows)" in text
    if suffix == ".csv":
        with out.open() as f:
            rows = list(csv.DictReader(f))
    else:
        rows = pq.read_table(out).to_pylist()
    assert len(rows) == 9
    assert [int(r["rank"]) for r in rows] == list(range(1, 10))
    totals = [float(r["total_return"]) for r in rows]
    assert totals == sorted(totals, reverse=True)
    assert {"number", "name", "fee_rate", "weights.momentum", "sharpe", "max_drawdown",
            "excess", "buy_and_hold_total_return"} <= set(rows[0])  # fmt: skip


@pytest.mark.parametrize(
    ("text", "extra", "says"),
    [
        ("[grid]\ndecision.buy_treshold = [0.5]\n", [],
         "grid.decision.buy_treshold: unknown key; did you mean 'buy_threshold'?"),
        ("[grid]\naccount.cooldown_bars = [2.5]\n", [],
         "account.cooldown_bars: expected a whole number, got 2.5"),
        ("[grid]\n", [], "grid: the table is empty"),
        ("[grid]\ndecision.buy_threshold = []\n", [], "the list is empty"),
        ("[grid]\ndecision.buy_threshold = [0.3, 0.4, 0.5]\nfee_rate = [0.0, 0.001]\n",
         ["--max", "5"], "defines 6 configurations, more than --max 5: pass --max 6"),
        ("[grid]\ndecision.buy_threshold = [0.5]\n", ["--rank-by", "sharp"],
         "--rank-by: unknown figure 'sharp'; did you mean 'sharpe'?"),
        ("[grid]\ndecision.buy_threshold = [0.5]\n", ["--signals", "x.csv"],
         "--signals: is for one backtest, not a --sweep"),
        ("[grid]\ndecision.buy_threshold = [0.5]\n", ["--check-parity", "3"],
         "--check-parity: is for one backtest, not a --sweep"),
        ("[grid]\ndecision.buy_threshold = [0.5]\n", ["--results", "rows.txt"],
         "--results: rows.txt must end in .csv or .parquet"),
        ("[grid]\nweights.news-sentiment = [2.0]\n", ["--agents", "momentum"],
         "weights.news-sentiment: the agent does not run here (--agents)"),
    ],
)  # fmt: skip
def test_a_bad_sweep_exits_2_naming_the_key(
    runner: CliRunner, tmp_path: Path, text: str, extra: list[str], says: str
) -> None:
    """Checked before any data is read (the source here does not even exist): one red
    line naming the file and the key, nothing on stdout."""
    path = _sweep(tmp_path, text)
    args = ["backtest", "--source", f"file:{tmp_path / 'none.csv'}", "--symbol", "BTCUSDT",
            "--timeframe", "1h", "--sweep", str(path), *extra]  # fmt: skip
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2, result.output
    assert says in result.stderr
    if "--" not in says.split(":")[0]:
        assert f"--sweep: {path}: " in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.output


def test_the_help_names_every_figure_a_sweep_ranks_by(runner: CliRunner) -> None:
    from conclave.backtest.sweep import METRICS

    result = runner.invoke(cli.app, ["backtest", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in METRICS:
        assert name in result.stdout


@pytest.mark.parametrize("flag", [["--rank-by", "sharpe"], ["--top", "3"], ["--max", "10"]])
def test_sweep_options_need_a_sweep(runner: CliRunner, tmp_path: Path, flag: list[str]) -> None:
    args = ["backtest", "--source", f"file:{tmp_path / 'none.csv'}", "--symbol", "BTCUSDT",
            "--timeframe", "1h", *flag]  # fmt: skip
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2, result.output
    assert f"{flag[0]}: needs --sweep FILE" in result.stderr
