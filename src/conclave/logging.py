"""Structured logging: configured once at the edge, used everywhere via structlog.

Library code calls ``structlog.get_logger(__name__)`` and logs events with fields; the CLI or
the app factory calls `configure_logging` once: a readable console renderer for humans, one
JSON object per line for machines (``CONCLAVE_LOG_JSON=true``). Stdlib records (uvicorn's,
libraries') are rendered the same way, and every line carries the context bound with
`structlog.contextvars` (the orchestrator and an agent service's ``/run`` bind ``run_id`` for
the duration of a run) and, where an OpenTelemetry span is current, its ``trace_id`` (32 hex
digits; absent without a valid span, so always absent while tracing is off), so a log line
leads to its trace. Logs go to stderr so stdout stays clean for ``--json``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
from opentelemetry import trace

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_NOISY = ("alembic", "httpx2", "httpcore2", "aiohttp.access")


def _stderr_logger(*_args: Any) -> structlog.PrintLogger:
    # resolve sys.stderr per logger, not once: a test runner may swap and close it
    return structlog.PrintLogger(sys.stderr)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stdlib handler that writes to whatever ``sys.stderr`` is at emit time."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def add_trace_id(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: ``trace_id`` of the current OpenTelemetry span, when valid."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event["trace_id"] = format(ctx.trace_id, "032x")
    return event


def _no_query_in_access_log(record: logging.LogRecord) -> bool:
    """uvicorn's access lines without the query string: a token or a key sent in a query
    (by mistake or by a client we do not control) must not reach the logs (E9)."""
    if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) > 2:
        path = record.args[2]
        if isinstance(path, str) and "?" in path:
            args = list(record.args)
            args[2] = path.split("?", 1)[0] + "?..."
            record.args = tuple(args)
    return True


def configure_logging(
    level: str = "INFO", json: bool = False, *, stream: TextIO | None = None
) -> None:
    """Route structlog (and stdlib logging) to ``stream`` (stderr) at ``level``."""
    name = level.upper()
    if name not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    numeric = logging.getLevelNamesMapping()[name]
    out = stream if stream is not None else sys.stderr
    renderer: Any = structlog.dev.ConsoleRenderer(colors=True)
    if json:
        renderer = structlog.processors.JSONRenderer()
    elif not out.isatty():  # a file: a plain traceback, no boxes, no locals (request data)
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_trace_id,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    tail: list[Any] = [
        structlog.processors.format_exc_info if json else structlog.processors.StackInfoRenderer(),
        renderer,
    ]
    structlog.configure(
        processors=[*shared, *tail],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=(
            _stderr_logger if stream is None else structlog.PrintLoggerFactory(file=stream)
        ),
        # not cached: tests swap the configuration (structlog.testing.capture_logs)
        cache_logger_on_first_use=False,
    )
    # stdlib records (uvicorn, libraries) rendered like structlog's: one format per stream
    handler: logging.Handler = _StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
        )
    )
    handler.addFilter(_no_query_in_access_log)
    logging.basicConfig(level=numeric, handlers=[handler], force=True)
    # chatty libraries speak only at WARNING unless DEBUG was asked for
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(numeric if numeric <= logging.DEBUG else logging.WARNING)
