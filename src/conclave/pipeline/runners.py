"""How the orchestrator calls an agent: the `AgentRunner` protocol and `LocalRunner`.

A runner turns an `AgentInput` into a `StepResult` and never raises for the agent's sake:
an exception, an out-of-range or non-finite value or a timeout becomes a failed step with
its reason (RELIABILITY.md C4). `LocalRunner` calls the agent in this process; an
``HttpRunner`` posting the same context to the agent's service fits the same protocol.

Where a local agent computes is an `ExecutorKind`:

- ``inline``: in the event loop's thread, one agent after another. A timeout cannot
  interrupt the computation; an answer that arrives after ``timeout_s`` is discarded and
  recorded as ``timeout``.
- ``thread``: a thread pool; the run stops waiting at ``timeout_s`` (the thread finishes
  its computation in the background and its answer is dropped).
- ``process``: a process pool; the agent and its input are pickled across.

Measured by ``benchmarks/pipeline.py`` (2-core VM, the real nine agents, 500 BTC 1h bars
plus 4h and 1d, agent phase of one run, data in memory, 200-300 interleaved runs, three
runs of the script): inline sequential p50 2.7-3.3 ms; inline gathered 0.96-0.99x that;
thread pool 1.15-1.6x (p99 up to 2x); process pool 2.1-2.6x. The sum of the agents' own
medians is 2.4-2.8 ms of it: each agent is a fraction of a millisecond of numpy, so handing
it to a thread costs more than the GIL-bound work it could overlap, and a process pays a
pickle of the candles both ways. Hence the default: ``inline`` (`DEFAULT_EXECUTOR`).

`RUN_ID` holds the id of the run in progress, so a runner that calls out (``HttpRunner``)
can name it (header ``x-run-id``) without the protocol growing a parameter.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import replace
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from conclave.agents import Agent, AgentInput
from conclave.errors import AgentOutputError, ConclaveError
from conclave.pipeline.context import StepResult

ExecutorKind = Literal["inline", "thread", "process"]
EXECUTOR_KINDS: tuple[ExecutorKind, ...] = ("inline", "thread", "process")
#: Chosen by the figures in the module docstring.
DEFAULT_EXECUTOR: ExecutorKind = "inline"
#: RELIABILITY.md: an agent call times out after 2 s, in process as over HTTP.
DEFAULT_TIMEOUT_S = 2.0
#: The id of the pipeline run in progress in this context (set by ``Pipeline.run``).
RUN_ID: ContextVar[str | None] = ContextVar("conclave_run_id", default=None)
#: When the run in progress must be over (ms since the epoch, wall clock; set by the runtime
#: from ``pipeline.run_deadline_s``): an agent call never asks for more (RELIABILITY C8).
RUN_DEADLINE_MS: ContextVar[int | None] = ContextVar("conclave_run_deadline_ms", default=None)


@runtime_checkable
class AgentRunner(Protocol):
    """Runs one agent for the orchestrator; ``name`` is the agent's name."""

    name: str

    async def run(self, agent_input: AgentInput, *, now_iso: str) -> StepResult:
        """The agent's step for ``agent_input``; failures are failed steps, never raised."""
        ...

    async def health(self) -> dict[str, Any]:
        """``{"status": "ok", "agent": name, ...}`` when the agent can be called."""
        ...


def execute_agent(
    agent: Agent, agent_input: AgentInput, now_iso: str, started: float | None = None
) -> StepResult:
    """Run ``agent`` in the calling thread; any failure becomes a failed `StepResult`.

    The step's duration is measured from ``started`` (a ``perf_counter`` reading; default:
    now). Module level so a process pool can pickle it; returns only picklable values.
    """
    t0 = time.perf_counter() if started is None else started
    try:
        result = agent.run(agent_input, now_iso=now_iso)
    except AgentOutputError as exc:
        reason = f"invalid_output: {exc}"
    except ConclaveError as exc:
        reason = f"{exc.reason}: {exc}"
    except Exception as exc:  # an agent bug must not take the run down
        reason = f"{type(exc).__name__}: {exc}"
    else:
        took = (time.perf_counter() - t0) * 1000.0
        return StepResult.from_result(result, duration_ms=took)
    took = (time.perf_counter() - t0) * 1000.0
    return StepResult.failed(
        agent.name, "error", reason, duration_ms=took, timestamp=now_iso, version=agent.version
    )


def make_executor(kind: ExecutorKind, *, workers: int | None = None) -> Executor | None:
    """A pool for ``kind`` (None for ``inline``); the caller shuts it down.

    Processes start with ``forkserver``: forking a process that runs an event loop and
    threads is unsafe.
    """
    if kind == "inline":
        return None
    if kind == "thread":
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="conclave-agent")
    if kind == "process":
        ctx = multiprocessing.get_context("forkserver")
        return ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    raise ValueError(f"unknown executor {kind!r}; expected one of {', '.join(EXECUTOR_KINDS)}")


class LocalRunner:
    """Calls ``agent`` in this process, inline or on ``executor``, within ``timeout_s``."""

    mode: ClassVar[str] = "local"

    def __init__(
        self,
        agent: Agent,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        executor: Executor | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be above 0, got {timeout_s!r}")
        self.agent = agent
        self.name = agent.name
        self.timeout_s = timeout_s
        self.executor = executor

    def _timeout(self, took_ms: float, now_iso: str) -> StepResult:
        return StepResult.failed(
            self.name,
            "timeout",
            f"timeout: no answer within {self.timeout_s * 1000:.0f} ms",
            duration_ms=took_ms,
            timestamp=now_iso,
            version=self.agent.version,
        )

    def run_inline(self, agent_input: AgentInput, *, now_iso: str) -> StepResult:
        """The agent's step computed in this thread, what `run` does without an executor
        (the orchestrator calls it directly: no coroutine for a synchronous step)."""
        step = execute_agent(self.agent, agent_input, now_iso)
        if step.duration_ms > self.timeout_s * 1000.0:
            return self._timeout(step.duration_ms, now_iso)
        return step

    async def run(self, agent_input: AgentInput, *, now_iso: str) -> StepResult:
        """The agent's step; an answer later than ``timeout_s`` is status ``timeout``."""
        if self.executor is None:
            return self.run_inline(agent_input, now_iso=now_iso)
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            self.executor, execute_agent, self.agent, agent_input, now_iso
        )
        try:
            step = await asyncio.wait_for(future, self.timeout_s)
        except TimeoutError:
            return self._timeout((time.perf_counter() - t0) * 1000.0, now_iso)
        except Exception as exc:  # a broken pool or an unpicklable value
            took = (time.perf_counter() - t0) * 1000.0
            return StepResult.failed(
                self.name, "error", f"executor: {type(exc).__name__}: {exc}",
                duration_ms=took, timestamp=now_iso, version=self.agent.version,
            )  # fmt: skip
        return replace(step, duration_ms=(time.perf_counter() - t0) * 1000.0)

    async def health(self) -> dict[str, Any]:
        """In process, the agent is always callable."""
        return {"status": "ok", "agent": self.name, "mode": "local", "version": self.agent.version}
