"""C2 and C3 against a real agent process: the timeout is honoured, to its stated figure.

The agent is the real momentum service (``conclave agent serve``, stopped by its PID at
the end; the ``momentum``, ``sim_input`` and ``client`` fixtures are those of
`tests.services.test_http_runner`, through this package's conftest). C2 hangs it with
SIGSTOP; C3 puts a loopback proxy in front of it that holds every answer back until 0.8 x
the timeout has passed since the request, so the agent is slow but in time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

from conclave.agents import AgentInput
from conclave.pipeline.agent_client import AgentHttpClient
from conclave.pipeline.breaker import CircuitBreaker
from conclave.pipeline.http_runner import HttpRunner
from tests.services.helpers import NOW_ISO

AGENT = "momentum"
#: C2: a hung agent's step must end within the timeout plus this (the row's figure).
C2_SLACK_S = 0.05
#: C2: once the breaker is open, a step is refused within this (the row's figure).
C2_SKIP_S = 0.005
C3_TIMEOUT_S = 1.0
C3_DELAY_S = 0.8 * C3_TIMEOUT_S
C3_RUNS, C3_PARALLEL = 100, 4


async def _timed(runner: HttpRunner, agent_input: AgentInput) -> tuple[float, str, str]:
    started = time.perf_counter()
    step = await runner.run(agent_input, now_iso=NOW_ISO)
    return time.perf_counter() - started, step.status, step.error


async def test_c2_a_hung_agent_ends_at_timeout_plus_50_ms_then_is_skipped_in_5_ms(
    momentum: tuple[subprocess.Popen[bytes], str],
    client: AgentHttpClient,
    sim_input: AgentInput,
) -> None:
    """C2 (pass figure: affected runs end <= timeout + 50 ms; after 5 failures the agent
    is skipped in <= 5 ms): the SIGSTOPped service's step is ``timeout`` after 0.3 s, no
    earlier and at most 50 ms later, five times; the sixth call is ``circuit_open``
    within 5 ms, without a request."""
    proc, url = momentum
    timeout_s = 0.3
    runner = HttpRunner(AGENT, url, client=client, timeout_s=timeout_s, breaker=CircuitBreaker())
    assert (await runner.run(sim_input, now_iso=NOW_ISO)).ok  # a warm pooled connection
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        hung = [await _timed(runner, sim_input) for _ in range(5)]
        skipped = await _timed(runner, sim_input)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    for elapsed, status, _ in hung:
        assert status == "timeout"
        assert timeout_s - 0.005 <= elapsed <= timeout_s + C2_SLACK_S, elapsed
    elapsed, status, error = skipped
    assert (status, error.split(":")[0]) == ("error", "circuit_open")
    assert elapsed <= C2_SKIP_S, elapsed


class SlowProxy:
    """A loopback TCP proxy that holds each answer until ``delay_s`` after its request."""

    def __init__(self, upstream_port: int, delay_s: float) -> None:
        self.upstream_port = upstream_port
        self.delay_s = delay_s
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        sent_at: list[float] = []

        async def forward_requests() -> None:
            while chunk := await reader.read(65536):
                sent_at.append(time.monotonic())
                up_writer.write(chunk)
                await up_writer.drain()
            up_writer.close()

        async def forward_answers() -> None:
            while chunk := await up_reader.read(65536):
                if sent_at:  # the first bytes of an answer: hold them back
                    await asyncio.sleep(max(0.0, sent_at[-1] + self.delay_s - time.monotonic()))
                    sent_at.clear()
                writer.write(chunk)
                await writer.drain()
            writer.close()

        try:
            await asyncio.gather(forward_requests(), forward_answers())
        except (ConnectionError, OSError):
            writer.close()
            up_writer.close()


async def test_c3_an_agent_slow_at_0_8_timeout_succeeds_100_times_0_breaker_trips(
    momentum: tuple[subprocess.Popen[bytes], str],
    client: AgentHttpClient,
    sim_input: AgentInput,
) -> None:
    """C3 (pass figure: 0 breaker trips over 100 runs): behind a proxy that delays every
    answer to 0.8 x the 1 s timeout, 100 calls (4 at a time) all succeed, each taking at
    least the 0.8 s (the slowness is real), and the breaker never counts a failure."""
    _, url = momentum
    proxy = SlowProxy(int(url.rsplit(":", 1)[1]), C3_DELAY_S)
    port = await proxy.start()
    breaker = CircuitBreaker()
    runner = HttpRunner(AGENT, f"http://127.0.0.1:{port}", client=client,
                        timeout_s=C3_TIMEOUT_S, breaker=breaker)  # fmt: skip
    results: list[tuple[float, str, str]] = []
    try:
        for _ in range(C3_RUNS // C3_PARALLEL):
            results += await asyncio.gather(
                *(_timed(runner, sim_input) for _ in range(C3_PARALLEL))
            )
            assert breaker.snapshot()["consecutiveFailures"] == 0
    finally:
        await proxy.close()
    assert [status for _, status, _ in results] == ["ok"] * C3_RUNS, results[:3]
    assert min(elapsed for elapsed, _, _ in results) >= C3_DELAY_S - 0.005
    assert breaker.state == "closed"
