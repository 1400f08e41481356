"""Serving the dashboard: in the foreground (``conclave dashboard``) or as a child process of
``conclave up`` and ``conclave demo`` (``make run``), stopped by its PID when they stop.

A child process rather than a second server in the orchestrator's event loop: the
dashboard is its own service everywhere else (compose, Kubernetes), it only talks HTTP to
the API, and a dashboard that cannot bind (3001 already taken) must not stop the
orchestrator: the parent prints why and goes on.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2

from conclave.dashboard.web import PREFIX
from conclave.settings import Settings

#: Seconds uvicorn gives in-flight requests on shutdown.
GRACEFUL_SHUTDOWN_S = 5
#: Seconds a child dashboard gets to answer ``/health/live``.
START_TIMEOUT_S = 20.0


def public_url(host: str, port: int) -> str:
    """The URL to print for a server bound to ``host:port``."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{shown}:{port}{PREFIX}"


def serve(settings: Settings, host: str, port: int) -> None:
    """Serve the dashboard in the foreground until Ctrl-C or SIGTERM."""
    import uvicorn

    from conclave.dashboard.app import create_dashboard

    uvicorn.run(
        create_dashboard(settings),
        host=host,
        port=port,
        log_config=None,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        lifespan="on",
    )


@dataclass
class DashboardProcess:
    """A dashboard started by `start_process`; `stop` ends it by its PID."""

    proc: subprocess.Popen[bytes] | None
    url: str
    error: str | None = None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; nothing when it never started."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def start_process(
    settings: Settings, api_url: str, log_path: Path, env_file: Path | None = None
) -> DashboardProcess:
    """Start ``conclave dashboard`` reading ``api_url`` (output to ``log_path``) and wait
    until it answers; a `DashboardProcess` whose ``error`` says why when it did not."""
    conf = settings.dashboard
    url = public_url(conf.host, conf.port)
    cmd = [sys.executable, "-m", "conclave"]
    if env_file is not None:
        cmd += ["--env-file", str(env_file)]
    cmd += ["dashboard", "--host", conf.host, "--port", str(conf.port), "--api-url", api_url]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    started = DashboardProcess(proc, url)
    live = url.removesuffix(PREFIX) + "/health/live"
    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx2.Client(timeout=0.5, trust_env=False) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                started.proc, started.error = (
                    None,
                    (
                        f"the dashboard exited with {proc.returncode} (port {conf.port} in use?"
                        f" see {log_path})"
                    ),
                )
                return started
            with contextlib.suppress(httpx2.HTTPError):
                if client.get(live).status_code == 200:
                    return started
            time.sleep(0.1)
    started.stop()
    started.proc, started.error = None, f"the dashboard did not answer within {START_TIMEOUT_S} s"
    return started


__all__ = ["DashboardProcess", "public_url", "serve", "start_process"]
