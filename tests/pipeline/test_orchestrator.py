"""The in-process pipeline: one fetch per series, every step recorded, failures contained."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conclave.agents import AgentInput, SeriesOutput
from conclave.agents.market_structure import MarketStructure
from conclave.agents.momentum import Momentum
from conclave.agents.order_flow import OrderFlow
from conclave.market.gateway import MarketGateway
from conclave.market.sources.files import FileSource
from conclave.market.sources.sim import SimSource
from conclave.pipeline import ALL_AGENTS, Pipeline, PipelineRun
from conclave.pipeline.orchestrator import default_agents
from conclave.pipeline.runners import ExecutorKind
from tests.pipeline.helpers import AS_OF, NOW_ISO, CountingSource

SIM_AS_OF = 1_700_000_000_000


class Boom(MarketStructure):
    """market-structure that raises."""

    def compute(self, data: AgentInput) -> SeriesOutput:
        raise RuntimeError("boom")


class Slow(Momentum):
    """momentum that sleeps past a 50 ms timeout."""

    def compute(self, data: AgentInput) -> SeriesOutput:
        time.sleep(0.25)
        return super().compute(data)


class Liar(OrderFlow):
    """order-flow that bypasses the base class's validation and answers score 7."""

    def run(self, data: AgentInput, *, now_iso: str):  # type: ignore[no-untyped-def]
        from dataclasses import replace

        return replace(super().run(data, now_iso=now_iso), score=7.0)


def sim_gateway() -> tuple[MarketGateway, CountingSource]:
    source = CountingSource(SimSource(now_ms=lambda: SIM_AS_OF))
    return MarketGateway(source), source


def comparable(run: PipelineRun) -> dict[str, object]:
    """Everything but ids and durations."""
    wire = run.to_wire()
    for s in wire["steps"].values():
        s["meta"].pop("duration_ms")
    return {"steps": wire["steps"], "decision": wire["decision"]}


async def test_sim_run_records_all_nine_steps_and_fetches_each_series_once() -> None:
    """One run: each (symbol, timeframe) fetched once, nine steps with durations: eight ok,
    news-sentiment no_data (no news source)."""
    gateway, source = sim_gateway()
    async with Pipeline(gateway) as pipe:
        run = await pipe.run("acct-1", "BTCUSDT", "1h", as_of_ms=SIM_AS_OF, now_iso=NOW_ISO)
    assert source.calls, "nothing fetched"
    assert all(n == 1 for n in source.calls.values()), source.calls
    assert list(run.steps) == list(ALL_AGENTS)
    assert all(s.duration_ms > 0 for s in run.steps.values())
    assert {a: s.status for a, s in run.steps.items()} == {
        a: "no_data" if a == "news-sentiment" else "ok" for a in ALL_AGENTS
    }
    assert run.simulated is True
    assert run.degraded is False
    assert run.decision.status == "ok"
    assert run.decision.action in ("BUY", "SELL", "HOLD")
    assert len(run.run_id) == 32


@pytest.mark.shared_data
async def test_real_btc_file_one_fetch_per_series_and_sequential_equals_parallel(
    candles_dir: Path,
) -> None:
    """Real BTC 1h (+4h, 1d files): one fetch per series; sequential, parallel inline and
    thread pool give exactly the same steps and decision."""
    results = []
    for parallel, executor in ((False, "inline"), (True, "inline"), (True, "thread")):
        source = CountingSource(FileSource(candles_dir))
        gateway = MarketGateway(source)
        ex: ExecutorKind = executor  # type: ignore[assignment]
        async with Pipeline(gateway, parallel=parallel, executor=ex) as pipe:
            run = await pipe.run(None, "BTCUSDT", "1h", as_of_ms=AS_OF, now_iso=NOW_ISO)
        # each series at most once; 4h may be resampled from the 1h page instead of fetched
        assert source.calls[("BTCUSDT", "1h")] == 1
        assert set(source.calls) <= {("BTCUSDT", tf) for tf in ("1h", "4h", "1d")}
        assert all(n == 1 for n in source.calls.values())
        assert all(s.ok for a, s in run.steps.items() if a != "news-sentiment"), run.missing_agents
        assert run.steps["news-sentiment"].status == "no_data"  # no news source
        assert run.simulated is False
        results.append(comparable(run))
    assert results[0] == results[1] == results[2]


async def test_process_pool_gives_the_same_answer() -> None:
    """Agents computed in worker processes answer exactly as inline."""
    answers = []
    for executor in ("inline", "process"):
        gateway, _ = sim_gateway()
        ex: ExecutorKind = executor  # type: ignore[assignment]
        async with Pipeline(gateway, executor=ex, workers=2, timeout_s=30.0) as pipe:
            run = await pipe.run(None, "ETHUSDT", "4h", as_of_ms=SIM_AS_OF, now_iso=NOW_ISO)
        answers.append(comparable(run))
    assert answers[0] == answers[1]


