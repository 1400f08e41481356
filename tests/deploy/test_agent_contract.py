"""Agents in any language (issue 13, item 5): the contract, its check, an agent in JavaScript.

- ``docs/agent-contract.openapi.json`` is exactly what the agent app documents (the same
  for all nine agents, one factory serves them), so the published contract cannot drift.
- ``conclave agents check URL`` (the real command, as a process) passes a real Python agent
  service and the JavaScript example (``examples/agent-js``, Node.js standard library
  only), both signing-enabled; it fails, naming the checks, an agent that breaks the
  contract and a signed agent called without the secret.
- The JavaScript agent stands in for momentum in a real run: registered with
  ``CONCLAVE_AGENTS__URLS`` and ``CONCLAVE_AGENTS__HTTP``, the orchestrator calls it over
  signed HTTP and records its ok step, with the JavaScript payload, beside the eight
  Python agents. Node is required in CI; elsewhere its absence skips with the reason.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import secrets
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from conclave.agents import REGISTRY
from conclave.services.agent_contract import contract_openapi
from conclave.settings import Settings
from tests.conftest import need
from tests.security.procs import clean_env, conclave, free_port, run_to_exit, started, wait_live

REPO = Path(__file__).resolve().parents[2]
CONTRACT = REPO / "docs" / "agent-contract.openapi.json"
JS_AGENT = REPO / "examples" / "agent-js"
RUN = {"symbol": "BTCUSDT", "timeframe": "1h"}


def _node() -> str:
    node = shutil.which("node")
    need(node is not None, "node is not installed (the JavaScript example agent needs it)")
    assert node is not None
    return node


def _check(url: str, env: dict[str, str], cwd: Path) -> tuple[int, dict[str, Any]]:
    done = run_to_exit(conclave("agents", "check", url, "--json"), env, cwd, timeout_s=120)
    return done.returncode, json.loads(done.stdout)


def _outcomes(report: dict[str, Any]) -> dict[str, str]:
    return {c["check"]: c["outcome"] for c in report["checks"]}


@contextlib.contextmanager
def js_agent(tmp_path: Path, secret: str) -> Iterator[str]:
    """The JavaScript example agent on a free loopback port, signing on; its URL."""
    port = free_port()
    env = clean_env(tmp_path, CONCLAVE_AGENTS__SECRET=secret)
    cmd = [_node(), str(JS_AGENT), "--port", str(port)]
    with started(cmd, env, tmp_path, tmp_path / "agent-js.log") as proc:
        url = f"http://127.0.0.1:{port}"
        wait_live(url, proc)
        yield url


def test_published_contract_is_the_apps() -> None:
    settings = Settings(_env_file=None)
    published = json.loads(CONTRACT.read_text())
    assert published == contract_openapi(settings), (
        "regenerate: python -m conclave.services.agent_contract > docs/agent-contract.openapi.json"
    )
    for name in REGISTRY:  # one factory: every agent documents the same contract
        assert contract_openapi(settings, name) == published, name
    run = published["paths"]["/run"]["post"]
    assert {"200", "400", "401", "413", "415", "422"} <= set(run["responses"])


@pytest.mark.parametrize("agent", ["momentum", "news-sentiment", "risk-manager"])
def test_a_python_agent_passes(agent: str, tmp_path: Path) -> None:
    """Bars, headlines (one after the asOf rule's instant) and the account only."""
    secret = secrets.token_urlsafe(48)
    port = free_port()
    env = clean_env(tmp_path, CONCLAVE_AGENTS__SECRET=secret)
    serve = conclave("agent", "serve", agent, "--port", str(port))
    with started(serve, env, tmp_path, tmp_path / f"{agent}.log") as proc:
        url = f"http://127.0.0.1:{port}"
        wait_live(url, proc)
        code, report = _check(url, env, tmp_path)
    assert code == 0, report
    assert set(_outcomes(report).values()) == {"pass"}, report
    assert "run: ids only" in _outcomes(report)  # answered from its own data layer


def test_the_javascript_agent_passes(tmp_path: Path) -> None:
    secret = secrets.token_urlsafe(48)
    with js_agent(tmp_path, secret) as url:
        code, report = _check(url, clean_env(tmp_path, CONCLAVE_AGENTS__SECRET=secret), tmp_path)
        unsigned_code, unsigned = _check(url, clean_env(tmp_path), tmp_path)
    assert code == 0, report
    assert set(_outcomes(report).values()) == {"pass"}, report
    details = {c["check"]: c["detail"] for c in report["checks"]}
    assert "422 naming candles" in details["run: ids only"]
    # the same agent, called without the secret it requires: every /run check fails
    assert unsigned_code == 1
    failed = {k for k, v in _outcomes(unsigned).items() if v == "fail"}
    assert failed == {"run: inline data", "run: asOf", "run: ids only", "run: bad input"}


class _BrokenAgent(http.server.BaseHTTPRequestHandler):
    """Health and info right; ``/run`` answers 200 with an out-of-range score to anything,
    and a plain-text 500 to a body it cannot parse."""

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # the http.server name
        health = {"status": "ok", "agent": "momentum", "timestamp": "2025-01-01T00:00:00.000Z"}
        info = {"/health": health, "/info": {"name": "momentum", "version": "0.1", "endpoints": {}}}
        if self.path in ("/health/live", "/health/ready"):
            self._send(200, b'{"status":"ok"}')
        elif self.path in info:
            self._send(200, json.dumps(info[self.path]).encode())
        else:
            self._send(404, b"{}")

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            json.loads(raw)
        except ValueError:
            self._send(500, b"Traceback (most recent call last): ...", "text/plain")
            return
        meta = {"agent": "momentum", "version": "0.1", "duration_ms": 1, "status": "ok",
                "timestamp": "2025-01-01T00:00:00.000Z", "as_of": None, "reason": ""}  # fmt: skip
        self._send(
            200, json.dumps({"score": 3.5, "confidence": 50, "payload": {}, "meta": meta}).encode()
        )

    def log_message(self, *args: Any) -> None:
        return


def test_a_broken_agent_fails_with_the_checks_named(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BrokenAgent)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        code, report = _check(url, clean_env(tmp_path), tmp_path)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert code == 1
    outcomes = _outcomes(report)
    assert {k for k, v in outcomes.items() if v == "pass"} == {"health", "probes", "info"}
    assert outcomes["run: inline data"] == "fail"
    assert outcomes["run: bad input"] == "fail"


def test_a_bad_url_is_refused(tmp_path: Path) -> None:
    done = run_to_exit(conclave("agents", "check", "localhost:5003"), clean_env(tmp_path), tmp_path)
    assert done.returncode == 2
    assert "http(s)://host:port" in done.stderr


def test_the_javascript_agent_takes_part_in_a_run(tmp_path: Path) -> None:
    secret = secrets.token_urlsafe(48)
    with js_agent(tmp_path, secret) as agent_url:
        port = free_port()
        env = clean_env(tmp_path, CONCLAVE_AGENTS__SECRET=secret,
                        CONCLAVE_AGENTS__URLS=json.dumps({"momentum": agent_url}),
                        CONCLAVE_AGENTS__HTTP=json.dumps({"momentum": True}))  # fmt: skip
        serve = conclave("serve", "--port", str(port))
        with started(serve, env, tmp_path, tmp_path / "serve.log") as proc:
            api = f"http://127.0.0.1:{port}"
            wait_live(api, proc)
            with httpx2.Client(timeout=60, trust_env=False) as client:
                answer = client.post(f"{api}/pipeline/run", json=RUN)
                agents = {a["name"]: a for a in client.get(f"{api}/agents").json()}
                served = client.get(f"{agent_url}/health").json()["runs"]["served"]
    assert answer.status_code == 201, answer.text
    run = answer.json()
    step = run["steps"]["momentum"]
    assert step["meta"]["status"] == "ok", step
    assert step["payload"]["implementation"] == "javascript"
    assert -1 <= step["score"] <= 1
    assert (agents["momentum"]["mode"], agents["momentum"]["url"]) == ("http", agent_url)
    assert served == 1
    others = {a: s["meta"]["status"] for a, s in run["steps"].items() if a != "momentum"}
    ok = {a for a, s in others.items() if s == "ok"}
    assert ok >= set(REGISTRY) - {"momentum", "news-sentiment"}, others  # no news source
    assert run["decision"]["status"] == "ok", run["decision"]
