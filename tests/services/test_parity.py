"""Item 10, parity: in process and over HTTP (nine real uvicorn processes) give the same
score, confidence and payload for every agent on real contexts, and the same decision."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest

from conclave.agents import REGISTRY, AccountRisk, AccountState
from conclave.news.sources import FileNewsSource
from conclave.pipeline import LocalRunner, Pipeline, PipelineContext
from conclave.pipeline.agent_client import AgentHttpClient
from conclave.pipeline.context import InputPlan
from conclave.pipeline.http_runner import HttpRunner
from conclave.services.procs import is_alive, read_pidfile, start_agents, stop_recorded
from conclave.settings import AgentServiceSettings, Settings
from tests.services.helpers import FILE_AS_OF, NOW_ISO, context_at, file_gateway, free_port

pytestmark = pytest.mark.shared_data
NEWS = "news/btc_price_moving_news_2010-2022.csv"


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The nine services on free loopback ports; all stopped (and checked gone) after."""
    tmp = tmp_path_factory.mktemp("agents")
    ports = {n: free_port() for n in REGISTRY}
    settings = Settings(
        _env_file=None, data_dir=tmp, logs_dir=tmp / "logs",
        agents=AgentServiceSettings(ports=ports, start_timeout_s=60.0, stop_timeout_s=5.0),
    )  # fmt: skip
    try:
        started = start_agents(settings)
        assert [r.status for r in started] == ["started"] * 9, started
        procs = list(read_pidfile(settings).values())
        yield settings
    finally:
        stop_recorded(settings)
    assert not any(is_alive(p) for p in procs)


@pytest.fixture(scope="module")
def contexts(shared_data: Path) -> list[PipelineContext]:
    """Real BTC 1h contexts: with headlines and no account, a named unreadable account, an
    account with an equity curve in drawdown, the same with its own risk levels, and the
    same paused."""

    async def build() -> list[PipelineContext]:
        news = FileNewsSource(shared_data / NEWS, assets=("BTC",))
        async with Pipeline(file_gateway(shared_data), news_source=news) as pipe:
            with_news = await context_at(pipe, FILE_AS_OF[0])
        async with Pipeline(file_gateway(shared_data)) as pipe:
            named = await context_at(pipe, FILE_AS_OF[1], account_id="demo")
            plain = await context_at(pipe, FILE_AS_OF[2])
        t = np.arange(48, dtype=np.int64) * 3_600_000 + FILE_AS_OF[2] - 48 * 3_600_000
        equity = np.linspace(10_000.0, 8_700.0, 48)
        account = AccountState("acct-7", t, equity, open_exposure=0.25)
        own = AccountRisk((0.01, 0.02, 0.05), (0.01, 0.02, 0.04), 0.5, 0.8, 0.4)
        tight = replace(account, risk=own)
        paused = replace(account, risk=replace(own, blocked_reason="paused by operator"))
        return [
            with_news,
            named,
            replace(plain, account_id="acct-7", account=account),
            replace(plain, account_id="acct-7", account=tight),
            replace(plain, account_id="acct-7", account=paused),
        ]

    return asyncio.run(build())


@pytest.fixture
async def client() -> AsyncIterator[AgentHttpClient]:
    async with AgentHttpClient() as c:
        yield c


def http_runners(settings: Settings, client: AgentHttpClient) -> dict[str, HttpRunner]:
    return {
        n: HttpRunner(n, settings.agent_url(n, REGISTRY), client=client, timeout_s=5.0)
        for n in REGISTRY
    }


@pytest.mark.parametrize("name", list(REGISTRY))
async def test_every_agent_gives_identical_answers_in_both_modes(
    name: str, services: Settings, contexts: list[PipelineContext], client: AgentHttpClient
) -> None:
    """Same context -> identical status, score, confidence and payload, bit for bit."""
    runner = HttpRunner(name, services.agent_url(name, REGISTRY), client=client, timeout_s=5.0)
    agent = REGISTRY[name]()
    for ctx in contexts:
        agent_input = ctx.input_for(agent)
        local = await LocalRunner(agent).run(agent_input, now_iso=NOW_ISO)
        http = await runner.run(agent_input, now_iso=NOW_ISO)
        assert http.status == local.status, (http.error, local.error)
        assert http.score == local.score
        assert http.confidence == local.confidence
        assert http.payload == orjson.loads(orjson.dumps(local.payload))
        assert http.as_of == local.as_of


