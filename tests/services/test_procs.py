"""Agent service processes: start, health and stop by the record, never by name or port."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import psutil
import pytest
from typer.testing import CliRunner

from conclave import cli
from conclave.services.procs import (
    Proc,
    health_table,
    is_alive,
    pidfile_path,
    read_pidfile,
    start_agents,
    stop_recorded,
    write_pidfile,
)
from conclave.settings import AgentServiceSettings, Settings
from tests.services.helpers import free_port, wait_health

IGNORES_TERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def settings_in(tmp: Path, **agents: object) -> Settings:
    cfg = AgentServiceSettings(ports={"risk-manager": free_port()}, start_timeout_s=60.0,
                               **agents)  # type: ignore[arg-type]  # fmt: skip
    return Settings(_env_file=None, data_dir=tmp, logs_dir=tmp / "logs", agents=cfg)


@pytest.fixture
def stray() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts by hand; killed at the end whatever happened."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait(timeout=10)


def record(settings: Settings, proc: subprocess.Popen[str], create_time: float) -> None:
    write_pidfile(settings, {"risk-manager": Proc("risk-manager", proc.pid, create_time, 1,
                                                  "http://127.0.0.1:1", "x.log")})  # fmt: skip


def test_start_health_stop_round_trip(tmp_path: Path) -> None:
    """start records pid + create time and a log; health is ok; stop ends exactly it."""
    settings = settings_in(tmp_path)
    try:
        [res] = start_agents(settings, ["risk-manager"])
        assert res.status == "started", res.error
        rec = read_pidfile(settings)["risk-manager"]
        assert rec.pid == res.pid
        assert is_alive(rec)
        assert rec.create_time == psutil.Process(rec.pid).create_time()
        assert (tmp_path / "logs" / "risk-manager.log").exists()
        [again] = start_agents(settings, ["risk-manager"])
        assert (again.status, again.pid) == ("already_running", rec.pid)
        [row] = health_table(settings, ["risk-manager"])
        assert (row.status, row.pid) == ("ok", rec.pid)
    finally:
        results = stop_recorded(settings)
    assert [(r.name, r.outcome) for r in results] == [("risk-manager", "stopped")]
    assert not is_alive(rec)
    assert not pidfile_path(settings).exists()
    [row] = health_table(settings, ["risk-manager"])
    assert (row.status, row.pid) == ("down", None)


def test_stop_leaves_a_process_whose_create_time_differs(
    tmp_path: Path, stray: list[subprocess.Popen[str]]
) -> None:
    """A recorded PID now owned by another process (create time differs) is not signalled."""
    settings = settings_in(tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], text=True)
    stray.append(other)
    record(settings, other, psutil.Process(other.pid).create_time() - 100.0)
    [res] = stop_recorded(settings)
    assert res.outcome == "pid_reused"
    assert other.poll() is None
    assert psutil.Process(other.pid).is_running()


def test_a_process_ignoring_sigterm_is_killed_after_the_timeout(
    tmp_path: Path, stray: list[subprocess.Popen[str]]
) -> None:
    """SIGTERM first; still running after stop_timeout_s: SIGKILL."""
    settings = settings_in(tmp_path, stop_timeout_s=0.3)
    stubborn = subprocess.Popen([sys.executable, "-c", IGNORES_TERM], stdout=subprocess.PIPE,
                                text=True)  # fmt: skip
    stray.append(stubborn)
    assert stubborn.stdout is not None
    assert stubborn.stdout.readline().strip() == "ready"
    created = psutil.Process(stubborn.pid).create_time()
    record(settings, stubborn, created)
    [res] = stop_recorded(settings)
    assert res.outcome == "killed"
    assert not is_alive(Proc("x", stubborn.pid, created, 1, "", ""))


def test_cli_refuses_an_unknown_agent_and_reports_down_services(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`agent serve` of an unknown name exits 2 with a suggestion; `agents health` exits 1
    when a service is down."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONCLAVE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CONCLAVE_AGENTS__PORTS", f'{{"risk-manager": {free_port()}}}')
    runner = CliRunner()
    bad = runner.invoke(cli.app, ["agent", "serve", "momentun"])
    assert bad.exit_code == 2
    assert "did you mean momentum" in bad.output
    down = runner.invoke(cli.app, ["agents", "health", "--only", "risk-manager"])
    assert down.exit_code == 1
    assert "down" in down.output


def test_the_lean_agent_entry_point_refuses_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    """python -m conclave.services.agent_main: an unknown agent or port exits 2 naming it."""
    from conclave.services.agent_main import main

    assert main(["momentun"]) == 2
    assert "unknown agent 'momentun'" in capsys.readouterr().err
    assert main(["momentum", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


def test_agent_serve_runs_the_lean_entry_with_the_env_file(tmp_path: Path) -> None:
    """`conclave --env-file F agent serve NAME` replaces itself (same pid) with the lean
    entry, which does not load the whole command line (the 120 MB budget per agent), and
    reads F: its 2,000-byte body limit answers a 5 kB request with 413."""
    env = tmp_path / "custom.env"
    env.write_text("CONCLAVE_AGENTS__MAX_BODY_BYTES=2000\n")
    port = free_port()
    cmd = [sys.executable, "-m", "conclave", "--env-file", str(env), "agent", "serve",
           "order-flow", "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_health(url, "order-flow")
        cmdline = psutil.Process(proc.pid).cmdline()
        assert cmdline[1:4] == ["-m", "conclave.services.agent_main", "order-flow"]
        assert cmdline[-2:] == ["--env-file", str(env)]
        body = b'{"symbol": "BTCUSDT", "timeframe": "1h", "pad": "' + b"x" * 5000 + b'"}'
        r = httpx2.post(f"{url}/run", content=body,
                        headers={"Content-Type": "application/json"})  # fmt: skip
        assert r.status_code == 413
    finally:
        proc.kill()
        proc.wait(timeout=10)
