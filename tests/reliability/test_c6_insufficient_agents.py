"""RELIABILITY C6: more than 3 of the 9 agents missing ends the run
``failed: insufficient_agents``.

Pass figure of the row: **0 decisions emitted.** Every one of the 382 sets of 4 to 9 missing
agents is decided, each agent missing in one of the ways a run sees (no step, error,
timeout, stale data, an out-of-range value), while the agents left all point the same
strong way (a BUY if they could decide): every one is ``failed`` with reason
``insufficient_agents``, no action, not tradable. The control: with at most 2 analysis
agents missing (and the risk manager up) a decision is made. Then through
``POST /pipeline/run``, with four agent services down (closed ports): the run is recorded
with no action.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path

import httpx2

from conclave.agents import REGISTRY
from conclave.pipeline import DecisionConfig, StepResult, decide
from tests.pipeline.helpers import step, steps
from tests.services.test_api import closed_port, make_settings

CONFIG = DecisionConfig()
RUN = {"symbol": "BTCUSDT", "timeframe": "1h"}
#: The ways an agent goes missing from a run: no step at all, or a step without a value.
MISSING_AS = ("absent", "error", "timeout", "stale_data", "score 7")


def missing_step(agent: str, how: str) -> StepResult | None:
    if how == "absent":
        return None
    if how == "score 7":
        return step(agent, 7.0, 80.0)
    return StepResult.failed(agent, how, f"{how}: injected")  # type: ignore[arg-type]


def sets_of(sizes: range) -> Iterator[tuple[str, ...]]:
    for k in sizes:
        yield from itertools.combinations(REGISTRY.names, k)


def test_c6_every_set_of_four_or_more_missing_agents_emits_no_decision() -> None:
    """C6 (pass figure: 0 decisions emitted): all 382 sets of 4 to 9 missing agents of 9,
    missing in turn as absent, error, timeout, stale data or score 7, the others unanimous
    at +0.9: 382 x ``failed`` ``insufficient_agents``, action None, not tradable, size 0;
    0 decisions."""
    decided, checked = [], 0
    for i, gone in enumerate(sets_of(range(4, 10))):
        s = steps(0.9, 90.0)
        for j, agent in enumerate(gone):
            bad = missing_step(agent, MISSING_AS[(i + j) % len(MISSING_AS)])
            if bad is None:
                del s[agent]
            else:
                s[agent] = bad
        d = decide(s, CONFIG)
        checked += 1
        if d.status != "failed" or d.action is not None or d.tradable or d.size_multiplier:
            decided.append((gone, d.status, d.action))
            continue
        assert d.reason.startswith("insufficient_agents"), (gone, d.reason)
        assert set(gone) <= set(d.missing_agents)
        assert d.to_wire()["action"] is None
    assert decided == []
    assert checked == sum(math.comb(9, k) for k in range(4, 10)) == 382


def test_c6_control_two_analysis_agents_missing_still_decide() -> None:
    """The control for C6: with 0 to 2 analysis agents missing and the risk manager up,
    every one of the 37 sets decides a tradable BUY (degraded when any is missing)."""
    analysis = REGISTRY.analysis
    count = 0
    for k in range(3):
        for gone in itertools.combinations(analysis, k):
            s = steps(0.9, 90.0)
            for agent in gone:
                s[agent] = StepResult.failed(agent, "error", "down")
            d = decide(s, CONFIG)
            assert (d.status, d.action, d.tradable) == ("ok", "BUY", True), gone
            assert d.degraded is bool(gone)
            count += 1
    assert count == 1 + 8 + 28


async def test_c6_through_the_api_four_services_down_record_a_run_without_action(
    tmp_path: Path,
) -> None:
    """C6 end to end: four agents called over HTTP on closed ports (connection refused),
    the other five in process: ``POST /pipeline/run`` answers 201, the recorded run's
    decision is ``failed`` ``insufficient_agents`` with action null, naming the four; the
    same when read back; 0 decisions emitted over three such sets."""
    from conclave.services.api import create_app

    sets = [
        ("market-structure", "order-flow", "momentum", "volatility-regime"),
        ("momentum", "multi-timeframe", "pattern-recognition", "risk-manager"),
        ("order-flow", "statistical-edge", "multi-timeframe", "news-sentiment"),
    ]
    emitted = 0
    for gone in sets:
        agents = {"http": {a: True for a in gone}, "ports": {a: closed_port() for a in gone},
                  "timeout_s": 1.0}  # fmt: skip
        app = create_app(make_settings(tmp_path / "-".join(gone), agents=agents))
        async with app.router.lifespan_context(app):
            transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx2.AsyncClient(transport=transport, base_url="http://t") as api:
                resp = await api.post("/pipeline/run", json=RUN)
                assert resp.status_code == 201, resp.text
                run = resp.json()
                stored = (await api.get(f"/pipeline/runs/{run['runId']}")).json()
        for seen in (run, stored):
            d = seen["decision"]
            emitted += d["action"] is not None or d["tradable"]
            assert d["status"] == "failed"
            assert d["reason"].startswith("insufficient_agents")
            assert set(gone) <= set(seen["missingAgents"])
            for agent in gone:
                assert seen["steps"][agent]["meta"]["reason"].startswith("connection_refused")
    assert emitted == 0
