"""Structured logging: configured once at the edge, used everywhere via structlog.

Library code calls ``structlog.get_logger(__name__)`` and logs events with fields; the CLI or
the app factory calls `configure_logging` once: a readable console renderer for humans, one
JSON object per line for machines. Logs go to stderr so stdout stays clean for ``--json``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

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


def configure_logging(
    level: str = "INFO", json: bool = False, *, stream: TextIO | None = None
) -> None:
    """Route structlog (and stdlib logging) to ``stream`` (stderr) at ``level``."""
    name = level.upper()
    if name not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    numeric = logging.getLevelNamesMapping()[name]
    out = stream if stream is not None else sys.stderr
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info if json else structlog.processors.StackInfoRenderer(),
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=(
            _stderr_logger if stream is None else structlog.PrintLoggerFactory(file=stream)
        ),
        # not cached: tests swap the configuration (structlog.testing.capture_logs)
        cache_logger_on_first_use=False,
    )
    handler: logging.Handler = _StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=numeric, handlers=[handler], force=True)
    # chatty libraries speak only at WARNING unless DEBUG was asked for
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(numeric if numeric <= logging.DEBUG else logging.WARNING)
