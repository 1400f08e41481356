"""``conclave backtest``: figures, JSON, checks, outputs, and clear errors for bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conclave import cli
from conclave.agents import REGISTRY, Agent
from tests.backtest.test_checks import AnchoredMomentum, PeekingMomentum

BTC_1H = "binance_BTCUSDT_1h_20170817-20221011.csv"
PERIOD = ["--from", "2021-01-01", "--to", "2021-07-01"]


def _source(candles_dir: Path) -> list[str]:
    return ["--source", f"file:{candles_dir / BTC_1H}", "--symbol", "BTCUSDT", "--timeframe", "1h"]


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
    # the history in two pages (1,000 then the rest, 59 x 24 + 399 warm-up + 1 bars in all),
    # then one request of the live pipeline's 529 bars at each bar checked
    assert limits[:2] == [1000, 59 * 24 + 399 + 1 - 1000]
    assert limits[2:] == [529] * (len(hits) - 2)
    assert len(hits) - 2 == shown["parity"]["bars"]
