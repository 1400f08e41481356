"""``conclave backtest``: figures, JSON, checks, outputs, and clear errors for bad input."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from conclave import cli
from conclave.agents import REGISTRY, Agent
from conclave.cli.common import fail
from tests.backtest.test_checks import AnchoredMomentum, PeekingMomentum

BTC_1H = "binance_BTCUSDT_1h_20170817-20221011.csv"
PERIOD = ["--from", "2021-01-01", "--to", "2021-07-01"]


def _source(candles_dir: Path) -> list[str]:
    return ["--source", f"file:{candles_dir / BTC_1H}", "--symbol", "BTCUSDT", "--timeframe", "1h"]


def _file(path: Path) -> list[str]:
    return ["--source", f"file:{path}", "--symbol", "BTCUSDT", "--timeframe", "1h"]


def _doctored_btc(candles_dir: Path, path: Path) -> Path:
    """Real BTC 1h from December 2020 to February 2021 at ``path``, with two bars' high and
    low swapped, one close of 0 and one negative volume in January and February."""
    with (candles_dir / BTC_1H).open() as f:
        rows = list(csv.reader(f))
    lo, hi = 1_606_780_800_000, 1_614_556_800_000  # 2020-12-01, 2021-03-01
    body = [r for r in rows[1:] if lo <= int(r[0]) < hi]
    at = {int(r[0]): r for r in body}
    day, jan = 86_400_000, 1_609_459_200_000
    for d in (9, 19):
        r = at[jan + d * day]
        r[2], r[3] = r[3], r[2]
    at[jan + 31 * day][4] = "0"
    at[jan + 40 * day][5] = "-1"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([rows[0], *body])
    return path


def test_json_with_both_checks_and_every_output(
    runner: CliRunner, candles_dir: Path, tmp_path: Path
) -> None:
    """Half a year of real BTC 1h: one JSON object with the figures next to buy-and-hold,
    parity at 20 bars and the lookahead check passing, and the four files written."""
    out = tmp_path / "out"
    args = [
        "backtest", *_source(candles_dir), *PERIOD, "--json", "--check-parity", "20",
        "--check-lookahead", "2", "--signals", str(out / "signals.csv"),
        "--trades", str(out / "trades.parquet"), "--report", str(out / "report.html"),
    ]  # fmt: skip
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["bars"] == 181 * 24 - shown["missingBars"]
    assert shown["from"].startswith("2021-01-01T00:00")
    perf = shown["performance"]
    for key in ("totalReturn", "cagr", "sharpe", "sortino", "maxDrawdown", "winRate", "trades",
                "timeInMarket", "feesPaid"):  # fmt: skip
        assert key in perf
    bh = perf["buyAndHold"]
    assert bh["totalReturn"] == pytest.approx(0.19, abs=0.05)  # 29,000 -> 35,000 USDT
    assert perf["trades"] == shown["fills"] > 0
    assert shown["parity"]["ok"] is True
    assert shown["parity"]["maxAbsDiff"] <= 1e-9
    assert shown["lookahead"]["ok"] is True
    assert [s["name"] for s in shown["skill"]][-1] == "decision"
    with (out / "signals.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == shown["bars"]
    assert {"momentum.score", "conviction", "action", "equity"} <= set(rows[0])
    assert float(rows[-1]["equity"]) == pytest.approx(perf["finalEquity"])
    assert pq.read_table(out / "trades.parquet").num_rows == shown["fills"]
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_table_names_the_figures_and_the_checks(runner: CliRunner, candles_dir: Path) -> None:
    args = ["backtest", *_source(candles_dir), *PERIOD, "--check-parity", "5"]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    wanted = ("total return", "CAGR", "Sharpe", "Sortino", "max drawdown", "win rate",
              "fees paid", "buy and hold", "agent skill", "parity with live: agrees")  # fmt: skip
    for text in wanted:
        assert text in result.stdout


def test_agents_and_weights(runner: CliRunner, candles_dir: Path) -> None:
    """Two agents with weights: the quorum follows, the risk manager runs regardless."""
    args = ["backtest", *_source(candles_dir), *PERIOD, "--json", "--check-parity", "8",
            "--agents", "market-structure,momentum", "--weights", "momentum=2"]  # fmt: skip
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["settings"]["agents"] == ["market-structure", "momentum", "risk-manager"]
    assert shown["settings"]["decision"]["quorum"] == 2
    assert shown["settings"]["decision"]["weights"]["momentum"] == 2.0
    assert shown["parity"]["ok"] is True


def test_the_sim_source_is_labelled(runner: CliRunner) -> None:
    args = ["backtest", "--source", "sim", "--symbol", "BTCUSDT", "--timeframe", "1h",
            "--from", "2024-01-01", "--to", "2024-03-01", "--json"]  # fmt: skip
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["simulated"] is True
    assert shown["bars"] == 60 * 24
    # no --from on a live source: the year before --to, with the warm-up read before it
    args = ["backtest", "--source", "sim", "--symbol", "ETHUSDT", "--timeframe", "4h",
            "--to", "2024-06-01", "--json"]  # fmt: skip
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert (shown["bars"], shown["from"]) == (365 * 6, "2023-06-02T00:00:00.000Z")
    assert shown["settings"]["warmupBars"] > 0


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--agents", "momentun"], "did you mean 'momentum'"),
        (["--agents", "risk-manager"], "at least one analysis agent"),
        (["--weights", "momentum=abc"], "AGENT=NUMBER"),
        (["--weights", "volatility-regime=2"], "not directional"),
        (["--weights", "momentun=2"], "did you mean 'momentum'"),
        (["--signals", "out.txt"], "--signals"),
        (["--fee", "0.5"], "--fee"),
        (["--from", "2021-07-01", "--to", "2021-01-01"], "--to must be after --from"),
        (["--from", "yesterday"], "--from"),
    ],
)
def test_bad_input_exits_2_naming_the_option(
    runner: CliRunner, candles_dir: Path, extra: list[str], says: str
) -> None:
    result = runner.invoke(cli.app, ["backtest", *_source(candles_dir), *extra])
    assert result.exit_code == 2, result.output
    assert says in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("agent", "check", "says"),
    [
        (AnchoredMomentum, ["--check-parity", "10"], "parity with live failed"),
        (PeekingMomentum, ["--check-lookahead", "2"], "lookahead found in momentum"),
    ],
)
def test_a_failed_check_exits_1_after_printing_the_figures(
    runner: CliRunner,
    candles_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    agent: type[Agent],
    check: list[str],
    says: str,
) -> None:
    """A momentum agent with an unbounded window fails parity; one that peeks at the next
    bar fails the lookahead check: exit 1 naming it, the JSON still printed."""
    monkeypatch.setattr("conclave.agents.REGISTRY", REGISTRY.replacing("momentum", agent))
    args = ["backtest", *_source(candles_dir), "--from", "2021-01-01", "--to", "2021-02-01"]
    result = runner.invoke(cli.app, [*args, "--json", *check])
    assert result.exit_code == 1, result.output
    assert says in result.output
    shown = json.loads(result.stdout)
    key = "parity" if "parity" in says else "lookahead"
    assert shown[key]["ok"] is False


def test_a_binance_backtest_pages_through_stub_bx_and_agrees_with_live(
    runner: CliRunner, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--source binance`` against Stub-BX on loopback (real BTC 1h klines in Binance's wire
    format): two months plus the warm-up arrive in pages of at most 1,000 bars, and the
    live pipeline, reading the same exchange bar by bar, agrees at 8 bars."""
    from tests.fakes.fake_binance import KLINES, FakeBinance

    with FakeBinance(shared_data).running() as stub:
        monkeypatch.setenv("CONCLAVE_MARKET__BINANCE__BASE_URL", stub.base_url)
        args = ["backtest", "--source", "binance", "--symbol", "BTCUSDT", "--timeframe", "1h",
                "--from", "2021-01-01", "--to", "2021-03-01", "--json",
                "--check-parity", "8"]  # fmt: skip
        result = runner.invoke(cli.app, args)
        hits = stub.requests(KLINES)
    assert stub.server_errors == []
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["bars"] == 59 * 24 - shown["missingBars"]
    assert shown["simulated"] is False
    assert shown["parity"]["ok"] is True
    assert shown["parity"]["bars"] >= 8
    limits = [int(h.params["limit"]) for h in hits]
    # the history in two pages (1,000 then the rest, 59 x 24 + warm-up + 1 bars in all),
    # then one request of the live pipeline's window at each bar checked
    warm = shown["settings"]["warmupBars"]
    assert limits[:2] == [1000, 59 * 24 + warm + 1 - 1000]
    assert len(set(limits[2:])) == 1
    assert len(hits) - 2 == shown["parity"]["bars"]


