"""OpenTelemetry traces: one pipeline run is one trace, across the orchestrator and its agents.

Why it is shaped this way:

- **Off by default, and then free.** No SDK tracer provider is installed unless the
  standard variables ask for one. While off, `span` hands out one shared no-op context
  manager (no tracer call, no context switch), `inject` adds no header and
  `TraceMiddleware` (`conclave.observability.tracing_http`) calls the app straight
  through: each checks a module flag once.
- **The standard ``OTEL_*`` variables, read at the edge.** `tracing_config` turns a mapping
  (the command line passes ``os.environ``) into a plain `TracingConfig`; `configure_tracing`
  builds the SDK from that alone. Tracing is on when ``OTEL_TRACES_EXPORTER`` names an
  exporter other than ``none`` (``otlp``, ``console``), or, with it unset, when
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set; never
  when ``OTEL_SDK_DISABLED=true``. A value we cannot honour (a gRPC protocol, an unknown
  exporter or sampler, a bad number) is a `ValueError` at start-up, not a silent default.
- **Cheap when on.** About a dozen spans per run, exported in batches off the request path;
  attributes are built only when ``span.is_recording()``.
- **W3C trace context only.** The orchestrator injects ``traceparent`` into each agent
  call; the agent's `TraceMiddleware` makes it the current context, so the agent's
  ``agent.compute`` span is a child of the orchestrator's ``agent.call`` span.
  ``OTEL_PROPAGATORS`` is not read.
- **Nothing private in a span.** Server spans carry the method, the route template and the
  status: never the query string, a header or a body. An exception sets an error status
  with its type name only (a message or a stack can quote input).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace.sampling import Sampler

#: Default service names (``OTEL_SERVICE_NAME`` overrides them).
ORCHESTRATOR_SERVICE = "conclave-orchestrator"
SCHEDULER_SERVICE = "conclave-scheduler"
AGENT_SERVICE = "conclave-agent-{}"  # .format(agent name)
EXPORTERS = ("otlp", "console")
#: ``OTEL_TRACES_SAMPLER`` values, the default first.
SAMPLERS = ("parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio",
            "always_on", "always_off", "traceidratio")  # fmt: skip
DEFAULT_ENDPOINT = "http://localhost:4318/v1/traces"

_W3C = TraceContextTextMapPropagator()


#: ``OTEL_BSP_*`` variables and the `BatchSpanProcessor` arguments they set (ms, counts).
_BATCH = {"OTEL_BSP_SCHEDULE_DELAY": "schedule_delay_millis",
          "OTEL_BSP_MAX_QUEUE_SIZE": "max_queue_size",
          "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "max_export_batch_size",
          "OTEL_BSP_EXPORT_TIMEOUT": "export_timeout_millis"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """What `configure_tracing` builds (``batch``: `BatchSpanProcessor` arguments)."""

    enabled: bool = False
    service_name: str = ORCHESTRATOR_SERVICE
    exporters: tuple[str, ...] = ()
    endpoint: str = DEFAULT_ENDPOINT
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 10.0
    compression: str = "none"
    sampler: str = "parentbased_always_on"
    sampler_arg: float = 1.0
    resource: Mapping[str, str] = field(default_factory=dict)
    batch: Mapping[str, int] = field(default_factory=dict)


def _pick(env: Mapping[str, str], *names: str) -> str | None:
    """The first of ``names`` set to a non-blank value in ``env``."""
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _pick(env, name)
    try:
        value = default if raw is None else float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {str(raw)[:40]!r}") from None
    if not 0 <= value < float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def _exporters(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = _pick(env, "OTEL_TRACES_EXPORTER")
    if raw is None:
        endpoint = _pick(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
        return ("otlp",) if endpoint else ()
    names = tuple(dict.fromkeys(n.strip().lower() for n in raw.split(",") if n.strip()))
    unknown = [n for n in names if n not in (*EXPORTERS, "none")]
    if unknown:
        raise ValueError(f"OTEL_TRACES_EXPORTER: unsupported {', '.join(unknown)[:80]};"
                         f" use {', '.join(EXPORTERS)} or none")  # fmt: skip
    return () if "none" in names else names


def _resource(raw: str) -> dict[str, str]:
    """``OTEL_RESOURCE_ATTRIBUTES`` (``k=v,k2=v2``, percent-encoded values)."""
    pairs = (item.partition("=") for item in raw.split(","))
    return {k.strip(): unquote(v.strip()) for k, sep, v in pairs if sep and k.strip()}


def _choice(env: Mapping[str, str], names: tuple[str, ...], allowed: tuple[str, ...]) -> str:
    value = (_pick(env, *names) or allowed[0]).lower()
    if value not in allowed:
        raise ValueError(f"{names[-1]}: one of {', '.join(allowed)}, got {value[:40]!r}")
    return value


def tracing_config(env: Mapping[str, str], *, service_name: str) -> TracingConfig:
    """The tracing settings the standard ``OTEL_*`` variables of ``env`` ask for;
    ``service_name`` unless ``OTEL_SERVICE_NAME`` (or ``service.name`` in
    ``OTEL_RESOURCE_ATTRIBUTES``) names another. `ValueError` names a variable we cannot honour.
    """
    from opentelemetry.util.re import parse_env_headers

    exporters = _exporters(env)
    otlp = ("OTEL_EXPORTER_OTLP_TRACES_{}", "OTEL_EXPORTER_OTLP_{}")
    if "otlp" in exporters:  # the only OTLP exporter installed speaks protobuf over HTTP
        _choice(env, tuple(n.format("PROTOCOL") for n in otlp), ("http/protobuf",))
    compression = _choice(env, tuple(n.format("COMPRESSION") for n in otlp),
                          ("none", "gzip", "deflate"))  # fmt: skip
    endpoint = _pick(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if endpoint is None:
        base = _pick(env, "OTEL_EXPORTER_OTLP_ENDPOINT")
        endpoint = f"{base.rstrip('/')}/v1/traces" if base else DEFAULT_ENDPOINT
    headers = _pick(env, *(n.format("HEADERS") for n in otlp))
    timeout = next((n for n in (f.format("TIMEOUT") for f in otlp) if _pick(env, n)), "")
    resource = _resource(env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
    name = _pick(env, "OTEL_SERVICE_NAME") or resource.get("service.name") or service_name
    sampler = _choice(env, ("OTEL_TRACES_SAMPLER",), SAMPLERS)
    ratio = _number(env, "OTEL_TRACES_SAMPLER_ARG", 1.0) if sampler.endswith("ratio") else 1.0
    if ratio > 1.0:
        raise ValueError(f"OTEL_TRACES_SAMPLER_ARG must lie in [0, 1], got {ratio}")
    return TracingConfig(
        enabled=bool(exporters) and (_pick(env, "OTEL_SDK_DISABLED") or "").lower() != "true",
        service_name=name,
        exporters=exporters,
        endpoint=endpoint,
        headers=dict(parse_env_headers(headers, liberal=True)) if headers else {},
        timeout_s=_number(env, timeout, 10.0),  # seconds, as the Python SDK reads it
        compression=compression,
        sampler=sampler,
        sampler_arg=ratio,
        resource=resource | {"service.name": name},
        batch={arg: int(_number(env, var, 0)) for var, arg in _BATCH.items() if _pick(env, var)},
    )


# -- the provider ------------------------------------------------------------------------


@dataclass(slots=True)
class _State:
    enabled: bool = False
    provider: Any = None  # the SDK TracerProvider this module installed last
    tracer: trace.Tracer = field(default_factory=trace.NoOpTracer)  # that provider's


_STATE = _State()


def enabled() -> bool:
    """True while an SDK tracer provider installed here records spans."""
    return _STATE.enabled


def _make_sampler(name: str, arg: float) -> Sampler:
    from opentelemetry.sdk.trace import sampling

    fixed = {"always_on": sampling.ALWAYS_ON, "always_off": sampling.ALWAYS_OFF}
    root = fixed.get(name.removeprefix("parentbased_")) or sampling.TraceIdRatioBased(arg)
    return sampling.ParentBased(root) if name.startswith("parentbased_") else root


def install(processors: list[SpanProcessor], *, resource: Mapping[str, str],
            sampler: Sampler | None = None) -> Any:  # fmt: skip
    """Install an SDK tracer provider with ``processors`` as the global one; the provider.

    The building block of `configure_tracing` (tests pass an in-memory exporter's
    processor). OpenTelemetry sets the global provider once per process (the first one
    installed stays global); this module's spans go to the provider installed last.
    """
    from opentelemetry.sdk import resources as r
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.version import __version__

    sdk = {r.TELEMETRY_SDK_LANGUAGE: "python", r.TELEMETRY_SDK_NAME: "opentelemetry",
           r.TELEMETRY_SDK_VERSION: __version__}  # fmt: skip
    sampler = sampler or _make_sampler(SAMPLERS[0], 1.0)
    provider = TracerProvider(sampler=sampler, resource=r.Resource(sdk | dict(resource)))
    for processor in processors:
        provider.add_span_processor(processor)
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)  # for `trace.get_tracer` users (the cache)
    _STATE.provider, _STATE.tracer = provider, provider.get_tracer("conclave")
    _STATE.enabled = True
    return provider


def _processors(config: TracingConfig) -> list[SpanProcessor]:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    processors: list[SpanProcessor] = []
    for name in config.exporters:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http import Compression
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter: Any = OTLPSpanExporter(
                endpoint=config.endpoint, headers=dict(config.headers),
                timeout=config.timeout_s, compression=Compression(config.compression),
            )  # fmt: skip
        else:  # console: stderr, so stdout stays clean for --json
            exporter = ConsoleSpanExporter(service_name=config.service_name, out=sys.stderr)
        processors.append(BatchSpanProcessor(exporter, **config.batch))  # type: ignore[arg-type]
    return processors


def configure_tracing(config: TracingConfig) -> bool:
    """Install the provider ``config`` describes (nothing when it is off); True when on."""
    if not config.enabled:
        return False
    sampler = _make_sampler(config.sampler, config.sampler_arg)
    install(_processors(config), resource=config.resource, sampler=sampler)
    return True


def shutdown_tracing() -> None:
    """Export what is still queued and stop recording (the command's last step)."""
    provider, _STATE.provider, _STATE.enabled = _STATE.provider, None, False
    _STATE.tracer = trace.NoOpTracer()
    if provider is not None:
        provider.shutdown()


@contextmanager
def tracing_session(config: TracingConfig) -> Iterator[bool]:
    """`configure_tracing` for the body of a command, `shutdown_tracing` after it."""
    try:
        yield configure_tracing(config)
    finally:
        shutdown_tracing()


# -- spans -----------------------------------------------------------------------------------


#: The shared scope while tracing is off: the invalid span, no context switch (reentrant).
_NO_SPAN: AbstractContextManager[Span] = nullcontext(INVALID_SPAN)


class _SpanScope:
    """A span made current for a ``with`` block; an exception sets an error status naming
    only its type (no message, no stack, no event)."""

    __slots__ = ("_attributes", "_kind", "_name", "_parent", "_span", "_token")

    def __init__(self, name: str, kind: SpanKind, parent: otel_context.Context | None,
                 attributes: dict[str, str] | None = None) -> None:  # fmt: skip
        self._name, self._kind, self._parent = name, kind, parent
        self._attributes = attributes

    def __enter__(self) -> Span:
        self._span = _STATE.tracer.start_span(
            self._name, context=self._parent, kind=self._kind, attributes=self._attributes
        )
        self._token = otel_context.attach(trace.set_span_in_context(self._span, self._parent))
        return self._span

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None and self._span.is_recording():
            self._span.set_status(Status(StatusCode.ERROR, exc_type.__name__))
        otel_context.detach(self._token)
        self._span.end()


def span(name: str, kind: SpanKind = SpanKind.INTERNAL) -> AbstractContextManager[Span]:
    """A child of the current span for a ``with`` block (the invalid span while off).

    Set attributes only under ``if span.is_recording():``; never a body, a header value,
    a key, a query string or a secret.
    """
    if not _STATE.enabled:
        return _NO_SPAN
    return _SpanScope(name, kind, None)


def agent_compute(agent: str) -> AbstractContextManager[Span]:
    """``agent.compute <agent>``: the agent's own computation inside its service."""
    if not _STATE.enabled:
        return _NO_SPAN
    return _SpanScope(f"agent.compute {agent}", SpanKind.INTERNAL, None, {"conclave.agent": agent})


def server_span(name: str, parent: otel_context.Context | None) -> AbstractContextManager[Span]:
    """A server span for a ``with`` block, the child of ``parent`` (a caller's remote
    context) when given; for `conclave.observability.tracing_http` (only while on)."""
    return _SpanScope(name, SpanKind.SERVER, parent)


def remote_parent(carrier: dict[str, str]) -> otel_context.Context:
    """The context a caller's W3C ``traceparent`` / ``tracestate`` headers name."""
    return _W3C.extract(carrier)


def inject(headers: dict[str, str]) -> None:
    """Add the current span's ``traceparent`` (and ``tracestate``) to ``headers`` when on."""
    if _STATE.enabled:
        _W3C.inject(headers)


def fastapi_options() -> dict[str, Any]:
    """``FastAPI(**fastapi_options())``: FastAPI's own telemetry (0.16x and later) off, so
    `TraceMiddleware` opens the one server span (FastAPI's would nest ours and record
    ``url.query``) and nothing is configured from the environment behind our back."""
    from fastapi import FastAPI

    if "telemetry" not in inspect.signature(FastAPI).parameters:
        return {}
    off = ("tracing", "metrics", "logs", "operation_spans", "auto_configure")
    return {"telemetry": dict.fromkeys(off, False)}
