"""RELIABILITY E11: error bodies hold no stack trace, host name or SQL.

Pass figure of the row: **0 matches for ``Traceback|File "|postgres://`` in 10,000 error
responses.** The orchestrator app and an agent service app (in process) answer 10,000
requests that each end in an error: unknown paths (404), wrong methods (405), bad bodies and
parameters (400, 415, 422), bodies over the limit (413), and failures inside whose exception
messages carry exactly what must not leak: a traceback, a ``File "..."`` line, a
``postgres://user:password@host`` URL and SQL (the run store raising ``RuntimeError`` is 500,
raising a database ``OperationalError`` is 503; the agent's market data raising is 500).
Every answer is counted by status; the pattern is searched in every body and header.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2
from sqlalchemy.exc import OperationalError
from structlog.testing import capture_logs

from conclave.market.gateway import MarketGateway
from conclave.services.agent_app import create_agent_app
from conclave.services.api import create_app
from conclave.services.runtime import open_store
from tests.services.helpers import SIM_NOW
from tests.services.test_agent_app import settings as agent_settings
from tests.services.test_api import FlakyStore, make_settings

LEAK = re.compile(r'Traceback|File "|postgres://')
RESPONSES = 10_000
#: What a failing dependency says: every pattern of the row, plus SQL and a password.
SECRET_DETAIL = (
    'Traceback (most recent call last):\n  File "/srv/conclave/store.py", line 12, in save\n'
    "postgres://conclave:s3cret@db.internal:5432/conclave SELECT * FROM runs"
)
JSON = {"content-type": "application/json"}


class _LeakyGateway(MarketGateway):
    def __init__(self) -> None:  # no source: every snapshot fails unexpectedly
        pass

    async def snapshot(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(SECRET_DETAIL)


Send = Callable[[random.Random], Awaitable[httpx2.Response]]


def _requests(api: httpx2.AsyncClient, agent: httpx2.AsyncClient) -> list[tuple[str, int, Send]]:
    """Each kind of failing request, its status, and how to send one (with variation from
    a seeded generator)."""
    big = b'{"pad":"' + b"x" * 70_000 + b'"}'
    huge = b'{"pad":"' + b"x" * 1_100_000 + b'"}'

    def word(rng: random.Random) -> str:
        return "".join(rng.choices("abcxyz019/._-%", k=rng.randint(1, 30)))

    run = {"symbol": "BTCUSDT", "timeframe": "1h"}
    ids = {"accountId": "demo", **run}
    text = {"content-type": "text/plain"}
    return [
        ("404", 404, lambda r: api.get(f"/no/such/{word(r)}")),
        ("405", 405, lambda r: api.delete("/pipeline/run")),
        ("422 body", 422, lambda r: api.post("/pipeline/run", json=run | {"symbol": word(r)})),
        ("400 json", 400, lambda r: api.post("/pipeline/run", headers=JSON,
                                             content=b'{"symbol":' + word(r).encode())),
        ("415", 415, lambda r: api.post("/pipeline/run", content=b"symbol=B", headers=text)),
        ("413", 413, lambda r: api.post("/pipeline/run", content=big, headers=JSON)),
        ("500 store", 500, lambda r: api.get("/pipeline/runs")),
        ("503 store", 503, lambda r: api.get(f"/pipeline/runs/{r.getrandbits(128):032x}")),
        ("422 id", 422, lambda r: api.get(f"/pipeline/runs/{word(r).replace('/', '')}z")),
        ("503 health", 503, lambda r: api.get("/health")),
        ("422 key", 422, lambda r: api.post("/pipeline/run", json=run,
                                            headers={"Idempotency-Key": "a " + word(r)})),
        ("422 query", 422, lambda r: api.get("/market/candles",
                                             params=run | {"limit": r.randint(-5, 9)})),
        ("agent 500", 500, lambda r: agent.post("/run", json=ids)),
        ("agent 422", 422, lambda r: agent.post("/run", json={"symbol": word(r)})),
        ("agent 404", 404, lambda r: agent.get(f"/{word(r)}x")),
        ("agent 405", 405, lambda r: agent.put("/run", json={})),
        ("agent 413", 413, lambda r: agent.post("/run", content=huge, headers=JSON)),
    ]  # fmt: skip


@contextlib.asynccontextmanager
async def _clients(tmp_path: Path) -> AsyncIterator[tuple[httpx2.AsyncClient, httpx2.AsyncClient]]:
    settings = make_settings(tmp_path)
    store = FlakyStore(await open_store(settings))
    store.fail["list_runs"] = RuntimeError(SECRET_DETAIL)
    store.fail["get_run"] = OperationalError("SELECT * FROM runs", {}, Exception(SECRET_DETAIL))
    store.fail["health"] = OperationalError("SELECT 1", {}, Exception(SECRET_DETAIL))
    app = create_app(settings, store=store)
    agent_app = create_agent_app("momentum", agent_settings(), now_ms=lambda: SIM_NOW,
                                 gateway=_LeakyGateway())  # fmt: skip
    async with (
        app.router.lifespan_context(app),
        agent_app.router.lifespan_context(agent_app),
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app, raise_app_exceptions=False),
                           base_url="http://o") as api,
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=agent_app,
                                                          raise_app_exceptions=False),
                           base_url="http://a") as agent,
    ):  # fmt: skip
        yield api, agent


async def test_e11_ten_thousand_error_responses_leak_no_trace_host_or_sql(tmp_path: Path) -> None:
    """E11 (pass figure: 0 matches for Traceback|File "|postgres:// in 10,000 error
    responses): 17 kinds of failing request (404, 405, 400, 413, 415, 422, 500 and 503 from
    failures whose messages hold a traceback, a file line, a postgres:// URL and SQL) on the
    orchestrator and an agent service, 10,000 answers: every one an error (>= 400), each
    kind with its status, 0 matches in any body or header, 0 containing the password."""
    rng = random.Random(11)
    statuses: Counter[int] = Counter()
    by_kind: dict[str, set[int]] = {}
    leaks: list[str] = []
    # logs captured, not rendered: 1,176 rendered tracebacks would take minutes
    async with _clients(tmp_path) as (api, agent):
        kinds = _requests(api, agent)
        for i in range(RESPONSES):
            kind, _, send = kinds[i % len(kinds)]
            with capture_logs():
                resp = await send(rng)
            statuses[resp.status_code] += 1
            by_kind.setdefault(kind, set()).add(resp.status_code)
            seen = resp.text + "".join(f"{k}: {v}\n" for k, v in resp.headers.items())
            if LEAK.search(seen) or "s3cret" in seen or "db.internal" in seen:
                leaks.append(f"{kind} {resp.status_code}: {seen[:200]!r}")
    print(f"E11: {dict(sorted(statuses.items()))}")
    assert leaks == []
    assert sum(statuses.values()) == RESPONSES
    assert min(statuses) >= 400
    assert by_kind == {kind: {status} for kind, status, _ in kinds}
