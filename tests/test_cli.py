"""The ``conclave`` command line, driven in process through Typer's runner."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conclave import cli

BTC_1H = "binance_BTCUSDT_1h_20170817-20221011.csv"


def at(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp() * 1000)


def manifest_row(shared_data: Path, name: str) -> dict[str, str]:
    with (shared_data / "MANIFEST.csv").open(newline="") as fh:
        return next(r for r in csv.DictReader(fh) if r["file"] == f"candles/{name}")


def test_show_json_of_a_shared_file_matches_the_manifest(
    runner: CliRunner, shared_data: Path
) -> None:
    """A file is shown whole: rows, first/last open, gaps and missing bars as in MANIFEST.csv."""
    path = shared_data / "candles" / BTC_1H
    args = ["data", "show", "--source", f"file:{path}", "--symbol", "BTCUSDT"]
    result = runner.invoke(cli.app, [*args, "--timeframe", "1h", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    row = manifest_row(shared_data, BTC_1H)
    assert shown["rows"] == int(row["rows"]) == 45024
    assert shown["gaps"] == int(row["gaps"]) == 27
    assert shown["missing_bars"] == int(row["missing_bars"]) == 127
    assert shown["first_open_ms"] == at(row["first_open_utc"].rstrip("Z"))
    assert shown["last_open_ms"] == at(row["last_open_utc"].rstrip("Z"))
    assert shown["simulated"] is False


def test_show_human_form_has_the_figures(runner: CliRunner, candles_dir: Path) -> None:
    """The table names rows, first and last open time in UTC, gaps and missing bars."""
    result = runner.invoke(
        cli.app,
        ["data", "show", "--source", f"file:{candles_dir}", "--symbol", "BTCUSDT",
         "--timeframe", "4h"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for text in ("11,271", "2017-08-17T04:00:00Z", "2022-10-11T04:00:00Z", "missing bars"):
        assert text in result.stdout
    assert "SIMULATED" not in result.stdout


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--symbol", "btcusdt", "--timeframe", "1h"], "symbol"),
        (["--symbol", "BTCUSDT", "--timeframe", "1H"], "timeframe"),
        (["--symbol", "NOPEUSDT", "--timeframe", "1h", "--source", "sim"], "symbol"),
        (["--symbol", "BTCUSDT", "--timeframe", "1h", "--source", "bogus"], "source"),
        (["--symbol", "BTCUSDT", "--timeframe", "1h", "--as-of", "yesterday"], "as-of"),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_the_field(
    runner: CliRunner, args: list[str], field: str
) -> None:
    """Bad input is one clear line naming the option, exit code 2, no traceback."""
    result = runner.invoke(cli.app, ["data", "show", *args])
    assert result.exit_code == 2
    assert f"--{field}" in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_unknown_setting_exits_2_naming_it(runner: CliRunner) -> None:
    """A misspelt CONCLAVE_ variable stops the CLI before anything runs."""
    result = runner.invoke(
        cli.app,
        ["data", "show", "--symbol", "BTCUSDT", "--timeframe", "1h"],
        env={"CONCLAVE_MARKET__SORCE": "sim"},
    )
    assert result.exit_code == 2
    assert "CONCLAVE_MARKET__SORCE" in result.stderr
    assert "CONCLAVE_MARKET__SOURCE" in result.stderr  # the nearest known name
    assert "Traceback" not in result.output


def test_a_source_failure_is_one_line_and_non_zero(runner: CliRunner, candles_dir: Path) -> None:
    """A symbol the file source does not hold: one line, non-zero exit, no traceback."""
    result = runner.invoke(
        cli.app,
        ["data", "show", "--source", f"file:{candles_dir}", "--symbol", "ZZZUSDT",
         "--timeframe", "1h"],
    )  # fmt: skip
    assert result.exit_code != 0
    assert "ZZZUSDT" in result.stderr
    assert "Traceback" not in result.output


def test_fetch_twice_adds_only_the_new_bars(
    runner: CliRunner, candles_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a file source: the first fetch stores up to now, a day later only 24 bars come."""
    store = tmp_path / "store"
    now = {"ms": at("2022-06-01T00:30:00")}
    monkeypatch.setattr(cli, "wall_clock_ms", lambda: now["ms"])
    args = ["data", "fetch", "--source", f"file:{candles_dir}", "--symbol", "BTCUSDT",
            "--symbol", "ETHUSDT", "--timeframe", "1h", "--since", "2022-05-01",
            "--store", str(store), "--json"]  # fmt: skip
    first = runner.invoke(cli.app, args)
    assert first.exit_code == 0, first.output
    now["ms"] += 24 * 3_600_000
    second = runner.invoke(cli.app, args)
    assert second.exit_code == 0, second.output

    stored = store / f"file-{str(candles_dir).strip('/').replace('/', '-')}"
    shown = runner.invoke(
        cli.app,
        ["data", "show", "--source", f"file:{stored}", "--symbol", "ETHUSDT",
         "--timeframe", "1h", "--json"],
    )  # fmt: skip
    assert shown.exit_code == 0, shown.output
    summary = json.loads(shown.stdout)
    assert summary["first_open_ms"] == at("2022-05-01T00:00:00")
    assert summary["last_open_ms"] == at("2022-06-01T23:00:00")
    assert summary["rows"] + summary["missing_bars"] == 32 * 24
    added = {r["symbol"]: r["added"] for r in json.loads(second.stdout)["series"]}
    assert added == {"BTCUSDT": 24, "ETHUSDT": 24}


def test_show_sim_json_is_labelled_simulated(runner: CliRunner) -> None:
    """The simulator's data comes back with its figures and simulated=true."""
    pytest.importorskip("conclave.market.sources.sim")
    result = runner.invoke(
        cli.app,
        ["data", "show", "--source", "sim:3", "--symbol", "BTCUSDT", "--timeframe", "1h",
         "--limit", "200", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["rows"] == 200
    assert shown["simulated"] is True
    assert shown["last_open_ms"] > shown["first_open_ms"]
    human = runner.invoke(
        cli.app, ["data", "show", "--source", "sim", "--symbol", "BTCUSDT", "--timeframe", "4h"]
    )
    assert human.exit_code == 0, human.output
    assert "SIMULATED" in human.stdout


def test_fetch_from_sim_twice_adds_only_new_bars(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sim into tmp_path: 100 bars first, then exactly the 3 that closed since."""
    pytest.importorskip("conclave.market.sources.sim")
    now = {"ms": at("2024-03-01T12:10:00")}
    monkeypatch.setattr(cli, "wall_clock_ms", lambda: now["ms"])
    args = ["data", "fetch", "--source", "sim", "--symbol", "BTCUSDT", "--timeframe", "1h",
            "--limit", "100", "--store", str(tmp_path / "store"), "--format", "csv"]  # fmt: skip
    first = runner.invoke(cli.app, args)
    assert first.exit_code == 0, first.output
    assert "SIMULATED" in first.stdout
    now["ms"] += 3 * 3_600_000
    second = runner.invoke(cli.app, [*args, "--json"])
    assert second.exit_code == 0, second.output
    [series] = json.loads(second.stdout)["series"]
    assert (series["added"], series["rows"], series["simulated"]) == (3, 103, True)
    files = list((tmp_path / "store").rglob("BTCUSDT_1h.csv"))
    assert len(files) == 1
    assert len(files[0].read_text().strip().splitlines()) == 1 + 103
