"""End to end, as a new user would, with real processes on loopback (issue item 11).

The nine agent services and the orchestrator run as ``python -m conclave ...`` processes
with ``USE_HTTP_AGENTS=true`` on the sim source, in a temporary working directory (so no
``.env`` is read) with a temporary data directory (SQLite, pidfile) and free ports.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
import psutil
import pytest

from conclave.agents import REGISTRY
from tests.security.procs import started

RUN = {"symbol": "BTCUSDT", "timeframe": "1h"}
#: Environment passed through to the children; everything else is set explicitly.
PASS_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT", "PYTHONPATH")


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free right now (bound together, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def child_env(tmp_path: Path, ports: dict[str, int], **extra: str) -> dict[str, str]:
    """The children's environment, built explicitly: loopback, tmp dirs, these ports."""
    env = {k: os.environ[k] for k in PASS_THROUGH if k in os.environ}
    return (
        env
        | {
            "CONCLAVE_DATA_DIR": str(tmp_path / "data"),
            "CONCLAVE_LOGS_DIR": str(tmp_path / "logs"),
            "CONCLAVE_AGENTS__PORTS": json.dumps(ports),
            "CONCLAVE_AGENTS__START_TIMEOUT_S": "40",
            "CONCLAVE_AGENTS__STOP_TIMEOUT_S": "5",
            # cold agents on a loaded CI machine: this test is about processes, not timeouts
            "CONCLAVE_AGENTS__TIMEOUT_S": "10",
            "CONCLAVE_LOG_LEVEL": "WARNING",
            "AGENT_SERVICES_BASE_URL": "http://127.0.0.1",
        }
        | extra
    )


def conclave(*args: str) -> list[str]:
    return [sys.executable, "-m", "conclave", *args]


