"""What every command module shares: the state the root callback builds, and the edge helpers.

Every expected failure prints one red line: bad input and bad settings exit 2, failures of a
source exit 1; no tracebacks for either. Messages print literally (never as rich markup), so
a ``[x]`` in a path or an ``[E123]`` code in a message shows as written. This module
imports no command module, and nothing heavy at import time: ``conclave --help`` loads
only typer and rich (the market, news and settings modules load when a command runs).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from conclave.errors import ConclaveError, ConfigurationError, InvalidRequestError

if TYPE_CHECKING:
    from conclave.news.sources import NewsSource
    from conclave.settings import Settings
    from conclave.timeframes import Timeframe

T = TypeVar("T")

SOURCE_HELP = (
    "binance, ccxt:EXCHANGE, file:PATH, sim or sim:SEED (default: CONCLAVE_MARKET__SOURCE)"
)

# the options several commands share, spelled once
SymbolOption = Annotated[str, typer.Option("--symbol", help="Symbol, upper case (BTCUSDT).")]
TimeframeOption = Annotated[str, typer.Option("--timeframe", help="Timeframe, e.g. 1h, 4h, 1d.")]
SourceOption = Annotated[str | None, typer.Option("--source", help=SOURCE_HELP)]
ApiHostOption = Annotated[str | None, typer.Option("--host", help="Default: CONCLAVE_API__HOST.")]
ApiPortOption = Annotated[int | None, typer.Option("--port", help="Default: CONCLAVE_API__PORT.")]


@dataclass(frozen=True, slots=True)
class CliState:
    """What every command receives from the root callback."""

    settings: Settings
    now_ms: Callable[[], int]
    out: Console
    err: Console
    env_file: Path = Path(".env")


def fail(err: Console, message: str, code: int) -> NoReturn:
    """Print ``message`` literally (no markup) after a red ``error:`` on ``err``; exit ``code``."""
    err.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def run_or_fail(state: CliState, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro``; turn an expected failure into one red line and an exit code."""
    import asyncio

    try:
        return asyncio.run(coro)
    except InvalidRequestError as exc:
        fail(state.err, f"--{exc.field}: {exc}", 2)
    except ConfigurationError as exc:
        fail(state.err, str(exc), 2)
    except ConclaveError as exc:
        fail(state.err, f"{exc} [{exc.reason}]", 1)
    except OSError as exc:
        fail(state.err, f"{type(exc).__name__}: {exc}", 1)


def parse_instant(value: str, field: str) -> int:
    """An ISO 8601 date or date-time (UTC unless it says otherwise) as ms since the epoch."""
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequestError(
            f"not an ISO 8601 date or date-time: {value!r} (e.g. 2024-01-31T12:00)", field=field
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return round(dt.timestamp() * 1000)


def iso_utc(ms: int | None) -> str:
    """``ms`` since the epoch as ``YYYY-MM-DDTHH:MM:SSZ``; ``-`` for None."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_series(settings: Settings, spec: str, symbol: str, timeframe: str) -> Timeframe:
    """Validate symbol and timeframe before any I/O; files may hold any symbol or interval."""
    from conclave.market.sources.base import check_symbol
    from conclave.timeframes import Timeframe

    check_symbol(symbol)
    tf = Timeframe.parse(timeframe)
    if not spec.startswith("file:"):
        market = settings.market
        if symbol not in market.symbols:
            raise InvalidRequestError(
                f"symbol {symbol} is not in the allowlist (CONCLAVE_MARKET__SYMBOLS):"
                f" {', '.join(market.symbols)}",
                field="symbol",
            )
        if tf.name not in market.timeframes:
            raise InvalidRequestError(
                f"timeframe {tf} is not in the allowlist (CONCLAVE_MARKET__TIMEFRAMES):"
                f" {', '.join(market.timeframes)}",
                field="timeframe",
            )
    return tf


def open_news(state: CliState, spec: str) -> NewsSource:
    """The news source ``spec`` names; a bad spec exits 2 naming ``--news``."""
    from conclave.news.sources import open_news_source

    try:
        return open_news_source(spec)
    except InvalidRequestError as exc:
        fail(state.err, f"--{exc.field}: {exc}", 2)
