"""Real processes for the dashboard's browser tests: an orchestrator (``conclave serve``) and
the dashboard (``conclave dashboard``) on free loopback ports, each stopped by its PID
(`tests.security.procs.started`), and Debian's Chromium driven by Playwright (never a
downloaded browser).

The orchestrator runs on the simulated market, with the database and Redis of
``DATABASE_URL`` and ``REDIS_URL`` when they are set (SQLite and the in-process cache
otherwise). Screenshots go to the module's output folder, and also to
``DASHBOARD_SHOTS_DIR`` when set (to look at them after a run).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.conftest import need
from tests.security.procs import clean_env, conclave, free_port, started, wait_live

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Stack:
    """An orchestrator and a dashboard reading it."""

    api: str
    dashboard: str
    orchestrator: subprocess.Popen[bytes]
    shots: Path
    board: subprocess.Popen[bytes] | None = None
    made: dict[str, Any] = field(default_factory=dict)

    def post(self, path: str, body: Any) -> Any:
        answer = httpx2.post(self.api + path, json=body, timeout=30, trust_env=False)
        assert answer.status_code in (200, 201, 202), answer.text
        return answer.json()


def stack_env(tmp: Path, *, isolated: bool = False, **extra: str) -> dict[str, str]:
    """The environment of the processes: ``isolated`` leaves out ``DATABASE_URL`` and
    ``REDIS_URL`` (SQLite in ``tmp``): API keys in a shared database would close the API of
    every other stack on it."""
    names = () if isolated else ("DATABASE_URL", "REDIS_URL")
    kept = {k: os.environ[k] for k in names if os.environ.get(k)}
    return clean_env(tmp, CONCLAVE_MARKET__SOURCE="sim", CONCLAVE_SCHEDULER__ENABLED="false",
                     **kept, **extra)  # fmt: skip


def start_stack(
    tmp: Path, shots: Path, *, isolated: bool = False, **extra_env: str
) -> Iterator[Stack]:
    """Start the orchestrator, then the dashboard; stop both (by PID) on the way out."""
    api_port, dash_port = free_port(), free_port()
    env = stack_env(tmp, isolated=isolated, **extra_env)
    api = f"http://127.0.0.1:{api_port}"
    dash = f"http://127.0.0.1:{dash_port}"
    with started(conclave("serve", "--port", str(api_port)), env, REPO, tmp / "orch.log") as orch:
        wait_live(api, orch)
        with started(conclave("dashboard", "--port", str(dash_port), "--api-url", api), env,
                     REPO, tmp / "dashboard.log") as board:  # fmt: skip
            wait_live(dash, board)
            yield Stack(api, dash, orch, shots, board)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, shots: Path) -> Iterator[Stack]:
    yield from start_stack(tmp_path_factory.mktemp("stack"), shots)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    need(CHROMIUM.exists(), f"Debian's Chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def save_shot(page: Any, shots: Path, name: str) -> Path:
    """A full-page screenshot in ``shots`` (and ``DASHBOARD_SHOTS_DIR`` when set)."""
    path = shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    extra = os.environ.get("DASHBOARD_SHOTS_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / path.name)
    return path
