"""Parity with the live pipeline and the lookahead check, on real data; and that both fail
when they should (an agent that peeks, an agent whose window is not bounded)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from conclave.agents import Agent, AgentInput, Needs, SeriesOutput
from conclave.agents.momentum import Momentum
from conclave.backtest.checks import check_lookahead, check_parity
from conclave.backtest.engine import run_backtest
from conclave.backtest.history import History, load_history
from conclave.backtest.result import BacktestResult
from conclave.backtest.settings import BacktestSettings
from conclave.market.sources.files import FileSource, parse_file_name
from conclave.market.sources.sim import SimSource
from conclave.pipeline.orchestrator import default_agents
from conclave.timeframes import DAY_MS

NOW_MS = 1_700_000_000_000
BTC_1H = "binance_BTCUSDT_1h_20170817-20221011.csv"


class PeekingMomentum(Momentum):
    """Scores each bar by the NEXT bar's move: lookahead the check must catch."""

    def compute(self, data: AgentInput) -> SeriesOutput:
        c = data.candles.close
        score = np.zeros(len(c))
        score[:-1] = np.sign(c[1:] - c[:-1])
        return SeriesOutput(score, np.full(len(c), 50.0), {})

    def compute_last(self, data: AgentInput) -> SeriesOutput:
        return SeriesOutput(np.zeros(1), np.full(1, 50.0), {})


class AnchoredMomentum(Momentum):
    """Price against the mean of ALL bars it is given: depends on where the window starts,
    so the live value (a 310-bar window) differs from the backtest's (whole history)."""

    needs: ClassVar[Needs] = Needs(min_bars=2, lookback=310)

    def compute(self, data: AgentInput) -> SeriesOutput:
        c = data.candles.close
        mean = np.cumsum(c) / np.arange(1, len(c) + 1)
        score = np.tanh(c / mean - 1.0)
        return SeriesOutput(score, np.full(len(c), 60.0), {})

    def compute_last(self, data: AgentInput) -> SeriesOutput:
        out = self.compute(data)
        return SeriesOutput(out.score[-1:], out.confidence[-1:], {})


async def _btc(
    candles_dir: Path, agents: dict[str, Agent], start_ms: int, days: int
) -> tuple[FileSource, History, BacktestSettings, BacktestResult]:
    src = FileSource(candles_dir / BTC_1H)
    history = await load_history(
        src, "BTCUSDT", "1h", agents, start_ms=start_ms, end_ms=start_ms + days * DAY_MS,
        now_ms=NOW_MS, resample_policy="resample",
    )  # fmt: skip
    settings = BacktestSettings(resample="resample")
    return src, history, settings, run_backtest(history, agents, settings)


async def test_parity_with_the_live_pipeline_on_real_btc(candles_dir: Path) -> None:
    """80 seeded bars of 2019-2020 plus every agent's warm-up edge: every agent's score and
    confidence and the decision agree with the live in-process pipeline within 1e-9."""
    agents = default_agents()
    src, _, settings, result = await _btc(candles_dir, agents, 1_546_300_800_000, 500)
    report = await check_parity(result, agents, settings, src, n=80, seed=7)
    assert report.mismatches == []
    assert report.max_abs_diff <= 1e-9
    assert report.ok()
    assert len(report.bars) >= 80
    assert report.compared > 80 * 17  # 8 agents x 2 values + the decision, per bar
    # the agents themselves agree bit for bit; only the decision's sum order may round
    assert all(v == 0.0 for k, v in report.per_agent.items() if k != "decision")


async def test_parity_catches_an_agent_whose_window_is_not_bounded(candles_dir: Path) -> None:
    agents = default_agents()
    agents["momentum"] = AnchoredMomentum()
    src, _, settings, result = await _btc(candles_dir, agents, 1_546_300_800_000, 60)
    report = await check_parity(result, agents, settings, src, n=10, seed=1)
    assert not report.ok()
    assert report.per_agent["momentum"] > 1e-3


async def test_no_lookahead_in_any_agent_on_real_btc(candles_dir: Path) -> None:
    """Every agent's series on the history cut at 6 seeded bars (and the first and last)
    equals the whole history's series up to the cut, exactly."""
    agents = default_agents()
    _, history, _, _ = await _btc(candles_dir, agents, 1_546_300_800_000, 200)
    report = check_lookahead(history, agents, cuts=6, seed=3)
    assert len(report.agents) == 8
    assert len(report.cuts) >= 7
    assert report.differing == dict.fromkeys(report.agents, 0)
    assert report.ok()


async def test_the_lookahead_check_catches_an_agent_that_peeks(candles_dir: Path) -> None:
    agents = default_agents()
    agents["momentum"] = PeekingMomentum()
    _, history, _, _ = await _btc(candles_dir, agents, 1_546_300_800_000, 30)
    report = check_lookahead(history, agents, cuts=3, seed=0)
    assert not report.ok()
    assert report.differing["momentum"] >= 3  # the bar at each cut differs
    assert {k for k, v in report.differing.items() if v} == {"momentum"}
    assert "momentum" in report.first_difference