async def test_an_agent_that_raises_is_a_failed_step_not_a_crash() -> None:
    """A raising agent: step error naming the exception, run degraded, others decide."""
    agents = default_agents() | {"market-structure": Boom()}
    gateway, _ = sim_gateway()
    async with Pipeline(gateway, agents=agents) as pipe:
        run = await pipe.run(None, "BTCUSDT", "1h", as_of_ms=SIM_AS_OF, now_iso=NOW_ISO)
    failed = run.steps["market-structure"]
    assert (failed.status, failed.score, failed.confidence) == ("error", None, None)
    assert "boom" in failed.error
    assert run.degraded
    assert run.missing_agents == ("market-structure",)
    assert run.decision.status == "ok"
    wire = run.to_wire()["steps"]["market-structure"]
    assert wire["score"] is None
    assert wire["meta"]["status"] == "error"


async def test_out_of_range_value_from_an_agent_is_dropped() -> None:
    """C4 end to end: a score of 7 becomes a failed step and never reaches the decision."""
    agents = default_agents() | {"order-flow": Liar()}
    gateway, _ = sim_gateway()
    async with Pipeline(gateway, agents=agents) as pipe:
        run = await pipe.run(None, "BTCUSDT", "1h", as_of_ms=SIM_AS_OF, now_iso=NOW_ISO)
    assert run.steps["order-flow"].status == "error"
    assert run.steps["order-flow"].error.startswith("invalid_output")
    assert run.missing_agents == ("order-flow",)
    contribution = run.decision.to_wire()["contributions"]["order-flow"]
    assert contribution["score"] is None
    assert contribution["contribution"] is None


@pytest.mark.parametrize("executor", ["inline", "thread"])
async def test_an_agent_past_its_timeout_is_status_timeout(executor: ExecutorKind) -> None:
    """An agent slower than timeout_s is recorded as timeout, the run carries on."""
    agents = default_agents() | {"momentum": Slow()}
    gateway, _ = sim_gateway()
    async with Pipeline(gateway, agents=agents, executor=executor, timeout_s=0.05) as pipe:
        run = await pipe.run(None, "BTCUSDT", "1h", as_of_ms=SIM_AS_OF, now_iso=NOW_ISO)
    slow = run.steps["momentum"]
    assert (slow.status, slow.score) == ("timeout", None)
    assert "timeout" in slow.error
    assert run.missing_agents == ("momentum",)
    assert all(s.ok for n, s in run.steps.items() if n not in ("momentum", "news-sentiment"))


@pytest.mark.shared_data
async def test_stale_data_gives_no_decision_with_reason_stale_data(candles_dir: Path) -> None:
    """Historical file read as of today: every step stale_data, decision no_signal."""
    gateway = MarketGateway(FileSource(candles_dir))
    async with Pipeline(gateway) as pipe:
        run = await pipe.run(None, "BTCUSDT", "1h", as_of_ms=AS_OF + 86_400_000, now_iso=NOW_ISO)
    assert {s.status for s in run.steps.values()} == {"stale_data"}
    assert all(s.score is None for s in run.steps.values())
    d = run.decision
    assert (d.status, d.action, d.tradable) == ("no_signal", None, False)
    assert d.reason.startswith("stale_data")
    assert run.to_wire()["missingAgents"] == list(ALL_AGENTS)


async def test_a_failing_account_reader_halts_trading() -> None:
    """An unreadable account: the risk manager's verdict is not allowed, so HOLD."""

    class Broken:
        async def read(self, account_id: str, *, as_of_ms: int):  # type: ignore[no-untyped-def]
            raise OSError("database down")

    gateway, _ = sim_gateway()
    async with Pipeline(gateway, account_reader=Broken()) as pipe:
        run = await pipe.run("acct-9", "BTCUSDT", "1h", as_of_ms=SIM_AS_OF, now_iso=NOW_ISO)
    assert run.steps["risk-manager"].payload["allowed"] is False
    assert (run.decision.action, run.decision.tradable) == ("HOLD", False)
    assert "database down" in run.decision.reason


async def test_a_named_account_without_an_account_store_is_not_tradable() -> None:
    """A named account whose state cannot be read (no store configured) is never tradable."""
    gateway, _ = sim_gateway()
    async with Pipeline(gateway) as pipe:
        run = await pipe.run("acct-1", "BTCUSDT", "1h", as_of_ms=SIM_AS_OF, now_iso=NOW_ISO)
    assert run.steps["risk-manager"].payload["allowed"] is False
    assert run.decision.tradable is False
    assert "no account store" in run.decision.reason


async def test_no_account_is_assessed_as_a_fresh_account() -> None:
    """A run that names no account is a fresh account with no drawdown, and says so."""
    gateway, _ = sim_gateway()
    async with Pipeline(gateway) as pipe:
        run = await pipe.run(None, "BTCUSDT", "1h", as_of_ms=SIM_AS_OF, now_iso=NOW_ISO)
    risk = run.steps["risk-manager"]
    assert risk.status == "ok"
    assert risk.payload["allowed"] is True
    assert risk.payload["drawdown"] == 0
    assert "fresh account" in risk.payload["reason"]


async def test_bad_symbol_raises_before_any_fetch() -> None:
    """Bad input is not a data problem: InvalidRequestError, no source call."""
    from conclave.errors import InvalidSymbolError

    gateway, source = sim_gateway()
    async with Pipeline(gateway) as pipe:
        with pytest.raises(InvalidSymbolError):
            await pipe.run(None, "btc/../x", "1h", as_of_ms=SIM_AS_OF, now_iso=NOW_ISO)
    assert not source.calls
