"""``conclave backtest``: the live agents, decision, execution and risk rules over history.

Prints the performance next to buy-and-hold, the per-agent skill, what validation removed
from the data and the gaps found, or with ``--json`` one JSON object on stdout (progress
goes to stderr). ``--check-parity N`` runs the live pipeline at N seeded bars and fails when
any value differs by more than 1e-9 or any status or action differs; ``--check-lookahead K``
recomputes every agent on the history cut at K bars and fails unless it matches exactly.
``--sweep FILE`` runs every configuration of a sweep file (`conclave.backtest.sweep_file`)
over the same history, the agents computed once, and prints them ranked by ``--rank-by``
with the spread and the in-sample warning (``--results`` writes every row).

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
import sys
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

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
from conclave.errors import (  # light: conclave.cli.common loads it too
    ExchangeDataError,
    InsufficientDataError,
    InvalidCandlesError,
    InvalidRequestError,
)

# the engine, numpy, the agents and the sources load when the command runs, never at
# import: `conclave --help` and every other command share this module's import cost
if TYPE_CHECKING:
    from conclave.agents import Agent
    from conclave.backtest.history import History
    from conclave.backtest.settings import BacktestSettings, Progress
    from conclave.backtest.sweep_space import SweepConfig
    from conclave.pipeline.decision import DecisionConfig

T = TypeVar("T")

#: Errors that mean the data cannot be backtested: exit 3, not 2 (options) or 1 (checks).
DATA_ERRORS = (InvalidCandlesError, InsufficientDataError, ExchangeDataError)
EXIT_CHECK_FAILED, EXIT_BAD_OPTIONS, EXIT_BAD_DATA = 1, 2, 3

PHASES = {
    "agents": "agents (vectorized)",
    "account": "account (bar by bar)",
    "parity": "parity with live",
    "lookahead": "lookahead check",
    "sweep": "configurations",
}
RANK_BY_HELP = (
    "Sweep: rank by sharpe (default), sortino, total-return, cagr, excess, max-drawdown or"
    " win-rate."
)
#: Configurations a sweep runs without ``--max`` (or a yes at the terminal's prompt).
DEFAULT_MAX = 1_000


def parse_agents(value: str | None) -> tuple[str, ...]:
    """The agents named in ``value`` (comma separated; None: all nine), registry order.

    The risk manager always runs: without it nothing is tradable (RELIABILITY C5).
    """
    from conclave.pipeline.decision import ALL_AGENTS, ANALYSIS_AGENTS, RISK_AGENT

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
    from conclave.pipeline.decision import ANALYSIS_AGENTS, DecisionConfig

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
    sweep: Annotated[
        Path | None,
        typer.Option("--sweep", help="Run every configuration of a sweep file (.toml or .yaml)."),
    ] = None,
    rank_by: Annotated[
        str | None,
        typer.Option("--rank-by", help=RANK_BY_HELP),
    ] = None,
    max_configs: Annotated[
        int | None,
        typer.Option("--max", min=1, help="Sweep: most configurations (default: 1,000)."),
    ] = None,
    top: Annotated[
        int | None, typer.Option("--top", min=1, help="Sweep: rows printed (default: 10).")
    ] = None,
    results: Annotated[
        Path | None,
        typer.Option("--results", help="Sweep: write every configuration (.csv or .parquet)."),
    ] = None,
) -> None:
    """Backtest the pipeline over history: performance, buy-and-hold, per-agent skill."""
    state: CliState = ctx.obj
    spec = source or state.settings.market.source
    single = {"signals": signals, "trades": trades, "report": report, "png": png,
              "check-parity": check_parity or None,
              "check-lookahead": check_lookahead or None}  # fmt: skip
    sweep_only = {"rank-by": rank_by, "max": max_configs, "top": top, "results": results}
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
                                  ("report", report, (".html", ".htm")), ("png", png, (".png",)),
                                  ("results", results, tables)):  # fmt: skip
            if path is not None and path.suffix.lower() not in kinds:
                raise InvalidRequestError(f"{path} must end in {' or '.join(kinds)}", field=flag)
        mixed = next((k for k, v in (single if sweep else sweep_only).items() if v is not None), "")
        if mixed:
            why = "is for one backtest, not a --sweep" if sweep else "needs --sweep FILE"
            raise InvalidRequestError(why, field=mixed)
        configs: tuple[SweepConfig, ...] = ()
        if sweep is not None:
            from conclave.backtest.sweep import metric_named

            metric = metric_named(rank_by)
            configs = _sweep_configs(state, sweep, names, settings, max_configs or DEFAULT_MAX)
    except InvalidRequestError as exc:
        fail(state.err, f"--{exc.field}: {exc}", EXIT_BAD_OPTIONS)
    news_source = None
    news_spec = news or state.settings.news.source
    if news_spec:
        news_source = open_news(state, news_spec)
    if sweep is not None:
        ranked = run_or_fail(state, _bad_data_exits_3(state, _sweep(
            state, spec, symbol, timeframe, start, end, names, settings, news_source,
            configs, sweep, metric, results,
        )))  # fmt: skip
        if as_json:
            typer.echo(json.dumps(ranked, allow_nan=False))
        else:
            from conclave.backtest.sweep_report import print_sweep

            print_sweep(state.out, ranked, top=top or 10)
        return
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


def _sweep_configs(
    state: CliState, path: Path, names: tuple[str, ...], base: BacktestSettings, most: int
) -> tuple[SweepConfig, ...]:
    """The sweep file's configurations over ``base``; more than ``most`` are refused
    (exit 2) unless a person at the terminal says yes."""
    from conclave.backtest.sweep_file import read_sweep
    from conclave.pipeline.decision import ANALYSIS_AGENTS

    analysis = sum(1 for a in names if a in ANALYSIS_AGENTS)
    spec = read_sweep(path, agents=names, analysis_agents=analysis)
    if spec.count > most:
        ask = f"{path} defines {spec.count:,} configurations, more than --max {most:,}"
        interactive = sys.stdin.isatty() and state.err.is_terminal
        if not (interactive and typer.confirm(f"{ask}: run them all?", err=True)):
            raise InvalidRequestError(
                f"{ask}: pass --max {spec.count} to run them all, or narrow the grid",
                field="sweep",
            )
    return spec.configurations(base)


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


@contextmanager
def _progress_bar(state: CliState) -> Iterator[tuple[Any, Progress]]:
    """A transient progress bar on stderr and the `Progress` callback that drives it."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    # markup off: a path may hold "[x]", which rich markup would swallow
    columns = (TextColumn("{task.description}", markup=False), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn())  # fmt: skip
    with Bar(*columns, console=state.err, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(PHASES.get(phase, phase), total=total)
            bar.update(tasks[phase], completed=done, total=total)

        yield bar, progress


def _period(start: str | None, end: str | None) -> tuple[int | None, int | None]:
    """``--from`` and ``--to`` in ms (None: not given); the end must follow the start."""
    start_ms = None if start is None else parse_instant(start, "from")
    end_ms = None if end is None else parse_instant(end, "to")
    if start_ms is not None and end_ms is not None and end_ms <= start_ms:
        raise InvalidRequestError("--to must be after --from", field="to")
    return start_ms, end_ms


async def _load(
    state: CliState,
    bar: Any,
    source: Any,
    symbol: str,
    timeframe: str,
    period: tuple[int | None, int | None],
    chosen: Mapping[str, Agent],
    settings: BacktestSettings,
    news_source: Any,
) -> History:
    """The history the backtest reads (`load_history`), a spinner on ``bar`` meanwhile."""
    from conclave.backtest.history import load_history

    start_ms, end_ms = period
    loading = bar.add_task(f"loading {symbol} {timeframe} from {source.name}", total=None)
    history = await load_history(
        source, symbol, timeframe, chosen, start_ms=start_ms, end_ms=end_ms,
        now_ms=state.now_ms(), news_source=news_source, resample_policy=settings.resample,
    )  # fmt: skip
    bar.update(loading, total=1, completed=1)
    return history


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
    from conclave.backtest.report import write_html
    from conclave.backtest.summary import summary as make_summary
    from conclave.market.sources import open_source

    tf = check_series(state.settings, spec, symbol, timeframe)
    period = _period(start, end)
    chosen: dict[str, Agent] = {n: REGISTRY[n]() for n in names}
    source = open_source(spec, state.settings, now_ms=state.now_ms)
    failed = ""
    try:
        with _progress_bar(state) as (bar, progress):
            history = await _load(state, bar, source, symbol, tf.name, period, chosen, settings,
                                  news_source)  # fmt: skip
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


async def _sweep(
    state: CliState,
    spec: str,
    symbol: str,
    timeframe: str,
    start: str | None,
    end: str | None,
    names: tuple[str, ...],
    settings: BacktestSettings,
    news_source: Any,
    configs: tuple[SweepConfig, ...],
    path: Path,
    metric: str,
    results: Path | None,
) -> dict[str, Any]:
    """Load the history once, run every configuration, rank them: the JSON summary."""
    from conclave.agents import REGISTRY
    from conclave.backtest.export import write_table
    from conclave.backtest.sweep import run_sweep
    from conclave.backtest.sweep_report import results_table, sweep_summary
    from conclave.market.sources import open_source

    tf = check_series(state.settings, spec, symbol, timeframe)
    period = _period(start, end)
    chosen: dict[str, Agent] = {n: REGISTRY[n]() for n in names}
    source = open_source(spec, state.settings, now_ms=state.now_ms)
    try:
        with _progress_bar(state) as (bar, progress):
            history = await _load(state, bar, source, symbol, tf.name, period, chosen, settings,
                                  news_source)  # fmt: skip
            found = run_sweep(history, chosen, configs, progress=progress)
    finally:
        await source.aclose()
    validation = None if history.validation is None else history.validation.to_json()
    summary = sweep_summary(found, metric, path, base=settings, agents=names,
                            validation=validation)  # fmt: skip
    written: list[str] = []
    if results is not None:
        _write("results", results, lambda: write_table(results_table(summary), results))
        written.append(f"results: {results} ({len(configs):,} rows)")
    summary["written"] = written
    return summary
