"""Stub-BX: a fake Binance spot REST server on loopback, for tests.

A real HTTP/1.1 server (``ThreadingHTTPServer`` on 127.0.0.1, an ephemeral port, a daemon
thread) that speaks Binance's wire format: ``GET /api/v3/klines`` served from a real candle
CSV of ../shared/data (and the captured 1m klines response for BTCUSDT 1m), plus the captured
``exchangeInfo`` and ``ping`` answers. It sets ``X-MBX-USED-WEIGHT-1M``, records every
request (time on its clock, path, params, client, weight, status) and can be programmed
with `Fault` s, one-shot (``push``) or standing (``rule``): any status, headers such as
``Retry-After``, a raw body, a delay. It counts "would-ban" requests: those that arrive while
a ``Retry-After`` it announced is still running.

It keeps time like Binance: its server time is its wall clock (``wall_ms``, default the real
one) plus a programmable ``skew_ms``; ``/api/v3/time`` answers it (in the captured format),
and klines serve only bars that have opened by it, so the newest bar served may still be
open, as on the real exchange. Each hit records the server time and how many of the rows it
served were still open then (``open_rows``).

``weights=WeightRules(limit=...)`` makes it refuse past a weight limit like Binance (429, then
418 bans: `tests.fakes.binance_weight`); ``serve_live`` adds symbols served fresh from
relabelled recorded rows (`tests.fakes.binance_live`).

The CSV has only open time and OHLCV; the other kline fields (close time, quote volume,
trades, taker-buy volumes) are derived deterministically from them.
"""

from __future__ import annotations

import functools
import json
import select
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx2
import numpy as np

from conclave.timeframes import BINANCE_INTERVALS, Timeframe
from tests.fakes.binance_live import live_series
from tests.fakes.binance_weight import WeightBook, WeightRules
from tests.fakes.fake_clock import FakeClock as FakeClock  # re-exported

KLINES = "/api/v3/klines"
TIME = "/api/v3/time"
WEIGHTS = {"/api/v3/exchangeInfo": 20, "/api/v3/time": 1, "/api/v3/ping": 1}
CLIENT_HEADER = "X-Test-Client"


def kline_weight(limit: int) -> int:
    """Weight of a klines request on the server side (1 / 2 / 5 / 10 by limit)."""
    return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10


@dataclass(frozen=True)
class Fault:
    """One programmed answer: ``status``, extra ``headers``, a raw ``body``, a ``delay_s``."""

    status: int = 200
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    path: str = KLINES


@dataclass(frozen=True)
class Hit:
    """One request as the stub saw it."""

    t: float
    path: str
    params: dict[str, str]
    client: str
    weight: int
    status: int
    inside_retry_after: bool
    server_ms: int = 0
    open_rows: int = 0


@dataclass
class _Series:
    open_time: np.ndarray[Any, Any]
    rows: Callable[[int, int], list[list[Any]]]


@functools.cache
def _csv_series(path: Path, tf_ms: int) -> _Series:
    data = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64)
    t = data[:, 0].astype(np.int64)
    o, h, lo, c, v = (data[:, k] for k in range(1, 6))

    def rows(i: int, j: int) -> list[list[Any]]:
        out = []
        for k in range(i, j):
            taker = v[k] * 0.5
            out.append([
                int(t[k]), f"{o[k]:.8f}", f"{h[k]:.8f}", f"{lo[k]:.8f}", f"{c[k]:.8f}",
                f"{v[k]:.8f}", int(t[k]) + tf_ms - 1, f"{v[k] * c[k]:.8f}",
                int(v[k] * 10) + 1, f"{taker:.8f}", f"{taker * c[k]:.8f}", "0",
            ])  # fmt: skip
        return out

    return _Series(open_time=t, rows=rows)


def _raw_series(raw: list[list[Any]]) -> _Series:
    t = np.array([r[0] for r in raw], dtype=np.int64)
    return _Series(open_time=t, rows=lambda i, j: raw[i:j])


