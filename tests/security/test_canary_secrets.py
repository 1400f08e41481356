"""Secrets never leak (RELIABILITY E9): canary values in every secret, found nowhere.

A real orchestrator process and three real agent processes run with canaries in every
secret setting: the API-key hashing secret, the agents' signing secret, the password in
``DATABASE_URL`` (our own PostgreSQL database; trust auth ignores it) and in ``REDIS_URL``
(Redis has no password, so its AUTH fails and the cache degrades: a failure path that must
not quote the URL), plus the API key itself. They serve runs over HTTP, a run with one agent
killed, refused and malformed requests, every operator endpoint, and export their traces
over OTLP to a receiver on loopback. The dashboard runs beside them with the same settings:
a wrong key is refused at its login, the right one is taken, and every page is rendered.
Then every byte they produced is searched: the answers (bodies and headers), the dashboard's
pages, the log files, every span, and every row of every table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import MetaData, select
from sqlalchemy.ext.asyncio import create_async_engine

from conclave.store.engine import resolve_url
from tests.conftest import need
from tests.observability.tracing_helpers import OtlpReceiver, otel_env
from tests.security.procs import clean_env, conclave, free_port, run_to_exit, started, wait_live

CANARIES = {
    "key_secret": "CANARY-KEYSECRET-7f3a9c1e5b2d4068a1c3e5f7091b2d4f",
    "agent_secret": "CANARY-AGENTSECRET-0c2e4a6b8d1f3a5c7e9b0d2f4a6c8e1b",
    "db_password": "CANARY-DBPASS-5e7a9c1b3d",
    "redis_password": "CANARY-REDISPASS-2b4d6f8a0c",
    "wrong_key": "CANARY-WRONGKEY-9d1b3f5a7c",
    "query": "CANARY-QUERY-4c6e8a0b2d",
}
HTTP_AGENTS = ("momentum", "order-flow", "market-structure")
RUN = {"symbol": "BTCUSDT", "timeframe": "1h"}


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A PostgreSQL database of our own (dropped afterwards); its URL carries a canary."""
    url = os.environ.get("DATABASE_URL", "")
    need(url.startswith(("postgres://", "postgresql")), "DATABASE_URL names no PostgreSQL")
    name = f"canary_{uuid.uuid4().hex[:10]}"
    admin = ["-h", "127.0.0.1", "-U", "postgres"]
    created = subprocess.run(["createdb", *admin, name], capture_output=True, check=False)
    need(created.returncode == 0, f"createdb failed: {created.stderr.decode()[:200]}")
    try:
        yield f"postgresql+asyncpg://postgres:{CANARIES['db_password']}@127.0.0.1:5432/{name}"
    finally:
        subprocess.run(["dropdb", *admin, "--force", name], capture_output=True, check=False)


def _env(tmp_path: Path, database_url: str, receiver: str, ports: dict[str, int]) -> dict[str, str]:
    return clean_env(
        tmp_path,
        DATABASE_URL=database_url,
        REDIS_URL=f"redis://:{CANARIES['redis_password']}@127.0.0.1:6379/7",
        CONCLAVE_SECURITY__KEY_SECRET=CANARIES["key_secret"],
        CONCLAVE_AGENTS__SECRET=CANARIES["agent_secret"],
        CONCLAVE_AGENTS__HTTP=json.dumps(dict.fromkeys(HTTP_AGENTS, True)),
        CONCLAVE_AGENTS__PORTS=json.dumps(ports),
        CONCLAVE_LOG_LEVEL="DEBUG",
        **otel_env(receiver),
    )


async def _rows(database_url: str) -> str:
    """Every row of every table, as text."""
    url, _ = resolve_url(database_url, Path("."))
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            meta = MetaData()
            await conn.run_sync(meta.reflect)
            out = []
            for table in meta.sorted_tables:
                out.extend(repr(tuple(r)) for r in await conn.execute(select(table)))
            return "\n".join(out)
    finally:
        await engine.dispose()


def _exercise(api: str, key: str, agents: dict[str, str]) -> list[str]:
    """Runs, failures and every operator endpoint; each answer's status, headers and body."""
    seen: list[str] = []
    auth = {"Authorization": f"Bearer {key}"}
    with httpx2.Client(timeout=30.0, trust_env=False) as c:

        def keep(resp: httpx2.Response) -> httpx2.Response:
            seen.append(f"{resp.status_code} {dict(resp.headers)} {resp.text}")
            return resp

        assert keep(c.post(f"{api}/pipeline/run", json=RUN, headers=auth)).status_code == 201
        for path in ("/health", "/metrics", "/agents", "/pipeline/runs", "/accounts", "/info",
                     "/openapi.json", f"/pipeline/runs?token={CANARIES['query']}"):  # fmt: skip
            keep(c.get(f"{api}{path}", headers=auth))
        wrong = {"Authorization": f"Bearer {CANARIES['wrong_key']}"}
        assert keep(c.get(f"{api}/pipeline/runs", headers=wrong)).status_code == 401
        assert keep(c.get(f"{api}/health", headers={"X-API-Key": CANARIES["wrong_key"]})
                    ).status_code == 401  # fmt: skip
        bad = {"symbol": "BTCUSDT", "timeframe": "1M"}
        assert keep(c.post(f"{api}/pipeline/run", json=bad, headers=auth)).status_code == 422
        keep(c.post(f"{api}/pipeline/run", content=b"{", headers=auth | {
            "content-type": "application/json"}))  # fmt: skip
        for url in agents.values():
            for path in ("/health", "/info", "/metrics"):
                keep(c.get(f"{url}{path}"))
            unsigned = c.post(f"{url}/run", json=RUN)
            assert keep(unsigned).status_code == 401
    return seen