async def test_news_and_accounts_reach_the_services(contexts: list[PipelineContext]) -> None:
    """The sample covers what the wire carries: headlines, unreadable and real accounts."""
    assert contexts[0].news
    assert contexts[0].news[-1].title
    assert not contexts[1].account.readable
    assert len(contexts[2].account.equity) == 48
    assert contexts[3].account.risk is not None  # the account's own levels
    assert contexts[4].account.risk is not None
    assert contexts[4].account.risk.blocked_reason


async def test_whole_pipeline_decides_the_same_in_both_modes(
    services: Settings, shared_data: Path, client: AgentHttpClient
) -> None:
    """A whole run with nine HttpRunners gives the in-process decision, step for step."""
    for as_of, account in zip(FILE_AS_OF, (None, "demo", None), strict=True):
        async with Pipeline(file_gateway(shared_data)) as local_pipe:
            local = await local_pipe.run(account, "BTCUSDT", "1h", as_of_ms=as_of, now_iso=NOW_ISO)
        runners = http_runners(services, client)
        async with Pipeline(file_gateway(shared_data), runners=runners) as http_pipe:
            http = await http_pipe.run(account, "BTCUSDT", "1h", as_of_ms=as_of, now_iso=NOW_ISO)
        assert http.missing_agents == ()  # every agent answered over HTTP
        assert http.decision.to_wire() == local.decision.to_wire()
        for name in REGISTRY:
            a, b = http.steps[name], local.steps[name]
            assert (a.status, a.score, a.confidence) == (b.status, b.score, b.confidence)


async def test_trimmed_higher_windows_give_the_whole_windows_result(shared_data: Path) -> None:
    """multi-timeframe reads its higher bars within its lookback span: the trimmed input
    (`InputPlan.higher_bars`) gives the same answer as the whole 4h and 1d windows."""
    agent = REGISTRY["multi-timeframe"]()
    plan = InputPlan.of(agent, "1h")
    assert plan.higher == ("4h", "1d")
    assert plan.higher_bars
    assert all(n < 399 for n in plan.higher_bars)
    async with Pipeline(file_gateway(shared_data)) as pipe:
        for as_of in (*FILE_AS_OF, *(FILE_AS_OF[0] - k * 3_600_000 for k in range(1, 30, 7))):
            ctx = await context_at(pipe, as_of)
            trimmed = ctx.input(plan)
            whole = ctx.input(replace(plan, higher_bars=()))
            assert [len(trimmed.higher[t]) for t in plan.higher] == list(plan.higher_bars)
            a = agent.run(trimmed, now_iso=NOW_ISO)
            b = agent.run(whole, now_iso=NOW_ISO)
            assert a.status == b.status == "ok", (a.reason, b.reason)
            assert (a.score, a.confidence, a.payload, a.as_of) == (
                b.score, b.confidence, b.payload, b.as_of
            )  # fmt: skip


async def test_the_account_s_own_risk_levels_change_the_verdict_in_both_modes(
    services: Settings, contexts: list[PipelineContext], client: AgentHttpClient
) -> None:
    """Per-account limits and a pause travel on the wire: the risk manager over HTTP halts
    the tight and the paused account exactly as in process, unlike the default levels."""
    url = services.agent_url("risk-manager", REGISTRY)
    runner = HttpRunner("risk-manager", url, client=client, timeout_s=5.0)
    agent = REGISTRY["risk-manager"]()
    levels = []
    for ctx in contexts[2:]:
        http = await runner.run(ctx.input_for(agent), now_iso=NOW_ISO)
        levels.append((http.payload["level"], http.payload["allowed"]))
    default, tight, paused = levels
    assert default != tight
    assert tight == ("halt", False)
    assert paused == ("halt", False)
