"""One registry of agents: a tenth agent added to a copy is served, listed and decided on.

Nothing but the copy of the registry changes: the agent service app, the orchestrator's API
and the decision all read the agents, their ports and their roles from the registry given.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import httpx2
import numpy as np
import pytest
from fastapi import FastAPI

from conclave.agents import REGISTRY, Agent, AgentInput, AgentParams, Needs, SeriesOutput
from conclave.agents.momentum import Momentum
from conclave.agents.registry import Registry
from conclave.errors import ConfigurationError, InvalidRequestError
from conclave.market.sources.sim import SimSource
from conclave.pipeline import DecisionConfig, Pipeline, decide
from conclave.pipeline.orchestrator import default_agents
from conclave.services.agent_app import create_agent_app
from conclave.services.api import create_app
from tests.pipeline.helpers import step, steps
from tests.services.helpers import SIM_NOW, sim_gateway
from tests.services.test_api import make_settings

IDS = {"accountId": "demo", "symbol": "BTCUSDT", "timeframe": "1h"}


class Tenth(Agent):
    """A directional agent that is always fully bullish."""

    name: ClassVar[str] = "tenth"
    version: ClassVar[str] = "0.1.0"
    description: ClassVar[str] = "always bullish (a test double)"
    needs: ClassVar[Needs] = Needs(min_bars=1, lookback=1)
    Params: ClassVar[type[AgentParams]] = AgentParams

    def compute(self, data: AgentInput) -> SeriesOutput:
        n = len(data.candles)
        return SeriesOutput(np.ones(n), np.full(n, 100.0), {"reason": "always bullish"})


TEN = REGISTRY.with_agent("tenth", Tenth)


@asynccontextmanager
async def client(app: FastAPI) -> AsyncIterator[httpx2.AsyncClient]:
    transport = httpx2.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=transport, base_url="http://a") as c,
    ):
        yield c


def test_the_copy_has_ten_and_the_registry_still_nine() -> None:
    """with_agent answers an extended copy (the tenth last, port 5010, directional); the
    registry itself is unchanged and cannot be changed."""
    assert list(TEN) == [*REGISTRY, "tenth"]
    assert TEN.ports["tenth"] == 5010
    assert TEN.role("tenth") == "directional"
    assert TEN.analysis == (*REGISTRY.analysis, "tenth")
    assert TEN.directional == (*REGISTRY.directional, "tenth")
    assert (TEN.sizing, TEN.risk) == (REGISTRY.sizing, REGISTRY.risk)
    assert len(REGISTRY) == 9
    assert "tenth" not in REGISTRY
    assert list(REGISTRY.ports.values()) == list(range(5001, 5010))
    with pytest.raises(AttributeError, match="immutable"):
        REGISTRY.sizing = "tenth"
    with pytest.raises(TypeError):
        REGISTRY["tenth"] = Tenth  # type: ignore[index]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda: REGISTRY.with_agent("momentum", Momentum), "already registered"),
        (lambda: REGISTRY.with_agent("eleventh", Tenth), "class named 'tenth'"),
        (lambda: REGISTRY.with_agent("tenth", Tenth, role="risk"), "one"),
        (lambda: REGISTRY.with_agent("Tenth", Tenth), "lower-case"),
        (lambda: Registry({"tenth": Tenth}, sizing="tenth", risk="tenth"), "both"),
    ],
)
def test_an_inconsistent_registry_is_refused(change: Any, says: str) -> None:
    """A name taken twice, a class under another name, a second risk agent, a bad name or one
    agent in two roles: a ValueError saying which."""
    with pytest.raises(ValueError, match=says):
        change()


def test_replacing_keeps_the_place_port_and_role() -> None:
    """replacing swaps the class behind a name and nothing else."""

    class Quiet(Momentum):
        pass

    swapped = REGISTRY.replacing("momentum", Quiet)
    assert swapped["momentum"] is Quiet
    assert swapped.ports == REGISTRY.ports
    assert (swapped.directional, swapped.sizing, swapped.risk) == (
        REGISTRY.directional, REGISTRY.sizing, REGISTRY.risk,
    )  # fmt: skip
    assert REGISTRY["momentum"] is Momentum


async def test_the_agent_app_serves_the_tenth(tmp_path: Path) -> None:
    """The agent service factory built with the copy serves /health, /info and /run for it."""
    app = create_agent_app("tenth", make_settings(tmp_path), registry=TEN,
                           now_ms=lambda: SIM_NOW, gateway=sim_gateway())  # fmt: skip
    async with client(app) as c:
        health = (await c.get("/health")).json()
        info = (await c.get("/info")).json()
        run = await c.post("/run", json=IDS)
    assert (health["status"], health["agent"]) == ("ok", "tenth")
    assert (info["name"], info["version"]) == ("tenth", "0.1.0")
    assert run.status_code == 200, run.text
    body = run.json()
    assert (body["score"], body["confidence"]) == (1.0, 100.0)
    assert (body["meta"]["agent"], body["meta"]["status"]) == ("tenth", "ok")


def test_the_default_registry_does_not_serve_the_tenth(tmp_path: Path) -> None:
    """Without the copy there is no tenth agent to serve."""
    with pytest.raises(InvalidRequestError, match="unknown agent 'tenth'"):
        create_agent_app("tenth", make_settings(tmp_path))


async def test_the_orchestrator_lists_and_runs_the_tenth(tmp_path: Path) -> None:
    """GET /agents of the API built with the copy lists ten agents, the tenth on port 5010;
    a run records its step and counts it in the decision."""
    app = create_app(make_settings(tmp_path), registry=TEN, now_ms=lambda: SIM_NOW,
                     source=SimSource(now_ms=lambda: SIM_NOW))  # fmt: skip
    async with client(app) as c:
        agents = (await c.get("/agents")).json()
        resp = await c.post("/pipeline/run", json={"symbol": "BTCUSDT", "timeframe": "1h"})
    assert [a["name"] for a in agents] == list(TEN)
    tenth = agents[-1]
    assert (tenth["name"], tenth["port"], tenth["url"]) == ("tenth", 5010, "http://127.0.0.1:5010")
    assert (tenth["mode"], tenth["status"]) == ("local", "ok")
    assert resp.status_code == 201, resp.text
    run = resp.json()
    assert list(run["steps"]) == list(TEN)
    assert run["steps"]["tenth"]["score"] == 1.0
    assert run["decision"]["quorum"]["healthy"] == 8  # news-sentiment: no source, no data
    assert run["decision"]["contributions"]["tenth"]["weight"] == 1.0


def test_the_decision_counts_the_tenth() -> None:
    """Quorum out of nine analysis agents, the tenth's weight, its score in the conviction:
    seven at +0.5 x 80 (weights 1, market-structure and multi-timeframe 0.5: sum w c 480)
    and the tenth at +1 x 100 weighing 2 give (240 + 200) / (480 + 200)."""
    config = DecisionConfig.for_registry(TEN, weights={"tenth": 2.0}, quorum=9)
    nine = steps(0.5, 80.0)
    ten = nine | {"tenth": step("tenth", 1.0, 100.0)}
    d = decide(ten, config, TEN)
    assert (d.status, d.action, d.degraded) == ("ok", "BUY", False)
    assert (d.healthy_analysis, d.quorum) == (9, 9)
    assert d.conviction == pytest.approx(440 / 680, abs=1e-15)
    assert d.confidence == pytest.approx(680 / 8)  # sum w c / sum w, all agreeing
    [last] = [c for c in d.contributions if c.agent == "tenth"]
    assert last.weight == 2.0
    assert last.contribution == pytest.approx(200 / 680)
    assert decide(nine, DecisionConfig()).conviction == pytest.approx(0.5)  # the nine alone
    short = decide(nine, config, TEN)  # the tenth missing: 8 of 9 healthy, quorum 9
    assert (short.status, short.missing_agents) == ("failed", ("tenth",))
    assert short.reason.startswith("insufficient_agents: 8 of 9 analysis agents")


def test_a_config_for_one_registry_is_refused_by_another() -> None:
    """Weights checked against the copy name the tenth; the nine refuse them, and a
    weight for the tenth is a typo for the nine."""
    config = DecisionConfig.for_registry(TEN, weights={"tenth": 2.0})
    with pytest.raises(ValueError, match=r"DecisionConfig\.for_registry"):
        decide(steps(), config)
    with pytest.raises(ValueError, match="unknown agent 'tenth'"):
        DecisionConfig(weights={"tenth": 2.0})


def test_the_factories_refuse_settings_naming_an_unknown_agent(tmp_path: Path) -> None:
    """Settings are checked against the registry where they meet it: a misspelt agent name
    stops each factory with a suggestion; the tenth's port is known only to the copy."""
    typo = make_settings(tmp_path, agents={"ports": {"momentun": 6003}})
    with pytest.raises(ConfigurationError, match="did you mean momentum"):
        create_app(typo)
    with pytest.raises(ConfigurationError, match="did you mean momentum"):
        create_agent_app("momentum", typo)
    own = make_settings(tmp_path, agents={"ports": {"tenth": 6010}})
    with pytest.raises(ConfigurationError, match="CONCLAVE_AGENTS__PORTS: unknown agent"):
        create_app(own)
    create_app(own, registry=TEN)
    assert own.agent_url("tenth", TEN) == "http://127.0.0.1:6010"


def test_a_pipeline_refuses_an_agent_its_registry_does_not_know() -> None:
    """The tenth handed to a pipeline of the nine would never be decided on: refused."""
    agents = default_agents() | {"tenth": Tenth()}
    with pytest.raises(ValueError, match="not in the registry: tenth"):
        Pipeline(sim_gateway(), agents=agents, executor="inline")
    assert list(Pipeline(sim_gateway(), registry=TEN, executor="inline").agents) == list(TEN)
