"""RELIABILITY E3: a body over the limit (64 KiB on the orchestrator), also chunked without a
Content-Length, is rejected before it is read whole.

Pass figure of the row: **413 for 100 %; peak RSS growth < 5 MB per request.** The real
``conclave serve`` and a real agent service (``conclave.services.agent_main``) run as
processes on loopback; raw sockets send each oversized body, declared or chunked, of a size
just over the service's limit, 1 MiB and 16 MiB, and stop sending once the answer comes.
A thread samples the server's resident memory every millisecond while each request is in
flight. Every answer must be 413, the server must have stopped reading (for 16 MiB, the
client could not send it all), and the peak resident memory during each request may exceed
the level before it by less than 5 MB.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pytest

from conclave.settings import Settings
from tests.services.edge_servers import Served, agent, orchestrator

MB = 1_000_000
MAX_PEAK_GROWTH = 5 * MB
DEFAULTS = Settings(_env_file=None)
PIECE = 65_536


@dataclass(frozen=True)
class Answer:
    status: int
    sent: int
    peak_growth: int


class PeakRss:
    """Samples a process's RSS every millisecond in a thread; ``peak`` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.001)

    @contextlib.contextmanager
    def watching(self) -> Iterator[int]:
        """Yield the RSS before; sample until the block ends."""
        before = self.proc.memory_info().rss
        self.peak = before
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        try:
            yield before
        finally:
            self._stop.set()
            self._thread.join(timeout=5)
            self.peak = max(self.peak, self.proc.memory_info().rss)


def send_oversized(served: Served, path: str, size: int, *, chunked: bool) -> tuple[int, int]:
    """POST ``size`` bytes to ``path`` on a fresh connection (declared or chunked), stop
    sending as soon as the server answers or stops reading; the status and bytes sent."""
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % size
    head = (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"%s\r\n\r\n" % (path.encode(), framing))  # fmt: skip
    sent, data = 0, b""
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(head)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError):
            while sent < size and not select.select([sock], [], [], 0)[0]:
                n = min(PIECE, size - sent)
                body = b"x" * n
                sock.sendall(b"%x\r\n%s\r\n" % (n, body) if chunked else body)
                sent += n
            if sent == size and chunked:
                sock.sendall(b"0\r\n\r\n")
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while chunk := sock.recv(65536):
                data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, sent


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Served]]:
    tmp = tmp_path_factory.mktemp("e3")
    with orchestrator(tmp) as orch, agent(tmp) as momentum:
        yield {"orchestrator": orch, "agent": momentum}


def _cases() -> list[tuple[str, str, int, int]]:
    """(service, path, limit, size) for each oversized body."""
    out = []
    for service, path, limit in (
        ("orchestrator", "/pipeline/run", DEFAULTS.api.max_body_bytes),
        ("agent", "/run", DEFAULTS.agents.max_body_bytes),
    ):
        for size in sorted({limit + 1, 1_048_576 + 1, 16 * 1_048_576}):
            out.append((service, path, limit, size))
    return out


def test_e3_every_oversized_body_is_413_before_it_is_read_whole(
    servers: dict[str, Served],
) -> None:
    """E3 (pass figure: 413 for 100 %; peak RSS growth < 5 MB per request): the orchestrator
    (limit 64 KiB) and an agent service (limit 1 MiB) each get bodies of limit + 1, 1 MiB + 1
    and 16 MiB, declared and chunked, three times over (one unmeasured warm-up round):
    every answer 413; for 16 MiB fewer bytes sent than the body (reading stopped); each
    request's peak RSS under 5 MB above the level before it."""
    answers: list[tuple[str, int, bool, Answer]] = []
    for round_no in range(3):
        for service, path, limit, size in _cases():
            assert size > limit
            served = servers[service]
            for chunked in (False, True):
                rss = PeakRss(served.proc.pid)
                with rss.watching() as before:
                    status, sent = send_oversized(served, path, size, chunked=chunked)
                if round_no:  # the first round warms the process up
                    answers.append((service, size, chunked,
                                    Answer(status, sent, rss.peak - before)))  # fmt: skip
    for service, size, chunked, answer in answers:
        print(f"E3 {service} {size} chunked={chunked}: {answer}")
    assert [a.status for *_, a in answers] == [413] * len(answers) == [413] * 20
    assert all(a.sent < size for _, size, _, a in answers if size == 16 * 1_048_576)
    assert max(a.peak_growth for *_, a in answers) < MAX_PEAK_GROWTH
    for served in servers.values():
        assert served.proc.poll() is None  # both still up
