"""``make run`` (``conclave demo``) starts the dashboard, prints its URL and stops it (by its
PID) when it stops; ``conclave dashboard`` refuses a bad ``--api-url`` (issue 14, item 1)."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import httpx2

from tests.dashboard.conftest import REPO, stack_env
from tests.security.procs import conclave, free_port, run_to_exit, started


def _wait_line(log: Path, pattern: str, timeout_s: float = 60.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text(errors="replace")) if log.exists() else None
        if found:
            return found
        time.sleep(0.2)
    raise TimeoutError(f"no {pattern!r} in {log} within {timeout_s} s:\n{log.read_text()}")


def test_demo_starts_the_dashboard_prints_its_url_and_stops_it(tmp_path: Path) -> None:
    api_port, dash_port = free_port(), free_port()
    env = stack_env(tmp_path, CONCLAVE_DASHBOARD__PORT=str(dash_port))
    log = tmp_path / "demo.log"
    with started(conclave("demo", "--port", str(api_port)), env, REPO, log) as demo:
        url = _wait_line(log, r"dashboard: (http://\S+)").group(1)
        assert url == f"http://127.0.0.1:{dash_port}/dashboard"
        page = httpx2.get(url, trust_env=False, timeout=30)
        assert page.status_code == 200
        assert "Latest decision per market" in page.text  # it reads the demo's orchestrator
        assert "HOLD" in page.text or "BUY" in page.text or "SELL" in page.text
        demo.send_signal(signal.SIGTERM)
        demo.wait(timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            httpx2.get(f"http://127.0.0.1:{dash_port}/health/live", trust_env=False, timeout=1)
        except httpx2.HTTPError:
            break  # nothing answers: the dashboard stopped with the demo
        time.sleep(0.2)
    else:
        raise AssertionError("the dashboard still answers after the demo stopped")


def test_a_bad_api_url_is_refused(tmp_path: Path) -> None:
    done = run_to_exit(conclave("dashboard", "--api-url", "ftp://x"), stack_env(tmp_path), REPO)
    assert done.returncode == 2
    assert "--api-url" in done.stderr
