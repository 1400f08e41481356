"""``conclave data show|fetch``: inspect one series of a source, fill the local candle store.

``show`` prints rows, first and last open time, gaps and missing bars (``--json``: one JSON
object); ``fetch`` adds only the bars newer than those stored, with progress on stderr.
Registered on the root app by `conclave.cli`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from conclave.cli.common import (
    CliState,
    SourceOption,
    SymbolOption,
    TimeframeOption,
    check_series,
    fail,
    iso_utc,
    parse_instant,
    run_or_fail,
)
from conclave.errors import ConclaveError

if TYPE_CHECKING:  # the market modules load when a command runs (numpy and the sources)
    from conclave.market.candles import Candles
    from conclave.market.store import CandleStore, UpdateResult
    from conclave.market.validation import ValidationReport
    from conclave.timeframes import Timeframe

data_app = typer.Typer(
    help="Market data: fetch candles into the local store, inspect a source.",
    no_args_is_help=True,
)


# -- data show -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Shown:
    candles: Candles
    report: ValidationReport
    as_of_ms: int
    fresh: bool


async def _load_for_show(
    state: CliState, spec: str, symbol: str, timeframe: str, limit: int | None, as_of: str | None
) -> _Shown:
    from conclave.market.gateway import MarketGateway
    from conclave.market.sources import open_source
    from conclave.market.sources.base import MAX_LIMIT
    from conclave.market.validation import check_fresh

    tf = check_series(state.settings, spec, symbol, timeframe)
    as_of_ms = state.now_ms() if as_of is None else parse_instant(as_of, "as-of")
    # a file is shown whole unless a limit is given; a live source shows its newest 500 bars
    n = limit if limit is not None else (MAX_LIMIT if spec.startswith("file:") else 500)
    source = open_source(spec, state.settings, now_ms=state.now_ms)
    gateway = MarketGateway(source, resample="fetch")
    try:
        snap = await gateway.snapshot(symbol, tf, limit=n, as_of_ms=as_of_ms, require_fresh=False)
    finally:
        await gateway.aclose()
    candles = snap.base.relabel(source=snap.source)
    try:
        check_fresh(candles, as_of_ms)
        fresh = True
    except ConclaveError:
        fresh = False
    return _Shown(candles, snap.reports[tf.name], as_of_ms, fresh)


def _summary(shown: _Shown, spec: str) -> dict[str, Any]:
    c, r = shown.candles, shown.report
    return {
        "rows": r.rows,
        "first_open_ms": c.first_open_ms,
        "last_open_ms": c.last_open_ms,
        "gaps": r.gaps.count,
        "missing_bars": r.gaps.missing_bars,
        "source": spec,
        "simulated": c.simulated,
        "symbol": c.symbol,
        "timeframe": c.timeframe.name,
        "as_of_ms": shown.as_of_ms,
        "fresh": shown.fresh,
        "duplicates_merged": r.duplicates_merged,
        "rejected": len(r.rejected),
        "dropped_unclosed": r.dropped_unclosed,
    }


def _print_show(out: Console, shown: _Shown, spec: str, tail: int) -> None:
    s = _summary(shown, spec)
    if s["simulated"]:
        out.print("[bold black on yellow] SIMULATED [/] data from the simulator, not a market")
    table = Table(title=f"{s['symbol']} {s['timeframe']} from {spec}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    rows = [
        ("source", spec + ("  (SIMULATED)" if s["simulated"] else "")),
        ("rows", f"{s['rows']:,}"),
        ("first open (UTC)", iso_utc(s["first_open_ms"])),
        ("last open (UTC)", iso_utc(s["last_open_ms"])),
        ("gaps", f"{s['gaps']:,}"),
        ("missing bars", f"{s['missing_bars']:,}"),
        ("duplicates merged", str(s["duplicates_merged"])),
        ("rejected rows", str(s["rejected"])),
        ("dropped unclosed", str(s["dropped_unclosed"])),
        ("as of (UTC)", iso_utc(s["as_of_ms"])),
        ("fresh", "yes" if s["fresh"] else "[yellow]no (stale: no signal from it)[/]"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    out.print(table)
    last = shown.candles.tail(tail)
    if len(last):
        bars = Table(title=f"last {len(last)} candles")
        for name in ("open (UTC)", "open", "high", "low", "close", "volume"):
            bars.add_column(name, justify="right")
        for i in range(len(last)):
            bars.add_row(
                iso_utc(int(last.open_time[i]))[:16].replace("T", " "),
                *(f"{float(getattr(last, k)[i]):,.8g}" for k in ("open", "high", "low", "close")),
                f"{float(last.volume[i]):,.4f}",
            )
        out.print(bars)


@data_app.command("show")
def show(
    ctx: typer.Context,
    symbol: SymbolOption,
    timeframe: TimeframeOption,
    source: SourceOption = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Newest N bars (default: whole file, or 500).")
    ] = None,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Point in time, ISO 8601 (default: now).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    tail: Annotated[int, typer.Option("--tail", help="Candles to list.")] = 5,
) -> None:
    """Show rows, first and last open time, gaps and missing bars of one series."""
    state: CliState = ctx.obj
    spec = source or state.settings.market.source
    shown = run_or_fail(state, _load_for_show(state, spec, symbol, timeframe, limit, as_of))
    if as_json:
        typer.echo(json.dumps(_summary(shown, spec)))
    else:
        _print_show(state.out, shown, spec, tail)


# -- data fetch ----------------------------------------------------------------------------


async def _fetch_all(
    state: CliState,
    spec: str,
    series: list[tuple[str, Timeframe]],
    store: CandleStore,
    since_ms: int | None,
    backfill: int,
) -> list[UpdateResult]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from conclave.market.sources import open_source

    source = open_source(spec, state.settings, now_ms=state.now_ms)
    results: list[UpdateResult] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    try:
        with Progress(*columns, TimeElapsedColumn(), console=state.err) as progress:
            for symbol, tf in series:
                task = progress.add_task(f"{symbol} {tf} pages", total=None)

                def advance(done: int, total: int, task: Any = task) -> None:
                    progress.update(task, completed=done, total=total)

                result = await store.update(
                    source, symbol, tf, now_ms=state.now_ms(), since_ms=since_ms,
                    backfill_bars=backfill, on_progress=advance,
                )  # fmt: skip
                progress.update(
                    task, completed=max(result.requests, 1), total=max(result.requests, 1)
                )
                results.append(result)
    finally:
        await source.aclose()
    return results


@data_app.command("fetch")
def fetch(
    ctx: typer.Context,
    symbol: Annotated[list[str], typer.Option("--symbol", help="Symbol; repeat for more.")],
    timeframe: Annotated[list[str], typer.Option("--timeframe", help="Timeframe; repeat.")],
    source: SourceOption = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Start here (ISO 8601) when nothing is stored.")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", help="Bars to backfill when nothing is stored and no --since.")
    ] = 1000,
    store_dir: Annotated[
        Path | None,
        typer.Option("--store", help="Store directory (default: CONCLAVE_MARKET__STORE_DIR)."),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="parquet or csv.")] = "parquet",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Download candles into the local store, adding only bars newer than those stored."""
    state: CliState = ctx.obj
    spec = source or state.settings.market.source
    if fmt not in ("parquet", "csv"):
        fail(state.err, f"--format: expected parquet or csv, got {fmt!r}", 2)
    if limit < 1:
        fail(state.err, f"--limit: must be at least 1, got {limit}", 2)

    async def checked() -> list[UpdateResult]:
        from conclave.market.store import CandleStore

        series = [(s, check_series(state.settings, spec, s, t)) for s in symbol for t in timeframe]
        since_ms = None if since is None else parse_instant(since, "since")
        store = CandleStore(store_dir or state.settings.market.store_dir, suffix=f".{fmt}")
        return await _fetch_all(state, spec, series, store, since_ms, limit)

    results = run_or_fail(state, checked())
    if as_json:
        series = [
            {**asdict(r), "path": str(r.path)} | {"simulated": spec.startswith("sim")}
            for r in results
        ]
        typer.echo(json.dumps({"source": spec, "series": series}))
        return
    table = Table(
        title=f"candles from {spec}" + ("  (SIMULATED)" if spec.startswith("sim") else "")
    )
    for name in (
        "symbol",
        "tf",
        "added",
        "rows",
        "requests",
        "first open (UTC)",
        "last open (UTC)",
    ):
        table.add_column(name, justify="right" if name in ("added", "rows", "requests") else "left")
    for r in results:
        table.add_row(
            r.symbol, r.timeframe, f"{r.added:,}", f"{r.rows:,}", str(r.requests),
            iso_utc(r.first_open_ms)[:16], iso_utc(r.last_open_ms)[:16],
        )  # fmt: skip
    state.out.print(table)
    if results:
        where = results[0].path.parent
        state.out.print(f"stored under {where}; read it back with --source file:{where}")
