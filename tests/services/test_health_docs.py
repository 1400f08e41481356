"""The probes answer what their OpenAPI documents promise, in the states the contract test
does not reach: not ready (503), critical, the database down (503), an agent service
before its lifespan. Each body is validated with the model the document names for that
status (`conclave.services.health_openapi`), and the model must be the one documented."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from conclave.agents import REGISTRY
from conclave.services import health_openapi
from conclave.services.agent_app import create_agent_app
from conclave.services.api import create_app
from tests.services.helpers import SIM_NOW, sim_gateway
from tests.services.test_api import closed_port, make_settings


@contextlib.asynccontextmanager
async def _client(app: FastAPI, *, lifespan: bool = True) -> AsyncIterator[httpx2.AsyncClient]:
    transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
    async with contextlib.AsyncExitStack() as stack:
        if lifespan:
            await stack.enter_async_context(app.router.lifespan_context(app))
        c = httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1")
        yield await stack.enter_async_context(c)


def _documented(app: FastAPI, path: str, status: int) -> list[type[BaseModel]]:
    """The models the document names for ``status`` of ``GET path``."""
    answer = app.openapi()["paths"][path]["get"]["responses"][str(status)]
    schema = answer["content"]["application/json"]["schema"]
    refs = [s["$ref"] for s in schema.get("anyOf", [schema])]
    names = [ref.rsplit("/", 1)[1] for ref in refs]
    return [getattr(health_openapi, n) for n in names if hasattr(health_openapi, n)]


async def _check(app: FastAPI, c: httpx2.AsyncClient, path: str, status: int) -> dict[str, Any]:
    resp = await c.get(path)
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    models = _documented(app, path, status)
    assert models, (path, status)
    models[0].model_validate(body)  # raises when the body breaks the documented schema
    if status == 503 and "Retry-After" in resp.headers:
        assert re.fullmatch(r"[0-9]+", resp.headers["Retry-After"])
    return body


async def test_the_orchestrator_probes_match_their_documents_when_ok(tmp_path: Path) -> None:
    """Embedded defaults: live, ready and the report answer their documented 200 bodies."""
    app = create_app(make_settings(tmp_path))
    async with _client(app) as c:
        await _check(app, c, "/health/live", 200)
        await _check(app, c, "/health/ready", 200)
        assert (await _check(app, c, "/health", 200))["status"] == "ok"


async def test_the_orchestrator_probes_match_their_documents_when_failing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The risk agent unreachable (critical, not ready) and then the database down (503)."""
    risk = REGISTRY.risk
    agents = {"http": {risk: True}, "ports": {risk: closed_port()}}
    app = create_app(make_settings(tmp_path, agents=agents))
    async with _client(app) as c:
        assert (await _check(app, c, "/health", 200))["status"] == "critical"
        assert (await _check(app, c, "/health/ready", 503))["status"] == "not_ready"

        async def down(**_: Any) -> dict[str, Any]:
            return {"status": "down", "backend": "sqlite", "detail": "unreachable (OSError)"}

        monkeypatch.setattr(app.state.runtime.store, "health", down)
        report = await _check(app, c, "/health", 503)
        assert report["dependencies"]["database"]["status"] == "down"
        await _check(app, c, "/health/ready", 503)


async def test_an_agent_service_probes_match_their_documents(tmp_path: Path) -> None:
    """Before its lifespan (no source: not ready, exchange not configured) and after it."""
    app = create_agent_app("momentum", make_settings(tmp_path), now_ms=lambda: SIM_NOW)
    async with _client(app, lifespan=False) as c:
        await _check(app, c, "/health/ready", 503)
        body = await _check(app, c, "/health", 200)
        assert body["dependencies"]["exchange"] == {"status": "not_configured"}
    app = create_agent_app("momentum", make_settings(tmp_path), now_ms=lambda: SIM_NOW,
                           gateway=sim_gateway())  # fmt: skip
    async with _client(app) as c:
        await _check(app, c, "/health/live", 200)
        await _check(app, c, "/health/ready", 200)
        await _check(app, c, "/health", 200)
        await _check(app, c, "/info", 200)
