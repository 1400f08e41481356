"""Logs name failures: an agent service's log and the orchestrator's say which agent and why."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx2
import orjson
import pytest
import structlog

from conclave.logging import configure_logging
from conclave.pipeline import Pipeline
from conclave.pipeline.agent_client import AgentHttpClient
from conclave.pipeline.breaker import CircuitBreaker
from conclave.pipeline.http_runner import HttpRunner
from conclave.services.procs import start_agents, stop_recorded
from conclave.settings import AgentServiceSettings, BreakerSettings, Settings
from tests.services.helpers import NOW_ISO, SIM_NOW, free_port, sim_gateway

AGENT = "momentum"


def grep(path: Path, word: str) -> list[str]:
    """The lines of ``path`` containing ``word``, case-insensitive (``grep -i``)."""
    pattern = re.compile(re.escape(word), re.IGNORECASE)
    return [line for line in path.read_text().splitlines() if pattern.search(line)]


@pytest.fixture
def agent_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """One momentum service started as ``conclave agents start`` does, over an empty file
    source (every ids-only run fails); stopped by its recorded PID at the end."""
    monkeypatch.setenv("CONCLAVE_MARKET__SOURCE", f"file:{tmp_path / 'no-candles'}")
    cfg = AgentServiceSettings(ports={AGENT: free_port()}, start_timeout_s=60.0)
    settings = Settings(_env_file=None, data_dir=tmp_path, logs_dir=tmp_path / "logs", agents=cfg)
    try:
        [res] = start_agents(settings, [AGENT])
        assert res.status == "started", res.error
        yield res.url, tmp_path / "logs" / f"{AGENT}.log"
    finally:
        stop_recorded(settings)


def test_an_agent_service_logs_its_failures_by_name_and_reason(
    agent_service: tuple[str, Path],
) -> None:
    """A rejected request is a warning naming the field; a run that raises is an error with
    the agent, the reason and the duration; `grep -i` finds both in ``logs/<agent>.log``."""
    url, log_path = agent_service
    bad = {"symbol": "BTCUSDT", "timeframe": "1h", "asOf": SIM_NOW,
           "candles": {"1h": {"close": ["x"]}}}  # fmt: skip
    with httpx2.Client(timeout=30.0, trust_env=False) as client:
        rejected = client.post(f"{url}/run", json=bad)
        # ids only: the service reads its (missing) candle file, and the read raises
        failed = client.post(f"{url}/run", json={"symbol": "BTCUSDT", "timeframe": "1h"})
    assert rejected.status_code == 422, rejected.text
    assert failed.status_code == 500, failed.text
    field = rejected.json()["error"]["field"]
    warnings = [ln for ln in grep(log_path, "warning") if "agent_request_rejected" in ln]
    assert len(warnings) == 1, log_path.read_text()
    for part in (AGENT, f"field={field}", "http=422"):
        assert part in warnings[0]
    errors = [ln for ln in grep(log_path, "error") if "agent_request_failed" in ln]
    assert len(errors) == 1, log_path.read_text()
    for part in (AGENT, "candle path not found", "http=500", "duration_ms="):
        assert part in errors[0]


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Logging configured as JSON lines into a buffer; the previous configuration restored."""
    saved, root = structlog.get_config(), logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = io.StringIO()
    configure_logging("INFO", json=True, stream=out)
    try:
        yield out
    finally:
        structlog.configure(**saved)
        root.handlers[:], root.level = handlers, level


async def test_the_orchestrator_logs_failed_steps_and_breaker_openings(
    captured: io.StringIO,
) -> None:
    """An unreachable agent is a ``step_failed`` error naming it and the reason, and with a
    breaker threshold of 1 a ``breaker_opened`` naming it; every line carries the run id."""
    breaker = CircuitBreaker.from_settings(BreakerSettings(failures=1))
    async with AgentHttpClient() as client:
        runner = HttpRunner(AGENT, f"http://127.0.0.1:{free_port()}", client=client,
                            timeout_s=2.0, breaker=breaker)  # fmt: skip
        async with Pipeline(sim_gateway(), runners={AGENT: runner}, executor="inline") as pipe:
            run = await pipe.run(None, "BTCUSDT", "1h", as_of_ms=SIM_NOW, now_iso=NOW_ISO)
    assert run.steps[AGENT].error.startswith("connection_refused")
    lines = [orjson.loads(line) for line in captured.getvalue().splitlines()]
    [step] = [e for e in lines if e["event"] == "step_failed" and e["agent"] == AGENT]
    assert (step["agent"], step["status"], step["level"]) == (AGENT, "error", "error")
    assert step["reason"].startswith("connection_refused")
    [opened] = [e for e in lines if e["event"] == "breaker_opened"]
    assert (opened["agent"], opened["failures"]) == (AGENT, 1)
    assert {e["run_id"] for e in lines} == {run.run_id}