class FakeBinance:
    """The programmable fake; use ``with FakeBinance(shared_data).running() as stub:``."""

    def __init__(
        self,
        shared_data: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] | None = None,
        weights: WeightRules | None = None,
    ) -> None:
        captured = shared_data / "api" / "binance" / "captured"
        self.exchange_info = (
            captured / "spot_exchangeInfo_BTCUSDT_ETHUSDT_20211022.json"
        ).read_bytes()
        self.captured_klines = (captured / "spot_klines_BTCUSDT_1m_20211022.json").read_bytes()
        self.answers = {
            "/api/v3/exchangeInfo": self.exchange_info,
            "/api/v3/ping": (captured / "spot_ping.json").read_bytes(),
        }
        self.time_format = (captured / "spot_time.json").read_text()
        self.symbols = {s["symbol"] for s in json.loads(self.exchange_info)["symbols"]}
        csv = shared_data / "candles" / "binance_BTCUSDT_1h_20170817-20221011.csv"
        self.series: dict[tuple[str, str], _Series] = {
            ("BTCUSDT", "1h"): _csv_series(csv, Timeframe.parse("1h").ms),
            ("BTCUSDT", "1m"): _raw_series(json.loads(self.captured_klines)),
        }
        self.clock = clock
        self.wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        #: the server's clock minus the wall clock, ms (A8: programmable skew)
        self.skew_ms = 0
        self.extra_weight = 0
        self.hits: list[Hit] = []
        self.would_ban = 0
        self.rule: Callable[[str, dict[str, str]], Fault | None] | None = None
        self._queue: deque[Fault] = deque()
        self._announced_until = -float("inf")
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self.active = 0
        self.server_errors: list[str] = []
        self.book = WeightBook(weights or WeightRules())
        self._candles_dir = shared_data / "candles"
        self.live: set[str] = set()

    # -- control ---------------------------------------------------------------------------

    @contextmanager
    def running(self) -> Iterator[FakeBinance]:
        """Serve on 127.0.0.1:<ephemeral> for the duration of the block."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                fake._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

            def handle_error(self, request: Any, client_address: Any) -> None:
                exc = sys.exc_info()[1]
                if isinstance(exc, ConnectionError):
                    return  # the client hung up (a timeout test), not a stub bug
                fake.server_errors.append(repr(exc))
                super().handle_error(request, client_address)

        self._server = Server(("127.0.0.1", 0), Handler)
        thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        thread.start()
        try:
            yield self
        finally:
            self._stopping.set()
            self._server.shutdown()
            self._server.server_close()
            thread.join(5)

    @property
    def base_url(self) -> str:
        assert self._server is not None, "the stub is not running"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def push(self, *faults: Fault) -> None:
        """Answer the next requests to each fault's path with these faults, in order."""
        with self._lock:
            self._queue.extend(faults)

    def reset(self) -> None:
        """Forget requests, faults, rules and announced windows."""
        with self._lock:
            self._queue.clear()
            self.hits.clear()
            self.rule = None
            self.would_ban = 0
            self.extra_weight = 0
            self._announced_until = -float("inf")
            self.book.clear()

    def serve_live(self, symbols: Iterable[str]) -> None:
        """List ``symbols``, each served fresh in every interval (`binance_live`)."""
        with self._lock:
            self.live.update(symbols)
            self.symbols.update(symbols)

    def requests(self, path: str = KLINES, client: str | None = None) -> list[Hit]:
        """Recorded requests to ``path`` (from ``client`` when given)."""
        with self._lock:
            return [h for h in self.hits if h.path == path and client in (None, h.client)]

    def server_ms(self) -> int:
        """The stub's server time: its wall clock plus ``skew_ms``."""
        return self.wall_ms() + self.skew_ms

    def used_weight(self, now: float) -> int:
        """Weight used in the stub's current one-minute window (all clients, plus extra)."""
        return self.extra_weight + self.book.used(now)

    # -- serving ---------------------------------------------------------------------------

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        url = urlsplit(req.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        client = req.headers.get(CLIENT_HEADER) or f"{req.client_address[0]}"
        now, server_ms = self.clock(), self.server_ms()
        with self._lock:
            self.active += 1
            fault = None
            if self._queue and self._queue[0].path in (url.path, "*"):
                fault = self._queue.popleft()
            elif self.rule is not None:
                fault = self.rule(url.path, params)
        try:
            status, body, headers, open_rows = self._answer(url.path, params, server_ms)
            delay = 0.0
            if fault is not None:
                status, headers, delay = fault.status, dict(fault.headers), fault.delay_s
                body, open_rows = (body, open_rows) if fault.body is None else (fault.body, 0)
            weight = self._weight(url.path, params)
            with self._lock:
                inside = now < self._announced_until
                self.would_ban += int(inside)
                refused = None if fault else self.book.verdict(now, weight, self.extra_weight)
                if refused is not None:
                    (status, body, headers), open_rows = refused, 0
                self.book.add(now, weight)
                if status in (418, 429) and "Retry-After" in headers:
                    until = now + float(headers["Retry-After"])
                    self._announced_until = max(self._announced_until, until)
                hit = Hit(
                    now, url.path, params, client, weight, status, inside, server_ms, open_rows
                )
                self.hits.append(hit)
                used = self.used_weight(now)
            if delay and not self._wait(req, delay):
                req.close_connection = True
                return
            self._write(req, status, body, {"X-MBX-USED-WEIGHT-1M": str(used), **headers})
        finally:
            with self._lock:
                self.active -= 1

    def _wait(self, req: BaseHTTPRequestHandler, delay: float) -> bool:
        """Sleep ``delay`` s; return False as soon as the client hangs up or the stub stops."""
        end = time.monotonic() + delay
        sock: socket.socket = req.connection
        while not self._stopping.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return True
            readable, _, _ = select.select([sock], [], [], min(left, 0.01))
            if readable:
                try:
                    if not sock.recv(1, socket.MSG_PEEK):
                        return False
                except OSError:
                    return False
                time.sleep(min(left, 0.01))
        return False

    @staticmethod
    def _write(
        req: BaseHTTPRequestHandler, status: int, body: bytes, headers: Mapping[str, str]
    ) -> None:
        try:
            req.send_response(status)
            if not any(k.lower() == "content-type" for k in headers):
                req.send_header("Content-Type", "application/json;charset=UTF-8")
            for key, value in headers.items():
                req.send_header(key, value)
            req.send_header("Content-Length", str(len(body)))
            req.end_headers()
            req.wfile.write(body)
        except OSError:
            req.close_connection = True

    def _weight(self, path: str, params: Mapping[str, str]) -> int:
        if path == KLINES:
            limit = params.get("limit", "500")
            return kline_weight(int(limit)) if limit.isdigit() else 1
        return WEIGHTS.get(path, 1)

    def _answer(
        self, path: str, params: Mapping[str, str], server_ms: int
    ) -> tuple[int, bytes, dict[str, str], int]:
        """Status, body, headers and the rows served that are still open at ``server_ms``."""
        if path == TIME:
            body = json.loads(self.time_format) | {"serverTime": server_ms}
            return 200, json.dumps(body).encode(), {}, 0
        if path in self.answers:
            return 200, self.answers[path], {}, 0
        if path != KLINES:
            return 404, b"<html><body>Not Found</body></html>", {"Content-Type": "text/html"}, 0
        return self._klines(params, server_ms)

    def _klines(
        self, p: Mapping[str, str], server_ms: int
    ) -> tuple[int, bytes, dict[str, str], int]:
        def error(code: int, msg: str) -> tuple[int, bytes, dict[str, str], int]:
            return 400, json.dumps({"code": code, "msg": msg}).encode(), {}, 0

        symbol, interval = p.get("symbol", ""), p.get("interval", "")
        if not symbol:
            return error(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null.")
        if symbol not in self.symbols:
            return error(-1121, "Invalid symbol.")
        if interval not in BINANCE_INTERVALS:
            return error(-1120, "Invalid interval.")
        numbers: dict[str, int] = {}
        for name in ("limit", "startTime", "endTime"):
            if name in p:
                if not p[name].lstrip("-").isdigit():
                    return error(-1100, f"Illegal characters found in parameter '{name}'.")
                numbers[name] = int(p[name])
        limit = numbers.get("limit", 500)
        if not 1 <= limit <= 1000:
            return error(-1130, "Data sent for parameter 'limit' is not valid.")
        series = self.series.get((symbol, interval))
        if symbol in self.live:
            series = _Series(*live_series(self._candles_dir, interval, server_ms))
        if series is None:
            return 200, b"[]", {}, 0
        t = series.open_time
        # bars that have not opened by the server's clock do not exist yet
        end = min(numbers.get("endTime", 2**62), server_ms)
        lo = int(np.searchsorted(t, numbers.get("startTime", 0), side="left"))
        hi = int(np.searchsorted(t, end, side="right"))
        i, j = (lo, min(hi, lo + limit)) if "startTime" in numbers else (max(lo, hi - limit), hi)
        tf = Timeframe.parse(interval)
        open_rows = sum(1 for k in range(i, j) if tf.close_time(int(t[k])) > server_ms)
        return 200, json.dumps(series.rows(i, j), separators=(",", ":")).encode(), {}, open_rows


class TaggedTransport(httpx2.AsyncBaseTransport):
    """A real HTTP transport that names its client to the stub (``X-Test-Client``)."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self._inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        request.headers[CLIENT_HEADER] = self.client_id
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()
