"""RELIABILITY G2 and G3: the same ``Idempotency-Key`` again.

G2, pass figure: **same ``run_id``; agent call counter unchanged.** A client gives up on its
request after its own timeout (the run is still in its agents) and retries with the same key
and body once the run is stored: the stored response is replayed, and the agents were
called once in all. G3, pass figure: **422 / 409, 100 % as the IETF draft specifies**: the
same key with a different body is 422, the same key while its first request still runs is
409, and neither runs anything.

The orchestrator is a real uvicorn server on loopback (the client's timeout is a real one)
over SQLite in tmp_path; its nine agents are called over HTTP on a second server that counts
every ``POST /<agent>/run`` and answers after ``AGENT_DELAY_S``, so a run takes that long.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from starlette.types import Receive, Scope, Send

from conclave.agents import REGISTRY
from conclave.services.api import create_app
from tests.services.helpers import served
from tests.services.test_api import make_settings
from tests.services.test_http_runner import _answer

RUN = {"symbol": "BTCUSDT", "timeframe": "1h"}
AGENT_DELAY_S = 1.0
CLIENT_TIMEOUT_S = 0.3
#: How long a stored run may take to appear after the client gave up (a loaded machine).
STORED_WITHIN_S = 20.0


class SlowAgents:
    """Nine agent services answering ``/<agent>/run`` validly after a delay; counted."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.called = threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        agent = scope["path"].strip("/").split("/")[0]
        self.calls[agent] += 1
        self.called.set()
        await asyncio.sleep(AGENT_DELAY_S)
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": _answer(agent, 0.1)})


@pytest.fixture
def orchestrator(tmp_path: Path) -> Iterator[tuple[str, SlowAgents]]:
    """The orchestrator on a free port, its agents over HTTP on the counting server."""
    agents = SlowAgents()
    with served(agents) as agents_url:
        urls = {name: f"{agents_url}/{name}" for name in REGISTRY}
        settings = make_settings(tmp_path, use_http_agents=True, agents={"urls": urls})
        with served(create_app(settings), lifespan="on") as url:
            yield url, agents


def _runs(client: httpx2.Client, url: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = client.get(f"{url}/pipeline/runs").json()["items"]
    return items


def test_g2_a_retry_after_the_clients_timeout_replays_the_stored_run(
    orchestrator: tuple[str, SlowAgents],
) -> None:
    """G2 (pass figure: same run_id; agent call counter unchanged): the first POST times out
    on the client (0.3 s; the run takes 1 s in its agents); once its run is stored, the
    retry with the same key and body answers 200 ``Idempotent-Replayed: true`` with that
    run, byte for byte; each of the nine agents was called once, before and after."""
    url, agents = orchestrator
    key = {"Idempotency-Key": "g2-retry-1"}
    with (
        httpx2.Client(timeout=CLIENT_TIMEOUT_S, trust_env=False) as impatient,
        pytest.raises(httpx2.TimeoutException),
    ):
        impatient.post(f"{url}/pipeline/run", json=RUN, headers=key)
    with httpx2.Client(timeout=30, trust_env=False) as client:
        deadline = time.monotonic() + STORED_WITHIN_S
        while not (stored := _runs(client, url)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(stored) == 1, "the run the client gave up on was not stored"
        called = dict(agents.calls)
        assert called == dict.fromkeys(REGISTRY, 1)
        retry = client.post(f"{url}/pipeline/run", json=RUN, headers=key)
        assert retry.status_code == 200, retry.text
        assert retry.headers["idempotent-replayed"] == "true"
        assert retry.json()["runId"] == stored[0]["runId"]
        assert retry.json() == client.get(f"{url}/pipeline/runs/{stored[0]['runId']}").json()
        assert len(_runs(client, url)) == 1
    assert dict(agents.calls) == called  # the agent call counter is unchanged


OTHER_BODIES = [
    {"symbol": "ETHUSDT", "timeframe": "1h"},
    {"symbol": "BTCUSDT", "timeframe": "4h"},
    {"symbol": "BTCUSDT", "timeframe": "1h", "useHttpAgents": False},
    {"symbol": "BTCUSDT", "timeframe": "15m"},
    {"symbol": "ETHUSDT", "timeframe": "1d"},
]


def test_g3_same_key_other_body_is_422_and_same_key_while_running_is_409(
    orchestrator: tuple[str, SlowAgents],
) -> None:
    """G3 (pass figure: 100 % as the IETF draft specifies): while the key's first request
    runs, 10 more with the same key and body are 409 (10/10); after it is stored, the key
    with each of 5 other bodies is 422 naming ``Idempotency-Key`` (5/5, each twice); 0 runs
    started by any of them: 1 run stored, each agent called once; the first answers 201."""
    url, agents = orchestrator
    key = {"Idempotency-Key": "g3-key-1"}

    async def scenario() -> tuple[httpx2.Response, list[int], list[httpx2.Response]]:
        async with httpx2.AsyncClient(timeout=30, trust_env=False) as client:
            first = asyncio.create_task(client.post(f"{url}/pipeline/run", json=RUN, headers=key))
            # wait until the run is in its agents (the server runs in another thread)
            assert await asyncio.to_thread(agents.called.wait, STORED_WITHIN_S)
            busy = [(await client.post(f"{url}/pipeline/run", json=RUN, headers=key)).status_code
                    for _ in range(10)]  # fmt: skip
            done = await first
            other = [await client.post(f"{url}/pipeline/run", json=body, headers=key)
                     for body in OTHER_BODIES * 2]  # fmt: skip
            return done, busy, other

    first, busy, other = asyncio.run(scenario())
    assert first.status_code == 201, first.text
    assert busy == [409] * 10
    assert [r.status_code for r in other] == [422] * len(OTHER_BODIES) * 2
    for resp in other:
        error = resp.json()["error"]
        assert (error["code"], error["field"]) == ("idempotency_key_reused", "Idempotency-Key")
    with httpx2.Client(timeout=30, trust_env=False) as client:
        assert [r["runId"] for r in _runs(client, url)] == [first.json()["runId"]]
    assert dict(agents.calls) == dict.fromkeys(REGISTRY, 1)
