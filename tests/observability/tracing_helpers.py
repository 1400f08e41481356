"""Tracing test helpers: an in-memory provider, an OTLP/HTTP receiver on loopback, traced
agent processes, and one flat form (`Got`) for spans from either side.

OpenTelemetry sets its global tracer provider once per process and its proxy tracers keep
the first real tracer they see; `reset_tracing` undoes both (as OpenTelemetry's own test
utilities do), so each test starts from the default: tracing off.
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import orjson
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from conclave.market.sources import open_source
from conclave.observability import tracing
from conclave.services.api import create_app
from conclave.settings import Settings
from tests.services.helpers import free_port, wait_health

#: Seconds a test waits for spans exported by another process.
SPAN_WAIT_S = 10.0
#: Seconds an agent process may take to answer /health (three start at once on a busy VM).
START_WAIT_S = 90.0
_KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


@dataclass(frozen=True)
class Got:
    """One finished span, from the in-memory exporter or an OTLP request."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    kind: str
    service: str
    attributes: dict[str, Any]
    status: str = "unset"


def reset_tracing() -> None:
    """Back to the default: no provider installed, the global and proxy tracers reset."""
    tracing.shutdown_tracing()
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]
    for obj in gc.get_objects():
        if isinstance(obj, trace.ProxyTracer):
            obj._real_tracer = None


@contextlib.contextmanager
def memory_tracing(service: str = tracing.ORCHESTRATOR_SERVICE) -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, every span kept in memory as it ends."""
    reset_tracing()
    exporter = InMemorySpanExporter()
    tracing.install([SimpleSpanProcessor(exporter)], resource={"service.name": service})
    try:
        yield exporter
    finally:
        reset_tracing()


def from_sdk(span: ReadableSpan) -> Got:
    """The flat form of an in-memory span."""
    ctx, parent = span.get_span_context(), span.parent
    assert ctx is not None
    return Got(
        span.name,
        format(ctx.trace_id, "032x"),
        format(ctx.span_id, "016x"),
        format(parent.span_id, "016x") if parent is not None else None,
        span.kind.name.lower(),
        str(span.resource.attributes.get("service.name", "")),
        dict(span.attributes or {}),
        span.status.status_code.name.lower(),
    )


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, which) if which else None


def from_otlp(raw: bytes) -> list[Got]:
    """Every span of one OTLP/HTTP protobuf export request."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(raw)
    out: list[Got] = []
    for rs in request.resource_spans:
        res = {a.key: _value(a.value) for a in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                status = {0: "unset", 1: "ok", 2: "error"}[s.status.code]
                out.append(Got(s.name, s.trace_id.hex(), s.span_id.hex(),
                               s.parent_span_id.hex() or None, _KINDS[s.kind],
                               str(res.get("service.name", "")),
                               {a.key: _value(a.value) for a in s.attributes},
                               status))  # fmt: skip
    return out


class OtlpReceiver:
    """A minimal OTLP/HTTP collector on loopback: ``POST /v1/traces`` (protobuf), kept."""

    def __init__(self) -> None:
        self.spans: list[Got] = []
        self.requests: list[dict[str, str]] = []  # the headers of each export
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                encoding = self.headers.get("content-encoding", "")
                if encoding == "gzip":
                    raw = gzip.decompress(raw)
                elif encoding == "deflate":
                    raw = zlib.decompress(raw)
                ok = self.path == "/v1/traces"
                if ok:
                    receiver._add(dict(self.headers.items()), from_otlp(raw))
                body = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 404)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _add(self, headers: dict[str, str], spans: list[Got]) -> None:
        with self._lock:
            self.requests.append(headers)
            self.spans.extend(spans)

    def wait_for(
        self, done: Callable[[list[Got]], bool], timeout_s: float = SPAN_WAIT_S
    ) -> list[Got]:
        """The spans received once ``done`` holds for them; `TimeoutError` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                spans = list(self.spans)
            if done(spans):
                return spans
            if time.monotonic() > deadline:
                names = sorted({(s.service, s.name) for s in spans})
                raise TimeoutError(f"spans not received within {timeout_s} s; got {names}")
            time.sleep(0.05)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def otel_env(receiver_url: str) -> dict[str, str]:
    """``OTEL_*`` variables that export to ``receiver_url`` within a tenth of a second."""
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver_url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


def stop_pid(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the service flushes its spans on the way out), SIGKILL after 10 s."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextlib.contextmanager
def traced_agents(names: list[str], env: dict[str, str], cwd: Path) -> Iterator[dict[str, str]]:
    """``python -m conclave agent serve NAME`` for each of ``names`` with ``env`` added, in
    ``cwd`` (no stray ``.env``; its log in ``cwd/NAME.log``); their URLs by name. Each is
    stopped by its PID at the end, whatever happens."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CONCLAVE_"))}
    child_env.pop("REDIS_URL", None)
    child_env.pop("DATABASE_URL", None)
    procs: list[subprocess.Popen[bytes]] = []
    urls: dict[str, str] = {}
    try:
        for name in names:
            port = free_port()
            cmd = [sys.executable, "-m", "conclave", "agent", "serve", name, "--port", str(port),
                   "--host", "127.0.0.1"]  # fmt: skip
            with (cwd / f"{name}.log").open("wb") as log:  # the child keeps its own copy
                procs.append(subprocess.Popen(cmd, cwd=cwd, env=child_env | env,
                                              stdout=subprocess.DEVNULL, stderr=log))  # fmt: skip
            urls[name] = f"http://127.0.0.1:{port}"
        for name, url in urls.items():
            wait_health(url, name, timeout_s=START_WAIT_S)
        yield urls
    finally:
        for proc in procs:
            stop_pid(proc)


