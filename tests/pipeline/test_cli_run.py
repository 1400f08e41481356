"""``conclave run`` through Typer's runner: JSON shape, SIMULATED label, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conclave import cli
from conclave.pipeline import ALL_AGENTS

BTC_1H = "binance_BTCUSDT_1h_20170817-20221011.csv"


def test_run_sim_json_has_the_documented_shape(runner: CliRunner) -> None:
    """--json prints one object: runId, symbol, timeframe, asOf, nine steps, decision."""
    args = ["run", "--symbol", "BTCUSDT", "--timeframe", "1h", "--source", "sim", "--json"]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert {"runId", "symbol", "timeframe", "asOf", "steps", "decision"} <= out.keys()
    assert (out["symbol"], out["timeframe"], out["simulated"]) == ("BTCUSDT", "1h", True)
    assert list(out["steps"]) == list(ALL_AGENTS)
    for name, step in out["steps"].items():
        assert step.keys() == {"score", "confidence", "payload", "meta"}
        assert step["meta"]["agent"] == name
        assert {"duration_ms", "status", "timestamp", "as_of"} <= step["meta"].keys()
    assert {"action", "sizeMultiplier", "tradable", "contributions"} <= out["decision"].keys()


def test_run_sim_table_is_labelled_simulated(runner: CliRunner) -> None:
    """The table form names every agent and carries the SIMULATED label."""
    args = ["run", "--symbol", "BTCUSDT", "--timeframe", "1h", "--source", "sim"]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert "SIMULATED" in result.stdout
    assert all(name[:15] in result.stdout for name in ALL_AGENTS)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--symbol", "btcusdt", "--timeframe", "1h"], "--symbol"),
        (["--symbol", "NOPEUSDT", "--timeframe", "1h"], "--symbol"),
        (["--symbol", "BTCUSDT", "--timeframe", "1H"], "--timeframe"),
        (["--symbol", "BTCUSDT", "--timeframe", "1h", "--as-of", "yesterday"], "--as-of"),
    ],
)
def test_bad_input_exits_2_naming_the_field(runner: CliRunner, args: list[str], field: str) -> None:
    """Bad symbol, timeframe or time: one line naming the option, exit 2."""
    result = runner.invoke(cli.app, ["run", *args, "--source", "sim"])
    assert result.exit_code == 2, result.output
    assert field in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.shared_data
def test_historical_file_without_as_of_is_stale_and_suggests_it(
    runner: CliRunner, candles_dir: Path
) -> None:
    """A historical file read as of now: stale-data message, hint --as-of, exit 1."""
    src = f"file:{candles_dir / BTC_1H}"
    result = runner.invoke(cli.app, ["run", "--symbol", "BTCUSDT", "--timeframe", "1h",
                                     "--source", src])  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "stale_data" in result.stderr
    assert "--as-of" in result.stderr


@pytest.mark.shared_data
def test_historical_file_with_as_of_decides(runner: CliRunner, candles_dir: Path) -> None:
    """One real BTC 1h file with --as-of: higher timeframes built from it, eight ok and
    news-sentiment no_data (no news source)."""
    src = f"file:{candles_dir / BTC_1H}"
    args = ["run", "--symbol", "BTCUSDT", "--timeframe", "1h", "--source", src,
            "--as-of", "2022-10-11T11:00", "--json"]  # fmt: skip
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["asOf"] == "2022-10-11T11:00:00.000Z"
    assert out["simulated"] is False
    statuses = {a: s["meta"]["status"] for a, s in out["steps"].items()}
    assert statuses == {a: "no_data" if a == "news-sentiment" else "ok" for a in statuses}
    assert out["decision"]["status"] == "ok"


def test_run_with_news_reads_headlines_up_to_as_of(candles_dir: Path, shared_data: Path) -> None:
    """--news file:PATH feeds news-sentiment with headlines published at or before as_of."""
    import json

    from typer.testing import CliRunner

    from conclave.cli import app

    news = shared_data / "news" / "btc_price_moving_news_2010-2022.csv"
    args = [
        "run", "--symbol", "BTCUSDT", "--timeframe", "1h", "--json",
        "--source", f"file:{candles_dir / 'binance_BTCUSDT_1h_20170817-20221011.csv'}",
        "--as-of", "2021-02-09T00:00", "--news", f"file:{news}",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    step = json.loads(result.stdout)["steps"]["news-sentiment"]
    assert step["meta"]["status"] == "ok"
    assert step["confidence"] > 0
    assert step["score"] > 0  # "Tesla buys BTC" the day before


def test_run_with_a_bad_news_spec_exits_2_naming_news() -> None:
    """An unknown news source form is refused before any work, naming --news."""
    from typer.testing import CliRunner

    from conclave.cli import app

    args = ["run", "--symbol", "BTCUSDT", "--timeframe", "1h", "--news", "ftp://x"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "--news" in result.output
