"""Admission control: a few runs execute at once, a bounded FIFO queue waits, the rest is shed.

RELIABILITY F1/F2: the orchestrator must keep the runs it admits near their normal latency
and shed what is over its capacity quickly (503 within 50 ms). Every run of a process shares
one event loop, so 64 runs executing at once did not go faster than 8: they interleaved, each
took eight times longer, and a request to be shed waited its turn behind all of them.
`AdmissionMiddleware` therefore lets at most ``running`` (``api.max_runs_running``)
``POST /pipeline/run`` execute; the next ones wait in arrival order, up to ``limit``
(``api.max_runs_in_flight``) admitted in all, running and waiting. A waiting run that is not
started within ``max_wait_s`` (``api.max_queue_wait_s``) is answered 503 ``overloaded`` and
does no work, so no run starts with its budget spent; a run that would wait longer than that
(the runs ahead of it times a run's average time, over the slots) and any run
past ``limit`` are refused 503 ``overloaded`` at once, before their body is read. All carry
``Retry-After`` and count in ``conclave_runs_shed_total``; the queue's depth and waits are
metrics too. Other routes are cheap reads and pass untouched.

A finished run hands its slot to the head of the queue directly, so a newcomer never
overtakes a waiting run. How long a run waited is in `QUEUE_WAIT_S` while it runs: its
deadline (``pipeline.run_deadline_s``) counts from its arrival, not from its start.

It sits inside the key check and the per-key rate limit (`conclave.services.edge_auth`): a
caller without a valid key gets 401 and one over its own limit 429 first, so neither can use
up the admission slots of the others.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from contextvars import ContextVar

import orjson
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from conclave.errors import ConfigurationError
from conclave.observability.metrics import (
    RUN_QUEUE_TIMEOUTS,
    RUN_QUEUE_WAIT,
    RUNS_QUEUED,
    RUNS_RUNNING,
    RUNS_SHED,
)
from conclave.services.http_common import error_body
from conclave.settings import Settings

RUN_PATH = "/pipeline/run"
#: Seconds a shed caller is told to wait (a run takes milliseconds; slots free up fast).
RETRY_AFTER_S = 1
#: Weight of the newest run in the moving average of how long a run holds its slot.
RUN_S_WEIGHT = 0.1
#: Seconds the run in this context waited in the admission queue before it started.
QUEUE_WAIT_S: ContextVar[float] = ContextVar("conclave_queue_wait_s", default=0.0)


class AdmissionMiddleware:
    """Pure ASGI: at most ``running`` ``POST /pipeline/run`` execute in this process, up to
    ``limit`` in all (the others wait in FIFO order, ``max_wait_s`` at most); more: 503."""

    def __init__(
        self, app: ASGIApp, *, limit: int, running: int | None = None, max_wait_s: float = 5.0
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if running is not None and running < 1:
            raise ValueError(f"running must be at least 1, got {running}")
        if max_wait_s <= 0:
            raise ValueError(f"max_wait_s must be positive, got {max_wait_s}")
        self.app = app
        self.limit = limit
        self.max_running = limit if running is None else min(running, limit)
        self.max_queued = limit - self.max_running
        self.max_wait_s = max_wait_s
        self.running = 0
        self.queue: deque[asyncio.Future[None]] = deque()
        #: seconds a run holds its slot, a moving average (0 until one has finished)
        self.run_s = 0.0
        self._full = _body(
            f"{limit} runs are in progress or waiting (CONCLAVE_API__MAX_RUNS_IN_FLIGHT);"
            f" retry after {RETRY_AFTER_S} s"
        )
        self._timed_out = _body(
            f"no run slot of {self.max_running} came, or would come, within {max_wait_s:g} s "
            f"(CONCLAVE_API__MAX_QUEUE_WAIT_S); the run was not started; retry after "
            f"{RETRY_AFTER_S} s"
        )

    @property
    def in_flight(self) -> int:
        """Runs admitted now: executing and waiting."""
        return self.running + len(self.queue)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != RUN_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        waited = await self._admit(send)
        if waited is None:
            return
        RUN_QUEUE_WAIT.observe(waited)
        RUNS_RUNNING.inc()
        token = QUEUE_WAIT_S.set(waited)
        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            QUEUE_WAIT_S.reset(token)
            RUNS_RUNNING.dec()
            took = time.perf_counter() - t0
            self.run_s += (took - self.run_s) * RUN_S_WEIGHT if self.run_s else took
            self._release()

    async def _admit(self, send: Send) -> float | None:
        """The seconds this run waited for its slot, or None once it has been answered 503."""
        if self.running < self.max_running and not self.queue:
            self.running += 1
            return 0.0
        expected_s = (len(self.queue) + 1) * self.run_s / self.max_running
        if len(self.queue) < self.max_queued and expected_s <= self.max_wait_s:
            waited = await self._wait()
            if waited is not None:
                return waited
            RUN_QUEUE_TIMEOUTS.inc()
            answer = self._timed_out
        elif len(self.queue) < self.max_queued:  # it would wait too long: refuse it now
            RUN_QUEUE_TIMEOUTS.inc()
            answer = self._timed_out
        else:
            answer = self._full
        RUNS_SHED.inc()  # nothing else: the answer's body was built once
        await _overloaded(send, answer)
        return None

    async def _wait(self) -> float | None:
        """Queue up; the seconds waited once this run holds a slot, None if none came in time."""
        slot = asyncio.get_running_loop().create_future()
        self.queue.append(slot)
        RUNS_QUEUED.inc()
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(self.max_wait_s):
                await slot
        except BaseException as exc:
            granted = slot.done() and not slot.cancelled()
            if not granted:
                self._leave(slot)
                if isinstance(exc, TimeoutError):
                    return None
                raise
            if not isinstance(exc, TimeoutError):  # cancelled as the slot came: pass it on
                self._release()
                raise
            # the slot came with the timeout: it is this run's
        return time.perf_counter() - t0

    def _leave(self, slot: asyncio.Future[None]) -> None:
        slot.cancel()
        try:
            self.queue.remove(slot)
        except ValueError:  # already taken off by `_release`
            return
        RUNS_QUEUED.dec()

    def _release(self) -> None:
        """Hand this run's slot to the oldest waiting run, or free it."""
        while self.queue:
            slot = self.queue.popleft()
            RUNS_QUEUED.dec()
            if not slot.done():
                slot.set_result(None)
                return
        self.running -= 1


