"""``conclave backtest``: the live agents, decision, execution and risk rules over history.

Prints the performance next to buy-and-hold, the per-agent skill, what validation removed
from the data and the gaps found, or with ``--json`` one JSON object on stdout (progress
goes to stderr). ``--check-parity N`` runs the live pipeline at N seeded bars and fails when
any value differs by more than 1e-9 or any status or action differs; ``--check-lookahead K``
recomputes every agent on the history cut at K bars and fails unless it matches exactly.

Exit codes: 0 ok; 1 a check failed (the figures are printed first), or the run failed for
another reason (a source unreachable, an agent raised); 2 bad options, naming the option;
3 bad data: the candles cannot be read or parsed, the period holds no bar, validation
rejected every row, or an exchange answered with unusable data. Registered on the root app
by `conclave.cli`.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from conclave.agents import Agent
from conclave.cli.common import (
    CliState,
    SourceOption,
    SymbolOption,
    TimeframeOption,
    check_series,
    fail,
    open_news,
    parse_instant,
    run_or_fail,
)
from conclave.errors import (
    ExchangeDataError,
    InsufficientDataError,
    InvalidCandlesError,
    InvalidRequestError,
)
from conclave.market.sources import open_source
from conclave.pipeline.decision import ALL_AGENTS, ANALYSIS_AGENTS, RISK_AGENT, DecisionConfig

if TYPE_CHECKING:  # the engine is imported when the command runs: `conclave agent serve`
    from conclave.backtest.settings import BacktestSettings  # shares this CLI's import cost

T = TypeVar("T")

#: Errors that mean the data cannot be backtested: exit 3, not 2 (options) or 1 (checks).
DATA_ERRORS = (InvalidCandlesError, InsufficientDataError, ExchangeDataError)
EXIT_CHECK_FAILED, EXIT_BAD_OPTIONS, EXIT_BAD_DATA = 1, 2, 3

PHASES = {
    "agents": "agents (vectorized)",
    "account": "account (bar by bar)",
    "parity": "parity with live",
    "lookahead": "lookahead check",
}


def parse_agents(value: str | None) -> tuple[str, ...]:
    """The agents named in ``value`` (comma separated; None: all nine), registry order.

    The risk manager always runs: without it nothing is tradable (RELIABILITY C5).
    """
    if value is None or not value.strip():
        return ALL_AGENTS
    names = [v.strip() for v in value.split(",") if v.strip()]
    for name in names:
        if name not in ALL_AGENTS:
            near = difflib.get_close_matches(name, ALL_AGENTS, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; known: {', '.join(ALL_AGENTS)}"
            raise InvalidRequestError(f"unknown agent {name!r}{hint}", field="agents")
    if not any(n in ANALYSIS_AGENTS for n in names):
        raise InvalidRequestError("name at least one analysis agent", field="agents")
    chosen = set(names) | {RISK_AGENT}
    return tuple(a for a in ALL_AGENTS if a in chosen)


def parse_weights(value: str | None) -> dict[str, float]:
    """``market-structure=2,momentum=0.5`` as a mapping (None or empty: no overrides)."""
    out: dict[str, float] = {}
    if value is None:
        return out
    for item in value.split(","):
        if not item.strip():
            continue
        name, sep, number = item.partition("=")
        try:
            weight = float(number)
        except ValueError:
            weight = math.nan
        if not sep or not math.isfinite(weight):
            raise InvalidRequestError(
                f"expected AGENT=NUMBER pairs separated by commas, got {item.strip()!r}",
                field="weights",
            )
        out[name.strip()] = weight
    return out


def decision_config(agents: tuple[str, ...], weights: Mapping[str, float]) -> DecisionConfig:
    """Weights as given; the quorum lowered to the number of analysis agents chosen."""
    analysis = sum(1 for a in agents if a in ANALYSIS_AGENTS)
    base = DecisionConfig()
    try:
        return DecisionConfig(weights=dict(weights), quorum=min(base.quorum, analysis))
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        first = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
        raise InvalidRequestError(first.removeprefix("Value error, "), field="weights") from None


def backtest(
    ctx: typer.Context,
    symbol: SymbolOption,
    timeframe: TimeframeOption,
    source: SourceOption = None,
    start: Annotated[
        str | None,
        typer.Option("--from", help="First bar's open, ISO 8601 (default: the history's start)."),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option("--to", help="Last bar closes at or before, ISO 8601 (default: newest)."),
    ] = None,
    agents: Annotated[
        str | None,
        typer.Option("--agents", help="Agents to run, comma separated (default: all nine)."),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option("--weights", help="Decision weights, e.g. market-structure=2,momentum=0.5."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    check_parity: Annotated[
        int, typer.Option("--check-parity", min=0, help="Compare with the live pipeline at N bars.")
    ] = 0,
    check_lookahead: Annotated[
        int, typer.Option("--check-lookahead", min=0, help="Recompute on history cut at K bars.")
    ] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bars checked.")] = 0,
    balance: Annotated[float, typer.Option("--balance", help="Starting balance (quote).")] = 10_000,
    fee: Annotated[float, typer.Option("--fee", help="Fee rate per fill (0.001 = 0.1%).")] = 0.001,
    slippage: Annotated[float, typer.Option("--slippage", help="Slippage fraction.")] = 0.0005,
    news: Annotated[
        str | None, typer.Option("--news", help="Headlines: file:PATH or rss:URL (default: none).")
    ] = None,
    signals: Annotated[
        Path | None, typer.Option("--signals", help="Write per-bar signals (.csv or .parquet).")
    ] = None,
    trades: Annotated[
        Path | None, typer.Option("--trades", help="Write the fills (.csv or .parquet).")
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write an HTML report (and a PNG beside it).")
    ] = None,
    png: Annotated[
        Path | None, typer.Option("--png", help="Write the equity and drawdown chart (PNG).")
    ] = None,
) -> None:
    """Backtest the pipeline over history: performance, buy-and-hold, per-agent skill."""
    state: CliState = ctx.obj
    spec = source or state.settings.market.source
    try:
        names = parse_agents(agents)
        config = decision_config(names, parse_weights(weights))
        from conclave.backtest.settings import BacktestSettings

        # one file holds one timeframe: the higher ones are built from it (as `conclave run`)
        one_file = spec.startswith("file:") and Path(spec[5:]).expanduser().is_file()
        settings = BacktestSettings(
            starting_balance=balance, fee_rate=fee, slippage=slippage, decision=config,
            resample="resample" if one_file else "auto",
        )  # fmt: skip
        tables = (".csv", ".parquet")
        for flag, path, kinds in (("signals", signals, tables), ("trades", trades, tables),
                                  ("report", report, (".html", ".htm")),
                                  ("png", png, (".png",))):  # fmt: skip
            if path is not None and path.suffix.lower() not in kinds:
                raise InvalidRequestError(f"{path} must end in {' or '.join(kinds)}", field=flag)
    except InvalidRequestError as exc:
        fail(state.err, f"--{exc.field}: {exc}", EXIT_BAD_OPTIONS)
    news_source = None
    news_spec = news or state.settings.news.source
    if news_spec:
        news_source = open_news(state, news_spec)
    summary, failed = run_or_fail(
        state,
        _bad_data_exits_3(state, _backtest(
            state, spec, symbol, timeframe, start, end, names, settings, news_source,
            check_parity, check_lookahead, seed, signals, trades, report, png,
        )),
    )  # fmt: skip
    if as_json:
        typer.echo(json.dumps(summary, allow_nan=False))
    else:
        from conclave.backtest.table import check_lines, print_summary

        print_summary(state.out, summary)
        for line in check_lines(summary):
            state.out.print(line, soft_wrap=True)
    if failed:
        fail(state.err, failed, EXIT_CHECK_FAILED)


async def _bad_data_exits_3(state: CliState, run: Coroutine[Any, Any, T]) -> T:
    """Await ``run``; data that cannot be backtested prints one red line and exits 3."""
    try:
        return await run
    except DATA_ERRORS as exc:
        fail(state.err, f"bad data: {exc} [{exc.reason}]", EXIT_BAD_DATA)


def _write(flag: str, path: Path, write: Callable[[], object]) -> None:
    """Run ``write``; a path that cannot be written is a bad ``--flag`` (exit 2)."""
    try:
        write()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InvalidRequestError(f"cannot write {path}: {reason}", field=flag) from exc


async def _backtest(
    state: CliState,
    spec: str,
    symbol: str,
    timeframe: str,
    start: str | None,
    end: str | None,
    names: tuple[str, ...],
    settings: BacktestSettings,
    news_source: Any,
    parity_n: int,
    lookahead_k: int,
    seed: int,
    signals: Path | None,
    trades: Path | None,
    report: Path | None,
    png: Path | None,
) -> tuple[dict[str, Any], str]:
    from conclave.agents import REGISTRY
    from conclave.backtest.chart import plot_png
    from conclave.backtest.checks import check_lookahead as run_lookahead
    from conclave.backtest.checks import check_parity as run_parity
    from conclave.backtest.engine import run_backtest
    from conclave.backtest.export import signals_table, trades_table, write_table
    from conclave.backtest.history import load_history
    from conclave.backtest.report import write_html
    from conclave.backtest.summary import summary as make_summary

    tf = check_series(state.settings, spec, symbol, timeframe)
    start_ms = None if start is None else parse_instant(start, "from")
    end_ms = None if end is None else parse_instant(end, "to")
    if start_ms is not None and end_ms is not None and end_ms <= start_ms:
        raise InvalidRequestError("--to must be after --from", field="to")
    chosen: dict[str, Agent] = {n: REGISTRY[n]() for n in names}
    source = open_source(spec, state.settings, now_ms=state.now_ms)
    # markup off: a path may hold "[x]", which rich markup would swallow
    columns = (TextColumn("{task.description}", markup=False), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn())  # fmt: skip
    failed = ""
    try:
        with Progress(*columns, console=state.err, transient=True) as bar:
            tasks: dict[str, Any] = {}

            def progress(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = bar.add_task(PHASES.get(phase, phase), total=total)
                bar.update(tasks[phase], completed=done, total=total)

            loading = bar.add_task(f"loading {symbol} {tf} from {source.name}", total=None)
            history = await load_history(
                source, symbol, tf.name, chosen, start_ms=start_ms, end_ms=end_ms,
                now_ms=state.now_ms(), news_source=news_source, resample_policy=settings.resample,
            )  # fmt: skip
            bar.update(loading, total=1, completed=1)
            result = run_backtest(history, chosen, settings, progress=progress)
            parity = lookahead = None
            if parity_n:
                parity = await run_parity(result, chosen, settings, source, n=parity_n,
                                          seed=seed, news_source=news_source,
                                          progress=progress)  # fmt: skip
            if lookahead_k:
                lookahead = run_lookahead(history, chosen, cuts=lookahead_k, seed=seed,
                                          progress=progress)  # fmt: skip
    finally:
        await source.aclose()
    summary = make_summary(
        result,
        parity=None if parity is None else parity.to_json(),
        lookahead=None if lookahead is None else lookahead.to_json(),
        validation=None if history.validation is None else history.validation.to_json(),
    )
    written: list[str] = []
    if signals is not None:
        _write("signals", signals, lambda: write_table(signals_table(result), signals))
        written.append(f"signals: {signals} ({len(result):,} rows)")
    if trades is not None:
        _write("trades", trades, lambda: write_table(trades_table(result), trades))
        written.append(f"trades: {trades} ({len(result.fills):,} fills)")
    if png is not None:
        _write("png", png, lambda: plot_png(result, png))
        written.append(f"chart: {png}")
    if report is not None:
        chart = png if png is not None else report.with_suffix(".png")
        parity_json = None if parity is None else parity.to_json()
        _write("report", report,
               lambda: write_html(result, report, png_path=chart, parity=parity_json))  # fmt: skip
        written.append(f"report: {report} (chart {chart})")
    summary["written"] = written
    if parity is not None and not parity.ok():
        failed = (
            f"parity with live failed: largest difference {parity.max_abs_diff:.3g} at"
            f" {parity.worst or '-'}; {len(parity.mismatches)} mismatches"
            + (f", first: {parity.mismatches[0]}" if parity.mismatches else "")
        )
    elif lookahead is not None and not lookahead.ok():
        first = next(iter(lookahead.first_difference.items()), ("", ""))
        failed = f"lookahead found in {first[0]}: {first[1]}"
    return summary, failed