# -- the orchestrator in process --------------------------------------------------------------

SECRETS = ("Bearer sk-trace-0123456789", "key-trace-abcdef", "qs-trace-secret")
# no accountId: one that names no paper account is 404, and a real one adds the account step
BODY = {"symbol": "BTCUSDT", "timeframe": "1h"}


def _now_ms() -> int:
    import time

    return time.time_ns() // 1_000_000


def make_settings(root: Path, **overrides: Any) -> Settings:
    """Embedded defaults under ``root`` whatever the environment says (no .env file read)."""
    base: dict[str, Any] = {"data_dir": root, "logs_dir": root / "logs", "database_url": None,
                            "redis_url": None, "use_http_agents": False}  # fmt: skip
    return Settings(_env_file=None, **(base | overrides))  # type: ignore[call-arg]


@contextlib.asynccontextmanager
async def api_client(settings: Settings) -> AsyncIterator[httpx2.AsyncClient]:
    """The orchestrator app in process (lifespan run), on the sim source."""
    app = create_app(settings, source=open_source("sim", settings, now_ms=_now_ms))
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            yield c


async def post_run(settings: Settings, body: dict[str, Any] = BODY) -> dict[str, Any]:
    """One ``POST /pipeline/run`` carrying an API key, a bearer token and a query secret."""
    headers = {"Authorization": SECRETS[0], "X-API-Key": SECRETS[1]}
    async with api_client(settings) as api:
        resp = await api.post(f"/pipeline/run?token={SECRETS[2]}", json=body, headers=headers)
    assert resp.status_code == 201, resp.text
    run: dict[str, Any] = resp.json()
    return run


def one(spans: list[Got], name: str, service: str | None = None) -> Got:
    found = [s for s in spans if s.name == name and (service is None or s.service == service)]
    assert len(found) == 1, (name, [(s.service, s.name) for s in spans])
    return found[0]


def assert_nothing_private(spans: list[Got], body: dict[str, Any]) -> None:
    """No span name or attribute holds a secret, a header name, a query string or a body."""
    raw_body = orjson.dumps(body).decode()
    for s in spans:
        assert "?" not in s.name
        assert "token" not in s.name
        for key, value in s.attributes.items():
            text = f"{key}={value}"
            for secret in (*SECRETS, "sk-trace", raw_body, '"candles"', "Bearer"):
                assert secret not in text, (s.name, key)
            for word in ("authorization", "x-api-key", "header", "query", "url.full", "body"):
                assert word not in key.lower(), (s.name, key)
            assert '{"' not in str(value), (s.name, key)  # no JSON
            assert len(str(value)) < 120, (s.name, key)