def _body(message: str) -> bytes:
    return orjson.dumps(error_body("overloaded", message))


async def _overloaded(send: Send, body: bytes) -> None:
    # fresh messages each time: an outer layer may add headers to them in place (CORS)
    await send({
        "type": "http.response.start",
        "status": 503,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(RETRY_AFTER_S).encode())],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def install_admission(app: FastAPI, settings: Settings) -> None:
    """Add `AdmissionMiddleware` with the ``api`` settings. A run waits at most
    ``api.max_queue_wait_s``; left at its default, at most half of ``pipeline.run_deadline_s``
    too. `ConfigurationError` when it is set as long as the whole deadline."""
    api, deadline_s = settings.api, settings.pipeline.run_deadline_s
    wait_s = api.max_queue_wait_s
    if "max_queue_wait_s" not in api.model_fields_set:
        wait_s = min(wait_s, deadline_s / 2)
    elif wait_s >= deadline_s:
        raise ConfigurationError(
            f"CONCLAVE_API__MAX_QUEUE_WAIT_S ({wait_s:g} s) must be below "
            f"CONCLAVE_PIPELINE__RUN_DEADLINE_S ({deadline_s:g} s): the wait counts toward "
            "a run's deadline, and a run must not start with its budget spent"
        )
    app.add_middleware(AdmissionMiddleware, limit=api.max_runs_in_flight,
                       running=api.max_runs_running, max_wait_s=wait_s)  # fmt: skip
