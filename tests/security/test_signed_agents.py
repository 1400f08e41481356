"""Signed agent calls against real agent processes (E8).

An agent started with ``CONCLAVE_AGENTS__SECRET`` answers 200 to a call signed with it, and
401 to an unsigned one, a tampered body or path, one stamped more than 5 s ago, an exact
replay and one signed with another secret. The nine agents started by
`conclave.services.procs.start_agents` (which hands them the secret through the
environment) serve a whole HTTP-mode run of the orchestrator signing with the same secret.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from pydantic import SecretStr

from conclave.agents import REGISTRY
from conclave.pipeline import Pipeline
from conclave.pipeline.agent_client import AgentHttpClient
from conclave.pipeline.wire import encode_input
from conclave.security.signing import Signer, Verifier
from conclave.services import procs
from conclave.services.api import create_app
from conclave.settings import AgentServiceSettings, Settings
from tests.pipeline.test_agent_client import Peer, RawServer, answer, drop, raw_server
from tests.security.procs import clean_env, conclave, free_port, started, wait_live
from tests.security.test_api_auth import client_of
from tests.services.helpers import SIM_NOW, context_at, sim_gateway

AGENT_SECRET = "agent-signing-secret-for-the-e8-tests-0123456789"
RUN = {"symbol": "BTCUSDT", "timeframe": "1h", "useHttpAgents": True}


async def momentum_body() -> bytes:
    """A real ``/run`` body for momentum: data inline, as the orchestrator sends it."""
    async with Pipeline(sim_gateway()) as pipe:
        ctx = await context_at(pipe, SIM_NOW)
        return encode_input(ctx.input_for(pipe.agents["momentum"]))


@pytest.fixture
def signed_agent(tmp_path: Path) -> Iterator[str]:
    """`conclave agent serve momentum` on loopback with the agent secret; stopped by PID."""
    port = free_port()
    cmd = conclave("agent", "serve", "momentum", "--host", "127.0.0.1", "--port", str(port))
    env = clean_env(tmp_path, CONCLAVE_AGENTS__SECRET=AGENT_SECRET)
    with started(cmd, env, tmp_path, tmp_path / "momentum.log") as proc:
        url = f"http://127.0.0.1:{port}"
        wait_live(url, proc)
        yield url


def _post(client: httpx2.Client, body: bytes, headers: dict[str, str]) -> httpx2.Response:
    return client.post("/run", content=body,
                       headers={"content-type": "application/json", **headers})  # fmt: skip


async def test_agent_accepts_signed_calls_only(signed_agent: str) -> None:
    """Signed: 200 (every time, fresh headers each); unsigned, tampered body, tampered path,
    more than 5 s old, an exact replay, another secret: 401 with the reason (E8)."""
    body = await momentum_body()
    signer = Signer(AGENT_SECRET)
    stale = Signer(AGENT_SECRET, now_ms=lambda: int(time.time() * 1000) - 6_000)
    with httpx2.Client(base_url=signed_agent, timeout=10.0, trust_env=False) as client:
        for _ in range(3):
            ok = _post(client, body, signer.headers("POST", "/run", body))
            assert ok.status_code == 200, ok.text
            assert ok.json()["meta"]["agent"] == "momentum"
        tampered = body.replace(b'"BTCUSDT"', b'"ETHUSDT"', 1)
        assert tampered != body
        replayed = signer.headers("POST", "/run", body)
        assert _post(client, body, replayed).status_code == 200
        refusals: dict[str, tuple[bytes, dict[str, str]]] = {
            "unsigned": (body, {}),
            "bad_signature": (tampered, signer.headers("POST", "/run", body)),
            "path": (body, signer.headers("POST", "/info", body)),
            "expired": (body, stale.headers("POST", "/run", body)),
            "replayed": (body, replayed),
            "other secret": (body, Signer("another-secret-of-enough-length-0123456789")
                             .headers("POST", "/run", body)),
        }  # fmt: skip
        for label, (sent, headers) in refusals.items():
            resp = _post(client, sent, headers)
            assert resp.status_code == 401, (label, resp.text)
            err = resp.json()["error"]
            assert err["code"] == "unauthorized"
            assert AGENT_SECRET not in resp.text
        assert "expired" in _post(client, body, stale.headers("POST", "/run", body)).text
        assert client.get("/health").status_code == 200  # only /run is signed


def _settings(tmp_path: Path, secret: str | None, ports: dict[str, int]) -> Settings:
    agents = AgentServiceSettings(ports=ports, secret=SecretStr(secret) if secret else None,
                                  timeout_s=5.0)  # fmt: skip
    return Settings(_env_file=None, data_dir=tmp_path / "data",
                    logs_dir=tmp_path / "logs", database_url=None, redis_url=None,
                    use_http_agents=True, agents=agents)  # fmt: skip


def _steps(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    steps: dict[str, dict[str, Any]] = run["steps"]
    return steps


@pytest.mark.timeout(120)
async def test_an_http_mode_run_with_the_shared_secret_succeeds(tmp_path: Path) -> None:
    """Nine agent processes started with the secret (passed through the environment): an
    HTTP-mode run of an orchestrator signing with it has every step answered as in process;
    the same run from an orchestrator without the secret gets 401 on every step."""
    ports = {name: free_port() for name in REGISTRY}
    settings = _settings(tmp_path, AGENT_SECRET, ports)
    try:
        results = procs.start_agents(settings)
        assert [r.status for r in results] == ["started"] * len(REGISTRY), results
        cmdlines = [" ".join(p.cmdline()) for p in _children(settings)]
        assert cmdlines
        assert all(AGENT_SECRET not in c for c in cmdlines)  # never argv
        async with client_of(create_app(settings)) as c:
            ran = await c.post("/pipeline/run", json=RUN)
            assert ran.status_code == 201, ran.text
            steps = _steps(ran.json())
            assert set(steps) == set(REGISTRY)
            local = await c.post("/pipeline/run", json={**RUN, "useHttpAgents": False})
            expected = {n: s["meta"]["status"] for n, s in _steps(local.json()).items()}
            assert {n: s["meta"]["status"] for n, s in steps.items()} == expected
            assert all(not str(s["meta"].get("reason", "")).startswith("http_4xx")
                       for s in steps.values())  # fmt: skip
            assert sum(s["meta"]["status"] == "ok" for s in steps.values()) >= 8
        unsigned = _settings(tmp_path, None, ports)
        async with client_of(create_app(unsigned)) as c:
            ran = await c.post("/pipeline/run", json=RUN)
            assert ran.status_code == 201, ran.text
            reasons = [str(s["meta"].get("reason", "")) for s in _steps(ran.json()).values()]
            assert all(r.startswith("http_4xx: 401") for r in reasons), reasons
    finally:
        procs.stop_recorded(settings)


def _children(settings: Settings) -> list[Any]:
    import psutil

    out = []
    for proc in procs.read_pidfile(settings).values():
        try:
            out.append(psutil.Process(proc.pid))
        except psutil.Error:
            continue
    return out


async def test_a_resent_call_is_signed_afresh() -> None:
    """A POST dropped unanswered on a reused keep-alive connection is resent on a new
    connection with new signing headers: every send verifies, the resend is not refused as
    a replay of the dropped one (which did reach the agent)."""
    sent: list[tuple[dict[str, str], bytes]] = []

    async def handler(server: RawServer, peer: Peer) -> None:
        while True:  # keep-alive: serve requests on this connection until it is dropped
            try:
                head = await peer.reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = [line.decode("latin-1").split(":", 1) for line in head.split(b"\r\n")[1:]]
            headers = {k.strip().lower(): v.strip() for k, v in (p for p in lines if len(p) == 2)}
            body = await peer.reader.readexactly(int(headers["content-length"]))
            sent.append((headers, body))
            if len(sent) == 2:  # the second call, on the pooled connection of the first
                drop(peer, "fin")
                return
            peer.writer.write(answer(b"{}"))
            await peer.writer.drain()

    verifier = Verifier([AGENT_SECRET])
    async with AgentHttpClient(signer=Signer(AGENT_SECRET)) as client, raw_server(handler) as srv:
        first, _ = await client.request("POST", f"{srv.url}/run", b'{"a":0}', timeout_s=5.0)
        status, _ = await client.request("POST", f"{srv.url}/run", b'{"a":1}', timeout_s=5.0)
    assert (first, status) == (200, 200)
    assert len(sent) == 3
    assert sent[1][1] == sent[2][1] == b'{"a":1}'
    assert sent[1][0]["x-conclave-nonce"] != sent[2][0]["x-conclave-nonce"]
    for headers, body in sent:
        verdict = verifier.verify("POST", "/run", body, timestamp=headers["x-conclave-timestamp"],
                                  nonce=headers["x-conclave-nonce"],
                                  signature=headers["x-conclave-signature"])  # fmt: skip
        assert verdict.ok, verdict.reason