def _dashboard_pages(dashboard: str, key: str, run_id: str) -> list[str]:
    """A refused and an accepted login, then every page; each answer's status,
    headers (cookies included) and body."""
    seen: list[str] = []
    with httpx2.Client(base_url=dashboard, timeout=30.0, trust_env=False) as c:

        def keep(resp: httpx2.Response) -> httpx2.Response:
            seen.append(f"{resp.status_code} {dict(resp.headers)} {resp.text}")
            return resp

        def login(with_key: str) -> httpx2.Response:
            keep(c.get("/dashboard/login"))
            token = c.cookies["conclave_csrf"]
            return keep(c.post("/dashboard/login", data={"csrf": token, "key": with_key,
                                                          "next": "/dashboard"}))  # fmt: skip

        assert login(CANARIES["wrong_key"]).status_code != 303
        accepted = login(key)
        assert accepted.status_code == 303
        # the one place the key may be: the HttpOnly cookie that keeps it (issue 14)
        cookie = accepted.headers["set-cookie"]
        assert key in cookie
        assert "httponly" in cookie.lower()
        seen[-1] = seen[-1].replace(key, "<the key, in its HttpOnly cookie>")
        pages = ["/dashboard", "/dashboard/runs", f"/dashboard/runs/{run_id}",
                 "/dashboard/market", "/dashboard/accounts", "/dashboard/backtests",
                 f"/dashboard/runs?token={CANARIES['query']}"]  # fmt: skip
        for path in pages:
            assert keep(c.get(path)).status_code == 200, path
    return seen


async def test_canary_secrets_appear_nowhere(tmp_path: Path, pg_database: str) -> None:
    ports = {name: free_port() for name in HTTP_AGENTS}
    api_port, dash_port = free_port(), free_port()
    with OtlpReceiver() as receiver:
        env = _env(tmp_path, pg_database, receiver.url, ports)
        created = run_to_exit(conclave("keys", "create", "--name", "canary", "--scope", "admin",
                                       "--json"), env, tmp_path)  # fmt: skip
        assert created.returncode == 0, created.stderr
        key = json.loads(created.stdout)["key"]
        logs = tmp_path / "logs"
        logs.mkdir(exist_ok=True)
        with contextlib.ExitStack() as stack:
            agents: dict[str, str] = {}
            procs = {}
            for name, port in ports.items():
                cmd = conclave("agent", "serve", name, "--port", str(port), "--host", "127.0.0.1")
                procs[name] = stack.enter_context(started(cmd, env, tmp_path, logs / f"{name}.log"))
                agents[name] = f"http://127.0.0.1:{port}"
            serve = conclave("serve", "--port", str(api_port), "--host", "127.0.0.1")
            api_proc = stack.enter_context(started(serve, env, tmp_path, logs / "api.log"))
            for name, url in agents.items():
                wait_live(url, procs[name])
            api = f"http://127.0.0.1:{api_port}"
            wait_live(api, api_proc)
            seen = await asyncio.to_thread(_exercise, api, key, agents)
            dash_cmd = conclave("dashboard", "--port", str(dash_port), "--api-url", api)
            dash_proc = stack.enter_context(started(dash_cmd, env, tmp_path, logs / "dash.log"))
            dashboard = f"http://127.0.0.1:{dash_port}"
            wait_live(dashboard, dash_proc)
            run_id = json.loads(seen[0].split(" ", 1)[1].split("} ", 1)[1])["runId"]
            pages = await asyncio.to_thread(_dashboard_pages, dashboard, key, run_id)
            procs["momentum"].send_signal(signal.SIGTERM)  # an agent fails: its step errors
            procs["momentum"].wait(timeout=15)
            with httpx2.Client(timeout=30.0, trust_env=False) as c:
                failed = c.post(f"{api}/pipeline/run", json=RUN,
                                headers={"X-API-Key": key})  # fmt: skip
            assert failed.status_code == 201
            assert failed.json()["steps"]["momentum"]["meta"]["status"] == "error"
            seen.append(f"{dict(failed.headers)} {failed.text}")
        # every process stopped (SIGTERM: the exporters flushed); the spans are in
        spans = receiver.wait_for(lambda got: any(s.name == "agent.compute momentum" for s in got))
    rows = await _rows(pg_database)
    texts = {
        "answers": "\n".join(seen),
        "dashboard pages": "\n".join(pages),
        "logs": "\n".join(p.read_text(errors="replace") for p in logs.glob("*.log")),
        "spans": "\n".join(repr(s) for s in spans),
        "export headers": repr(receiver.requests),
        "database rows": rows,
    }
    assert "run_recorded" in texts["logs"]  # the logs are there to search
    assert "pipeline.run" in texts["spans"]
    assert "Why: each agent" in texts["dashboard pages"]  # the run page was rendered
    assert len(rows) > 0
    secrets = {**CANARIES, "api_key": key}
    leaks = [f"{what} in {where}" for where, text in texts.items()
             for what, value in secrets.items() if value in text]  # fmt: skip
    assert leaks == []
    # the key's public id may show (it names the key); its secret part never
    assert key.rsplit("_", 1)[1] not in "\n".join(texts.values())