def test_what_validation_rejected_is_in_the_json_and_the_table(
    runner: CliRunner, candles_dir: Path, tmp_path: Path
) -> None:
    """The shared files validate clean, so a doctored copy of real BTC 1h (in a file whose
    name holds ``[x]``): four rows rejected, counted by reason in the JSON's ``validation``
    and in the printed table, the path printed as written, and the rejected bars left as
    gaps, never filled."""
    path = _doctored_btc(candles_dir, tmp_path / "btc[x].csv")
    args = ["backtest", *_file(path), "--from", "2021-01-01", "--to", "2021-03-01"]
    result = runner.invoke(cli.app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    found = shown["validation"]
    reasons = {"high below low": 2, "price not positive": 1, "negative volume": 1}
    assert found["rejected"] == found["base"]["rejected"] == reasons
    assert found["rejectedRows"] == found["base"]["rejectedRows"] == 4
    assert found["base"]["rowsKept"] == found["base"]["rowsRead"] - 4
    assert (found["duplicatesMerged"], found["droppedUnclosed"]) == (0, 0)
    assert sorted(found["resampled"]) == ["1d", "4h"]
    assert shown["missingBars"] >= 4
    assert shown["source"] == f"file:{path}"

    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    table = result.stdout
    assert "validation of the rows read" in table
    assert f"source file:{path}" in table
    for reason, n in reasons.items():
        assert re.search(rf"{reason}\s.*\b{n}\b", table), reason
    assert re.search(r"1h \(base\)[\s│|]+[\d,]+[\s│|]+[\d,]+[\s│|]+4\b", table)


def test_a_clean_file_shows_nothing_rejected(runner: CliRunner, candles_dir: Path) -> None:
    result = runner.invoke(cli.app, ["backtest", *_source(candles_dir), *PERIOD, "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)["validation"]
    assert (found["rejectedRows"], found["rejected"], found["duplicatesMerged"]) == (0, {}, 0)
    assert found["base"]["rowsRead"] == found["base"]["rowsKept"] > 0


BAD_ROW = "open_time_ms,open,high,low,close,volume\n1609459200000,[bold]x,2,1,1.5,3\n"
ALL_REJECTED = "open_time_ms,open,high,low,close,volume\n" + "".join(
    f"{1_609_459_200_000 + i * 3_600_000},10,9,11,10,1\n" for i in range(30)
)


@pytest.mark.parametrize(
    ("name", "content", "extra", "code", "says"),
    [
        # the file cannot be parsed: the path and the value print as written, with the code
        ("bad[x].csv", BAD_ROW, [], 3, "bad[x].csv: line 2, column 2: not a number: '[bold]x'"),
        ("bad[x].csv", BAD_ROW, [], 3, "[invalid_candles]"),
        ("all[x].csv", ALL_REJECTED, [], 3, "rejected every one of the 30 BTCUSDT 1h rows read"
                                            " (high below low 30) [invalid_candles]"),
        (BTC_1H, None, ["--from", "2030-01-01"], 3, "[insufficient_data]"),
        (BTC_1H, None, ["--to", "2017-01-01"], 3, "no BTCUSDT 1h bar opened before 2017-01-01"),
        ("missing[x].csv", None, [], 2, "candle path not found:"),
        (BTC_1H, None, [*PERIOD, "--timeframe", "4h"], 2, "--timeframe:"),
    ],
)  # fmt: skip
def test_bad_data_exits_3_and_bad_options_exit_2(
    runner: CliRunner,
    candles_dir: Path,
    tmp_path: Path,
    name: str,
    content: str | None,
    extra: list[str],
    code: int,
    says: str,
) -> None:
    """Input the backtest cannot use is told apart from a failed check (exit 1): data that
    cannot be read, parsed or that holds no usable bar in the period exits 3, a bad option
    exits 2; one red line each, printed literally (no rich markup eats a ``[...]``)."""
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    elif name == BTC_1H:
        path = candles_dir / BTC_1H
    result = runner.invoke(cli.app, ["backtest", *_file(path), *extra])
    assert result.exit_code == code, result.output
    assert says in result.stderr
    if "[" in name and content is not None:
        assert str(path) in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_an_output_that_cannot_be_written_exits_2_naming_the_option(
    runner: CliRunner, candles_dir: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "file[x]"
    blocker.write_text("a file, not a directory")
    args = ["backtest", *_source(candles_dir), "--from", "2021-01-01", "--to", "2021-01-15",
            "--trades", str(blocker / "trades.csv")]  # fmt: skip
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2, result.output
    assert f"--trades: cannot write {blocker / 'trades.csv'}" in result.stderr


def test_error_text_prints_literally(capsys: pytest.CaptureFixture[str]) -> None:
    """A message holding rich markup (``[bold]``, ``[/]``, ``[E123]``) and a path with
    ``[x]`` print character for character after ``error:``."""
    from rich.console import Console

    message = r"--source: /data/btc[x].csv: [bold]oops[/] [E123] C:\tmp\\"
    with pytest.raises(typer.Exit) as info:
        fail(Console(stderr=True, width=40), message, 3)
    assert info.value.exit_code == 3
    assert capsys.readouterr().err == f"error: {message}\n"
