"""Fixtures of the reliability tests (RELIABILITY.md rows): both databases, a hung agent.

The databases are the real ones: an SQLite file in tmp_path and a fresh schema of the
PostgreSQL named by ``DATABASE_URL`` (`tests.store.conftest.target`); the exchange is
Stub-BX on loopback (`tests.market.conftest.stub`). `Blackhole` stands in
for agents that hang: it accepts every connection, counts it, reads and never answers.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from tests.market.conftest import redis_prefix, stub  # noqa: F401 - fixtures
from tests.services.test_health_outages import own_redis  # noqa: F401 - fixtures
from tests.services.test_http_runner import client, momentum, sim_input  # noqa: F401 - fixtures
from tests.store.conftest import Target, own_database, pg_url, target  # noqa: F401 - fixtures


class Blackhole:
    """A loopback TCP server that accepts, records each request line and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.sock.settimeout(0.1)  # so the accept loop sees `close` promptly
        self._stop = threading.Event()
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self.requests: list[str] = []
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            with self._lock:
                self.accepted += 1
                self._conns.append(conn)
            threading.Thread(target=self._read_line, args=(conn,), daemon=True).start()

    def _read_line(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        data = b""
        try:
            while b"\r\n" not in data and len(data) < 8192:
                chunk = conn.recv(1024)
                if not chunk:
                    return
                data += chunk
        except OSError:
            return
        with self._lock:
            self.requests.append(data.split(b"\r\n", 1)[0].decode("latin-1"))

    def calls(self, method_path: str) -> int:
        """Requests whose line starts with ``method_path``, e.g. ``POST /run``."""
        with self._lock:
            return sum(1 for line in self.requests if line.startswith(method_path))

    def count(self) -> int:
        """Connections accepted so far."""
        with self._lock:
            return self.accepted

    def close(self) -> None:
        """Stop listening and drop every held connection."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()
        with self._lock:
            for conn in self._conns:
                conn.close()


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    """A hung 'agent' on a free loopback port, closed after the test."""
    hole = Blackhole()
    yield hole
    hole.close()


__all__ = ["Blackhole", "Target"]
