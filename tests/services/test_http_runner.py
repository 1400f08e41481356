"""`HttpRunner` against real uvicorn processes on loopback: every fault is a failed step."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest
from starlette.types import Receive, Scope, Send

from conclave.agents import REGISTRY, AgentInput
from conclave.pipeline import LocalRunner, Pipeline, StepResult
from conclave.pipeline.agent_client import AgentHttpClient
from conclave.pipeline.breaker import CircuitBreaker
from conclave.pipeline.http_runner import HttpRunner
from tests.services.helpers import (
    NOW_ISO,
    agent_process,
    context_at,
    free_port,
    served,
    sim_gateway,
)

AGENT = "momentum"


@pytest.fixture(scope="module")
def momentum() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """One real momentum service for the module."""
    with agent_process(AGENT) as proc_url:
        yield proc_url


@pytest.fixture(scope="module")
def sim_input() -> AgentInput:
    """momentum's input on the simulator, built as a pipeline run builds it."""

    async def build() -> AgentInput:
        async with Pipeline(sim_gateway()) as pipe:
            ctx = await context_at(pipe, 1_700_000_000_000)
            return ctx.input_for(pipe.agents[AGENT])

    return asyncio.run(build())


@pytest.fixture
async def client() -> AsyncIterator[AgentHttpClient]:
    async with AgentHttpClient() as c:
        yield c


def assert_failed(step: StepResult, reason: str, status: str = "error") -> None:
    """A failed step with the reason code: no score, no confidence (never 0)."""
    assert step.status == status, step
    assert step.error.startswith(reason), step.error
    assert step.score is None
    assert step.confidence is None
    assert not step.ok


async def test_answer_matches_the_local_runner(
    momentum: tuple[subprocess.Popen[bytes], str], client: AgentHttpClient, sim_input: AgentInput
) -> None:
    """A healthy service gives the in-process step's status, score, confidence, payload."""
    _, url = momentum
    runner = HttpRunner(AGENT, url, client=client, timeout_s=2.0)
    http = await runner.run(sim_input, now_iso=NOW_ISO)
    local = await LocalRunner(REGISTRY[AGENT]()).run(sim_input, now_iso=NOW_ISO)
    assert http.ok, http.error
    assert (http.score, http.confidence) == (local.score, local.confidence)
    assert http.payload == orjson.loads(orjson.dumps(local.payload))
    health = await runner.health()
    assert health["status"] == "ok"
    assert health["latency_ms"] >= 0


async def test_nothing_listening_is_connection_refused(
    client: AgentHttpClient, sim_input: AgentInput
) -> None:
    """C1: no process on the port: a failed step 'connection_refused', health 'down'."""
    runner = HttpRunner(AGENT, f"http://127.0.0.1:{free_port()}", client=client, timeout_s=1.0)
    assert_failed(await runner.run(sim_input, now_iso=NOW_ISO), "connection_refused")
    assert (await runner.health())["status"] == "down"


async def test_killed_process_is_a_failed_step(
    client: AgentHttpClient, sim_input: AgentInput
) -> None:
    """C1: kill -9 of a service that answered before: the next call fails, it does not raise."""
    with agent_process(AGENT) as (proc, url):
        runner = HttpRunner(AGENT, url, client=client, timeout_s=1.0)
        assert (await runner.run(sim_input, now_iso=NOW_ISO)).ok
        proc.kill()
        proc.wait(timeout=10)
        step = await runner.run(sim_input, now_iso=NOW_ISO)
    assert step.status == "error"
    assert step.score is None
    assert step.error.split(":")[0] in ("connection_refused", "protocol_error")


async def test_hung_process_times_out_then_recovers(
    momentum: tuple[subprocess.Popen[bytes], str], client: AgentHttpClient, sim_input: AgentInput
) -> None:
    """C2: a SIGSTOPped service: status 'timeout' at the timeout; after SIGCONT it answers."""
    proc, url = momentum
    runner = HttpRunner(AGENT, url, client=client, timeout_s=0.3)
    assert (await runner.run(sim_input, now_iso=NOW_ISO)).ok  # a warm pooled connection
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        step = await runner.run(sim_input, now_iso=NOW_ISO)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert_failed(step, "timeout", status="timeout")
    assert (await runner.run(sim_input, now_iso=NOW_ISO)).ok