def recorded_pids(tmp_path: Path) -> dict[str, int]:
    """The agent PIDs in the pidfile `conclave agents start` wrote."""
    path = tmp_path / "data" / "run" / "agents.json"
    if not path.is_file():
        return {}
    return {name: rec["pid"] for name, rec in json.loads(path.read_text())["agents"].items()}


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_healthy(client: httpx2.Client, url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the orchestrator exited during start-up"
        with contextlib.suppress(httpx2.HTTPError):
            if client.get(f"{url}/health").status_code == 200:
                return
        time.sleep(0.1)
    pytest.fail("the orchestrator did not become healthy within 40 s")


def all_agents_ok(client: httpx2.Client, url: str) -> bool:
    """``GET /agents`` shows nine HTTP agents, all ok (asked a few times: a health check
    has a 1 s budget, which a loaded machine can miss once)."""
    for _ in range(5):
        agents = client.get(f"{url}/agents").json()
        if {(a["mode"], a["status"]) for a in agents} == {("http", "ok")}:
            return len(agents) == len(REGISTRY)
        time.sleep(0.5)
    return False


@pytest.mark.timeout(60)
def test_microservices_end_to_end_degrades_when_an_agent_dies(tmp_path: Path) -> None:
    """Nine agent processes plus the orchestrator: a run is recorded and read back; after
    ``kill -9`` of one agent the next run is recorded degraded naming it (C1); stopping
    everything leaves no process behind."""
    *agent_ports, api_port = free_ports(len(REGISTRY) + 1)
    ports = dict(zip(REGISTRY, agent_ports, strict=True))
    env = child_env(tmp_path, ports, USE_HTTP_AGENTS="true")
    url = f"http://127.0.0.1:{api_port}"
    pids: dict[str, int] = {}
    orchestrator_pid = None
    try:
        launched = subprocess.run(
            conclave("agents", "start"), env=env, cwd=tmp_path, capture_output=True, timeout=50
        )
        pids = recorded_pids(tmp_path)
        assert launched.returncode == 0, launched.stderr.decode()[-2000:]
        assert set(pids) == set(REGISTRY)

        serve = conclave("serve", "--host", "127.0.0.1", "--port", str(api_port))
        with (
            started(serve, env, tmp_path, tmp_path / "orchestrator.log") as proc,
            httpx2.Client(timeout=15, trust_env=False) as client,
        ):
            orchestrator_pid = proc.pid
            wait_healthy(client, url, proc)
            assert all_agents_ok(client, url)

            first = client.post(f"{url}/pipeline/run", json=RUN)
            assert first.status_code == 201, first.text
            run = first.json()
            assert run["missingAgents"] == [], run["steps"]
            assert client.get(f"{url}/pipeline/runs/{run['runId']}").json() == run

            victim = "momentum"
            os.kill(pids[victim], signal.SIGKILL)
            with contextlib.suppress(psutil.Error):
                psutil.Process(pids[victim]).wait(timeout=5)

            second = client.post(f"{url}/pipeline/run", json=RUN)
            assert second.status_code == 201, second.text
            degraded = second.json()
            assert degraded["degraded"] is True
            assert degraded["missingAgents"] == [victim]
            assert degraded["decision"]["missingAgents"] == [victim]
            reason = degraded["steps"][victim]["meta"]["reason"]
            assert reason.startswith(("connection_refused", "connect_error", "protocol_error"))
            stored = client.get(f"{url}/pipeline/runs/{degraded['runId']}").json()
            assert stored == degraded
            listed = client.get(f"{url}/pipeline/runs").json()
            assert listed["total"] == 2
        assert proc.returncode == 0  # SIGTERM: a graceful stop

        stopped = subprocess.run(
            conclave("agents", "stop"), env=env, cwd=tmp_path, capture_output=True, timeout=30
        )
        assert stopped.returncode == 0, stopped.stderr.decode()[-2000:]
        left = [name for name, pid in pids.items() if alive(pid)]
        assert left == []
        assert not alive(orchestrator_pid)
    finally:
        _kill_leftovers(tmp_path, pids, orchestrator_pid)


def _kill_leftovers(tmp_path: Path, pids: dict[str, int], parent_pid: int | None) -> None:
    """Whatever happened above, no process this test started outlives it: the agents it
    knows, the ones recorded on disk since (a start that timed out), and every child of the
    orchestrator or ``up`` (a SIGKILL of the parent would leave them running), and any
    ``python -m conclave`` whose working directory is this test's own."""
    known = set(pids.values())
    with contextlib.suppress(OSError, ValueError, KeyError):
        known |= set(recorded_pids(tmp_path).values())
    for proc in psutil.process_iter(["cmdline", "cwd"]):  # started here, not yet recorded
        if proc.info["cwd"] == str(tmp_path) and _is_conclave(proc.info["cmdline"]):
            known.add(proc.pid)
    mine: list[Any] = []
    if parent_pid is not None:
        with contextlib.suppress(psutil.Error):
            parent = psutil.Process(parent_pid)
            mine = [*parent.children(recursive=True), parent]
    for pid in known:
        with contextlib.suppress(psutil.Error):
            mine.append(psutil.Process(pid))
    for p in mine:
        with contextlib.suppress(psutil.Error):
            if _is_conclave(p.cmdline()):  # the PID is still ours
                p.kill()
    psutil.wait_procs(mine, timeout=5)


def _is_conclave(cmdline: list[str] | None) -> bool:
    """``python -m conclave ...`` or ``python -m conclave.services.agent_main ...``."""
    head = (cmdline or [])[1:3]
    return len(head) == 2 and head[0] == "-m" and head[1].split(".")[0] == "conclave"


@pytest.mark.timeout(60)
def test_demo_serves_runs_once_and_labels_sim_output(tmp_path: Path) -> None:
    """``make run``'s command: monolithic on the embedded defaults, one run over real HTTP,
    its decision labelled SIMULATED, the URLs to try; ``--once`` then stops it cleanly."""
    env = child_env(tmp_path, {})
    done = subprocess.run(
        conclave("demo", "--host", "127.0.0.1", "--port", "0", "--once"),
        env=env, cwd=tmp_path, capture_output=True, timeout=50,
    )  # fmt: skip
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    port = out.split("http://127.0.0.1:", 1)[1].split()[0]
    assert "POST /pipeline/run -> 201" in out
    assert "SIMULATED decision:" in out
    for path in ("/docs", "/pipeline/runs", "/agents", "/health"):
        assert f"127.0.0.1:{port}{path}" in out
    assert (tmp_path / "data" / "conclave.db").is_file()  # SQLite, the embedded default


@pytest.mark.timeout(60)
def test_up_starts_everything_and_ctrl_c_stops_exactly_that(tmp_path: Path) -> None:
    """``conclave up``: nine agent services, the dashboard and the orchestrator over HTTP;
    SIGINT (Ctrl-C) stops the orchestrator and every process it started, and it exits 0."""
    *agent_ports, api_port, dash_port = free_ports(len(REGISTRY) + 2)
    env = child_env(tmp_path, dict(zip(REGISTRY, agent_ports, strict=True)),
                    CONCLAVE_DASHBOARD__PORT=str(dash_port))  # fmt: skip
    dashboard = f"http://127.0.0.1:{dash_port}/dashboard"
    url = f"http://127.0.0.1:{api_port}"
    pids: dict[str, int] = {}
    up_pid = None
    try:
        cmd = conclave("up", "--host", "127.0.0.1", "--port", str(api_port))
        with (
            started(cmd, env, tmp_path, tmp_path / "up.log") as proc,
            httpx2.Client(timeout=15, trust_env=False) as client,
        ):
            up_pid = proc.pid
            wait_healthy(client, url, proc)
            pids = recorded_pids(tmp_path)
            assert set(pids) == set(REGISTRY)
            assert client.get(f"{url}/health").json()["mode"] == "microservices"
            run = client.post(f"{url}/pipeline/run", json=RUN).json()
            assert run["missingAgents"] == [], run["steps"]
            assert client.get(dashboard).status_code == 200  # started with the rest
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0
            with pytest.raises(httpx2.ConnectError):  # and stopped with them
                client.get(dashboard)
        assert [name for name, pid in pids.items() if alive(pid)] == []
        assert recorded_pids(tmp_path) == {}
    finally:
        _kill_leftovers(tmp_path, pids, up_pid)
