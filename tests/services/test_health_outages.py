"""The orchestrator's health when a server it depends on goes away: a redis-server and a
PostgreSQL of the test's own, on free ports in temporary directories, killed or stopped by
PID (the shared servers on 6379 and 5432 are never touched)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services.helpers import free_port
from tests.services.test_api import make_settings
from tests.services.test_health import _client, _health

# -- Redis -----------------------------------------------------------------------------------


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A redis-server of our own on a free port (never the shared one), killed by its PID."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--dir", str(workdir)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        yield proc, f"redis://127.0.0.1:{port}/0"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`redis_server` for one test."""
    with redis_server(tmp_path) as found:
        yield found


async def test_redis_killed_degrades_the_cache(
    tmp_path: Path, own_redis: tuple[subprocess.Popen[bytes], str]
) -> None:
    """Our redis-server up: cache ok; killed: cache degraded, status degraded, still 200."""
    proc, url = own_redis
    async for api in _client(make_settings(tmp_path, redis_url=url)):
        code, report = await _health(api)
        assert report["dependencies"]["cache"] == {"backend": "redis", "status": "ok"}
        assert (code, report["status"]) == (200, "ok")
        proc.kill()
        proc.wait(timeout=10)
        code, report = await _health(api)
        cache = report["dependencies"]["cache"]
        assert (cache["backend"], cache["status"]) == ("redis", "degraded")
        assert cache["error"].startswith("unreachable")
        assert (code, report["status"]) == (200, "degraded")
        assert (await api.get("/health/ready")).status_code == 200  # runs still work


# -- PostgreSQL --------------------------------------------------------------------------------


class Postgres:
    """A PostgreSQL of our own (initdb in a temporary directory, a free port), never the shared
    one; `initdb` and `pg_ctl` run as the ``postgres`` user since they refuse root."""

    def __init__(self) -> None:
        if shutil.which("pg_ctl") is None or shutil.which("initdb") is None:
            pytest.skip("PostgreSQL's initdb/pg_ctl are not installed")
        self.dir = Path(tempfile.mkdtemp(prefix="conclave-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self._pg("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def _pg(self, *cmd: str) -> None:
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg("pg_ctl", "start", "-D", str(self.data), "-w", "-t", "30", "-o", opts,
                 "-l", str(self.dir / "log"))  # fmt: skip

    def stop(self) -> None:
        self._pg("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "30")

    def kill(self) -> None:
        """Kill the postmaster by the PID in its pid file, if it still runs."""
        pid_file = self.data / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                os.kill(pid, 0)  # raises once it is gone
                time.sleep(0.05)


@pytest.fixture
def own_postgres() -> Iterator[Postgres]:
    """A started `Postgres`, killed by its PID and removed at the end, even on failure."""
    pg = Postgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.kill()
        shutil.rmtree(pg.dir, ignore_errors=True)


async def test_database_stopped_is_503_and_not_ready_then_recovers(
    tmp_path: Path, own_postgres: Postgres
) -> None:
    """Our own PostgreSQL up: ready, /health 200. Stopped: /health 503 with the database not
    ok, /health/ready 503 naming it (no URL in the body), live still 200. Started again:
    ready and 200 within 5 s (the pool drops its dead connections and reconnects)."""
    async for api in _client(make_settings(tmp_path, database_url=own_postgres.url)):
        assert (await api.get("/health/ready")).status_code == 200
        assert (await _health(api))[0] == 200
        own_postgres.stop()
        code, report = await _health(api)
        assert code == 503
        assert report["dependencies"]["database"]["status"] != "ok"
        ready = await api.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["reasons"][0].startswith("database")
        for leak in (f":{own_postgres.port}", "postgres@", str(own_postgres.dir)):
            assert leak not in ready.text
            assert leak not in json.dumps(report)
        assert (await api.get("/health/live")).status_code == 200
        own_postgres.start()
        deadline = time.monotonic() + 5
        while (await api.get("/health/ready")).status_code != 200:
            assert time.monotonic() < deadline, "not ready 5 s after PostgreSQL came back"
            await asyncio.sleep(0.1)
        assert (await _health(api))[0] == 200