def _manifest(shared: Path) -> dict[str, tuple[int, int, int]]:
    with (shared / "MANIFEST.csv").open() as f:
        return {
            Path(r["file"]).name: (int(r["rows"]), int(r["gaps"]), int(r["missing_bars"]))
            for r in csv.DictReader(f)
            if r["file"].startswith("candles/")
        }


async def test_every_candle_file_backtests_with_its_gaps_reported(shared_data: Path) -> None:
    """All 52 candle files (crypto, FX, stocks, monthly): the backtest runs, reports the
    gaps MANIFEST.csv lists (not filled), agrees with the live pipeline at 3 seeded bars
    and shows no lookahead at one cut."""
    manifest = _manifest(shared_data)
    assert len(manifest) == 52
    seen = 0
    for name, (rows, gaps, missing) in sorted(manifest.items()):
        parsed = parse_file_name(name)
        assert parsed is not None
        assert parsed.timeframe is not None
        agents = default_agents()
        src = FileSource(shared_data / "candles" / name)
        history = await load_history(
            src, parsed.symbol, parsed.timeframe.name, agents, start_ms=None, end_ms=None,
            now_ms=NOW_MS, resample_policy="resample",
        )  # fmt: skip
        settings = BacktestSettings(resample="resample")
        result = run_backtest(history, agents, settings)
        assert len(result) == len(history.candles) == rows, name
        assert (len(result.gaps), result.missing_bars) == (gaps, missing), name
        assert np.isfinite(result.equity).all(), name
        report = await check_parity(result, agents, settings, src, n=3, seed=seen)
        assert report.ok(), (name, report.to_json())
        look = check_lookahead(history, agents, cuts=1, seed=seen)
        assert look.ok(), (name, look.to_json())
        seen += 1
    assert seen == 52


async def test_the_sim_source_backtests_and_agrees_with_live() -> None:
    """Sixty days of the simulated market, labelled SIMULATED, in parity with live."""
    agents = default_agents()
    src = SimSource(11, now_ms=lambda: NOW_MS)
    end = NOW_MS - NOW_MS % DAY_MS
    history = await load_history(src, "BTCUSDT", "1h", agents, start_ms=end - 60 * DAY_MS,
                                 end_ms=end, now_ms=NOW_MS)  # fmt: skip
    assert history.simulated
    assert history.start == max(a.lookback("1h") for a in agents.values())  # the warm-up
    settings = BacktestSettings()
    result = run_backtest(history, agents, settings)
    assert result.simulated
    assert len(result) == 60 * 24
    assert result.gaps == ()
    report = await check_parity(result, agents, settings, src, n=12, seed=2)
    assert report.ok(), report.to_json()


@pytest.mark.parametrize("days", [0.5, 3])
async def test_a_short_period_still_runs_and_says_the_agents_were_not_ready(
    candles_dir: Path, days: float
) -> None:
    """From the very first bars of the file there is no warm-up: no decision until the
    agents' windows are full, never an exception."""
    agents = default_agents()
    src = FileSource(candles_dir / BTC_1H)
    first = 1_502_942_400_000
    history = await load_history(src, "BTCUSDT", "1h", agents, start_ms=first,
                                 end_ms=first + int(days * DAY_MS), now_ms=NOW_MS,
                                 resample_policy="resample")  # fmt: skip
    result = run_backtest(history, agents, BacktestSettings())
    assert history.start == 0
    assert len(result) == int(days * 24)
    assert (result.action == 0).all()
    assert result.fills == ()
    assert result.equity[-1] == result.starting_balance


@pytest.mark.parametrize(("timeframe", "days"), [("1h", 120), ("1d", 1500)])
async def test_parity_on_a_directory_of_files(candles_dir: Path, timeframe: str, days: int) -> None:
    """The whole candle directory as the source (the "auto" policy, each higher timeframe
    resampled because the bars the agents read of it fit one base request; before, one
    count for all made months too long to build, and 1d runs asked for a 1M file that
    does not exist): the live pipeline agrees with the backtest."""
    agents = default_agents()
    src = FileSource(candles_dir)
    start = 1_546_300_800_000  # 2019-01-01
    history = await load_history(
        src, "BTCUSDT", timeframe, agents, start_ms=start, end_ms=start + days * DAY_MS,
        now_ms=NOW_MS,
    )  # fmt: skip
    assert history.resampled == ({"4h", "1d"} if timeframe == "1h" else {"1w", "1M"})
    settings = BacktestSettings()
    result = run_backtest(history, agents, settings)
    report = await check_parity(result, agents, settings, src, n=25, seed=5)
    assert report.ok(), report.to_json()
    assert report.compared > 25 * 10
