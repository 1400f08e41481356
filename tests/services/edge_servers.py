"""Real servers for the edge tests: the orchestrator (``conclave serve``) and an agent service
(``python -m conclave.services.agent_main``) as processes on loopback, stopped by their pid,
plus raw-socket helpers and CPU burners that keep both cores busy."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.security.procs import wait_live
from tests.services.helpers import free_port

#: The body timeout the served processes get (CONCLAVE_API__ / AGENTS__BODY_TIMEOUT_S).
SHORT_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Served:
    """A server process and where it listens."""

    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def server_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The machine's environment without any Conclave setting, data in ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCLAVE_")}
    env |= {
        "DATABASE_URL": "",
        "REDIS_URL": "",
        "USE_HTTP_AGENTS": "false",
        "CONCLAVE_DATA_DIR": str(tmp_path / "data"),
        "CONCLAVE_LOGS_DIR": str(tmp_path / "logs"),
        "CONCLAVE_LOG_LEVEL": "WARNING",
        "CONCLAVE_API__BODY_TIMEOUT_S": str(SHORT_TIMEOUT_S),
        "CONCLAVE_AGENTS__BODY_TIMEOUT_S": str(SHORT_TIMEOUT_S),
    }
    return env | extra


@contextlib.contextmanager
def _serve(cmd: list[str], port: int, cwd: Path, env: dict[str, str]) -> Iterator[Served]:
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    served = Served(proc, port)
    try:
        wait_live(served.url, served.proc, timeout_s=60.0)
        yield served
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop ``proc`` by its pid: SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def orchestrator(tmp_path: Path, **env: str) -> Iterator[Served]:
    """``conclave serve`` (monolithic, sim data, SQLite in ``tmp_path``) on a free port."""
    port = free_port()
    cmd = [sys.executable, "-m", "conclave", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with _serve(cmd, port, tmp_path, server_env(tmp_path, **env)) as served:
        yield served


@contextlib.contextmanager
def agent(tmp_path: Path, name: str = "momentum", **env: str) -> Iterator[Served]:
    """Agent service ``name`` (the lean entry ``conclave agent serve`` execs) on a free port."""
    port = free_port()
    cmd = [sys.executable, "-m", "conclave.services.agent_main", name, "--port", str(port),
           "--host", "127.0.0.1", "--env-file", str(tmp_path / "none.env")]  # fmt: skip
    with _serve(cmd, port, tmp_path, server_env(tmp_path, **env)) as served:
        yield served


@contextlib.contextmanager
def busy_cores(count: int | None = None) -> Iterator[list[int]]:
    """``count`` (default: every core) processes spinning at full speed; their pids."""
    n = count or os.cpu_count() or 2
    spin = "while True: pass"
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(n)]
    try:
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=10)


@dataclass(frozen=True)
class Exchange:
    """What a raw request got back: the bytes, when the first came, whether it closed."""

    data: bytes
    first_byte_s: float
    closed_s: float | None

    @property
    def status(self) -> int:
        return int(self.data.split(b" ", 2)[1]) if self.data.startswith(b"HTTP/1.1 ") else 0


def raw_exchange(port: int, *parts: bytes, wait_s: float = 15.0) -> Exchange:
    """Send ``parts`` on a fresh connection and read until the server closes it (or
    ``wait_s`` passes: ``closed_s`` None). Times are from the last part sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        for part in parts:
            sock.sendall(part)
        t0 = time.monotonic()
        data, first, closed = b"", 0.0, None
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    closed = time.monotonic() - t0
                    break
                if not data:
                    first = time.monotonic() - t0
                data += chunk
    return Exchange(data, first, closed)


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid``."""
    import psutil

    return int(psutil.Process(pid).memory_info().rss)
