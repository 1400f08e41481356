"""RELIABILITY F2, the behaviour: past ``api.max_runs_in_flight`` a run is refused at once.

The speed of shedding (503 within 50 ms at twice the capacity) is measured by
``benchmarks/load.py``; these tests hold what it answers and when.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import orjson
import pytest

from conclave.observability.metrics import RUNS_SHED
from conclave.services.admission import AdmissionMiddleware
from tests.security.procs import clean_env, conclave, started, wait_live
from tests.services.helpers import free_port


class Gate:
    """An ASGI app whose run requests wait until the test opens the gate."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.two_in = asyncio.Event()
        self.entered = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.entered += 1
        if self.entered == 2:
            self.two_in.set()
        if scope["path"] == "/pipeline/run":
            await self.open.wait()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


async def test_f2_one_run_over_the_limit_is_refused_503_before_it_enters() -> None:
    """Two runs in flight with a limit of 2: the third gets 503 ``overloaded`` with
    Retry-After without reaching the app, a GET passes; once a slot frees, a run enters."""
    gate = Gate()
    app = AdmissionMiddleware(gate, limit=2)
    transport = httpx2.ASGITransport(app=app)
    shed_before = RUNS_SHED._value.get()
    async with httpx2.AsyncClient(transport=transport, base_url="http://a") as c:
        first = [asyncio.create_task(c.post("/pipeline/run", json={})) for _ in range(2)]
        await asyncio.wait_for(gate.two_in.wait(), 10.0)
        third = await c.post("/pipeline/run", json={})
        assert third.status_code == 503
        assert third.headers["retry-after"] == "1"
        assert third.json()["error"]["code"] == "overloaded"
        assert "CONCLAVE_API__MAX_RUNS_IN_FLIGHT" in third.json()["error"]["message"]
        assert gate.entered == 2
        assert (await c.get("/pipeline/runs")).status_code == 201  # reads are not counted
        gate.open.set()
        assert [r.status_code for r in await asyncio.gather(*first)] == [201, 201]
        assert (await c.post("/pipeline/run", json={})).status_code == 201
    assert app.in_flight == 0
    assert RUNS_SHED._value.get() == shed_before + 1


def test_the_limit_is_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        AdmissionMiddleware(Gate(), limit=0)


async def test_f2_a_real_orchestrator_sheds_with_503_and_nothing_else(tmp_path: Path) -> None:
    """``conclave serve`` with ``CONCLAVE_API__MAX_RUNS_IN_FLIGHT=1`` and 24 runs sent at
    once: every answer is 201 or 503 ``overloaded`` (no other status, no 500), some of
    each; the shed ones are counted in ``conclave_runs_shed_total``."""
    port = free_port()
    env = clean_env(tmp_path, CONCLAVE_API__MAX_RUNS_IN_FLIGHT="1")
    url = f"http://127.0.0.1:{port}"
    cmd = conclave("serve", "--host", "127.0.0.1", "--port", str(port))
    with started(cmd, env, tmp_path, tmp_path / "serve.log") as proc:
        wait_live(url, proc)
        body = orjson.dumps({"symbol": "BTCUSDT", "timeframe": "1h"})
        headers = {"content-type": "application/json"}
        async with aiohttp.ClientSession() as session:

            async def one() -> tuple[int, dict[str, Any]]:
                async with session.post(f"{url}/pipeline/run", data=body, headers=headers) as r:
                    return r.status, await r.json()

            answers = await asyncio.gather(*(one() for _ in range(24)))
            async with session.get(f"{url}/metrics") as r:
                metrics = await r.text()
    statuses = [s for s, _ in answers]
    assert set(statuses) <= {201, 503}, statuses
    assert 201 in statuses, statuses
    assert 503 in statuses, statuses
    assert all(a["error"]["code"] == "overloaded" for s, a in answers if s == 503)
    shed = next(line for line in metrics.splitlines()
                if line.startswith("conclave_runs_shed_total "))  # fmt: skip
    assert float(shed.split()[1]) == statuses.count(503)
