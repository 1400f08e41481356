"""RELIABILITY C1: ``kill -9`` one agent service during 100 runs; the runs finish degraded.

Pass figure of the row: **100/100 runs recorded; the degraded flag set in 100 % of the
affected runs** (its third figure, p99 extra latency <= 50 ms, is a speed and belongs to a
benchmark). Three agents run as real services (the other six in process): 100 runs through
the orchestrator's API, the momentum service SIGKILLed before run 41. Every run answers 201
and is listed by ``GET /pipeline/runs``; the 40 before the kill are whole, the 60 after it
are degraded with momentum missing (refused, then skipped by its open breaker) and every
other agent ok.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

from tests.observability.tracing_helpers import BODY, api_client, make_settings
from tests.security.procs import clean_env, conclave, free_port, started, wait_live

HTTP_AGENTS = ("momentum", "order-flow", "market-structure")
RUNS, KILL_BEFORE = 100, 40


@pytest.mark.timeout(240)
async def test_c1_an_agent_killed_mid_series_every_run_recorded_and_degraded(
    tmp_path: Path,
) -> None:
    env = clean_env(tmp_path)
    urls: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        procs = {}
        for name in HTTP_AGENTS:
            port = free_port()
            cmd = conclave("agent", "serve", name, "--port", str(port), "--host", "127.0.0.1")
            procs[name] = stack.enter_context(started(cmd, env, tmp_path, tmp_path / f"{name}.log"))
            urls[name] = f"http://127.0.0.1:{port}"
        for name, url in urls.items():
            wait_live(url, procs[name])
        settings = make_settings(tmp_path, agents={"http": dict.fromkeys(HTTP_AGENTS, True),
                                                   "urls": urls, "timeout_s": 2.0})  # fmt: skip
        runs: list[dict[str, object]] = []
        async with api_client(settings) as api:
            for i in range(RUNS):
                if i == KILL_BEFORE:
                    os.kill(procs["momentum"].pid, signal.SIGKILL)
                    procs["momentum"].wait(timeout=10)
                resp = await api.post("/pipeline/run", json=BODY)
                assert resp.status_code == 201, (i, resp.text)
                runs.append(resp.json())
            listed = (await api.get("/pipeline/runs", params={"limit": 100})).json()
    assert listed["total"] == RUNS
    assert {r["runId"] for r in listed["items"]} == {r["runId"] for r in runs}
    before, after = runs[:KILL_BEFORE], runs[KILL_BEFORE:]
    assert [r["degraded"] for r in before] == [False] * KILL_BEFORE
    assert [r["degraded"] for r in after] == [True] * (RUNS - KILL_BEFORE)
    assert all(r["missingAgents"] == ["momentum"] for r in after)
    for run in after:
        steps = run["steps"]
        assert isinstance(steps, dict)
        assert steps["momentum"]["meta"]["status"] == "error"
        others = {n: s["meta"]["status"] for n, s in steps.items() if n != "momentum"}
        assert set(others.values()) <= {"ok", "no_data"}, others  # news: no source, no data