def _answer(agent: str, score: object) -> bytes:
    meta = {"agent": agent, "version": "1", "duration_ms": 1, "timestamp": NOW_ISO,
            "as_of": None, "status": "ok", "reason": ""}  # fmt: skip
    body = {"score": "__S__", "confidence": 50.0, "payload": {}, "meta": meta}
    return orjson.dumps(body).replace(b'"__S__"', str(score).encode())


async def misbehaving(scope: Scope, receive: Receive, send: Send) -> None:
    """A tiny ASGI app answering ``/<variant>/run`` the wrong way."""
    if scope["type"] != "http":
        return
    variant = scope["path"].strip("/").split("/")[0]
    status, body, ctype = {
        "e500": (500, b'{"error":{"code":"internal","message":"internal error"}}', "json"),
        "e422": (422, b'{"error":{"code":"invalid","message":"bad","field":"symbol"}}', "json"),
        "text": (200, b"<html>hello</html>", "html"),
        "score7": (200, _answer(AGENT, 7), "json"),
        "nan": (200, _answer(AGENT, "NaN"), "json"),
        "other": (200, _answer("order-flow", 0.5), "json"),
        "list": (200, b"[1, 2, 3]", "json"),
    }[variant]
    headers = [(b"content-type", f"application/{ctype}".encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def bad_server() -> Iterator[str]:
    with served(misbehaving) as url:
        yield url


@pytest.mark.parametrize(
    ("variant", "reason"),
    [
        ("e500", "http_5xx"),
        ("e422", "http_4xx"),
        ("text", "non_json"),
        ("score7", "invalid_values"),
        ("nan", "invalid_values"),
        ("other", "invalid_values"),
        ("list", "invalid_values"),
    ],
)
async def test_bad_answers_are_failed_steps(
    bad_server: str, client: AgentHttpClient, sim_input: AgentInput, variant: str, reason: str
) -> None:
    """C4: 5xx, 4xx, non-JSON, score 7, NaN, another agent's answer: failed, never 0."""
    runner = HttpRunner(AGENT, f"{bad_server}/{variant}", client=client, timeout_s=2.0)
    assert_failed(await runner.run(sim_input, now_iso=NOW_ISO), reason)


async def test_garbage_instead_of_http_is_a_protocol_error(
    client: AgentHttpClient, sim_input: AgentInput
) -> None:
    """A peer that answers bytes that are not HTTP: 'protocol_error'."""

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        runner = HttpRunner(AGENT, f"http://127.0.0.1:{port}", client=client, timeout_s=2.0)
        assert_failed(await runner.run(sim_input, now_iso=NOW_ISO), "protocol_error")
    finally:
        server.close()
        await server.wait_closed()


class Switchable:
    """An agent service that fails with 500 until told to be healthy; counts requests."""

    def __init__(self) -> None:
        self.healthy = False
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.calls += 1
        status, body = (200, _answer(AGENT, 0.5)) if self.healthy else (500, b"{}")
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def test_breaker_skips_a_failing_service_then_one_probe_closes_it(
    client: AgentHttpClient, sim_input: AgentInput
) -> None:
    """C2/C9: after 5 failed calls the service is skipped without any request; after 30 s
    one probe goes, and its success closes the breaker."""
    app, now = Switchable(), [0.0]
    breaker = CircuitBreaker(clock=lambda: now[0])
    with served(app) as url:
        runner = HttpRunner(AGENT, url, client=client, timeout_s=2.0, breaker=breaker)
        for _ in range(5):
            assert_failed(await runner.run(sim_input, now_iso=NOW_ISO), "http_5xx")
        assert app.calls == 5
        skipped = [await runner.run(sim_input, now_iso=NOW_ISO) for _ in range(20)]
        assert all(s.error.startswith("circuit_open") and s.score is None for s in skipped)
        assert app.calls == 5  # no call attempts while open
        now[0] += 30.0
        app.healthy = True
        probe = await runner.run(sim_input, now_iso=NOW_ISO)
        assert probe.ok
        assert app.calls == 6
        assert breaker.state == "closed"
        assert (await runner.run(sim_input, now_iso=NOW_ISO)).ok
