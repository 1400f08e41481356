"""Real processes for the security tests: a clean environment, a free port, stop by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2

from tests.services.helpers import free_port


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This environment without Redis, database or any ``CONCLAVE_`` setting, data and logs
    under ``tmp_path``, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CONCLAVE_") and k not in ("REDIS_URL", "DATABASE_URL")}  # fmt: skip
    env |= {"CONCLAVE_DATA_DIR": str(tmp_path / "data"),
            "CONCLAVE_LOGS_DIR": str(tmp_path / "logs"), "PYTHONUNBUFFERED": "1"}  # fmt: skip
    return env | extra


def conclave(*args: str) -> list[str]:
    return [sys.executable, "-m", "conclave", *args]


def run_to_exit(cmd: list[str], env: dict[str, str], cwd: Path, timeout_s: float = 30.0
                ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run ``cmd`` until it exits (it must, within ``timeout_s``)."""
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout_s, check=False)  # fmt: skip


def wait_live(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 40.0) -> None:
    """Poll ``url/health/live`` until 200; fail if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    with httpx2.Client(timeout=0.5, trust_env=False) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{url} exited with {proc.returncode} during start-up")
            with contextlib.suppress(httpx2.HTTPError):
                if client.get(f"{url}/health/live").status_code == 200:
                    return
            time.sleep(0.1)
    raise TimeoutError(f"{url} not live within {timeout_s} s")


@contextlib.contextmanager
def started(cmd: list[str], env: dict[str, str], cwd: Path, log: Path
            ) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
    """Run ``cmd`` (output to ``log``); on exit SIGTERM it by PID, SIGKILL after 10 s."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


__all__ = ["clean_env", "conclave", "free_port", "run_to_exit", "started", "wait_live"]
