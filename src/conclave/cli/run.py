"""``conclave run``: one pipeline run from the command line, printed as a table or JSON.

An edge like the rest of the CLI: the settings come from the root callback, the clock is
read here (``--as-of`` defaults to now) and passed down. Bad input exits 2 with one line
naming the option; data that cannot give a signal (stale, source down) exits 1 with the
reason. Registered on the root app by `conclave.cli`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

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

if TYPE_CHECKING:  # the pipeline, its agents and the sources load when the command runs
    from conclave.news.sources import NewsSource
    from conclave.pipeline import PipelineRun, StepResult

#: Payload items that tell most about each agent's view (the table's "key evidence").
KEY_EVIDENCE: dict[str, tuple[str, ...]] = {
    "market-structure": ("trend", "alignment"),
    "order-flow": ("relative_volume", "obv_trend"),
    "momentum": ("rsi", "zone"),
    "volatility-regime": ("regime", "size_multiplier"),
    "news-sentiment": ("count", "reason"),
    "multi-timeframe": ("trends", "aligned"),
    "pattern-recognition": ("count", "patterns"),
    "statistical-edge": ("zscore", "half_life_bars"),
    "risk-manager": ("level", "reason"),
}


def _short(value: Any, width: int = 40) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, list) and all(isinstance(v, dict) and "kind" in v for v in value):
        text = ",".join(str(v["kind"]) for v in value[-3:]) or "none"
    elif isinstance(value, dict | list):
        text = json.dumps(value, separators=(",", ":"), default=str)
    else:
        text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def key_evidence(step: StepResult) -> str:
    """The one or two most telling payload items of ``step`` (its reason when it failed)."""
    if not step.ok:
        return _short(step.error or step.status, 60)
    keys = [k for k in KEY_EVIDENCE.get(step.agent, ()) if k in step.payload]
    if not keys:  # an unknown payload: its first two plain items
        keys = [k for k, v in step.payload.items() if not isinstance(v, dict | list)][:2]
    return ", ".join(f"{k}={_short(step.payload[k])}" for k in keys[:2])


def _print_run(out: Console, run: PipelineRun) -> None:
    from conclave.timeframes import iso_ms

    if run.simulated:
        out.print(
            Panel(
                "[bold black on yellow]  SIMULATED  [/]  data from the simulator, not a market;"
                " the decision below is simulated too",
                style="bold yellow",
            )
        )
    title = f"{run.symbol} {run.timeframe} as of {iso_ms(run.as_of_ms)}  (run {run.run_id[:12]})"
    table = Table(title=title)
    for col, justify in (
        ("agent", "left"), ("score", "right"), ("confidence", "right"),
        ("status", "left"), ("ms", "right"), ("key evidence", "left"),
    ):  # fmt: skip
        table.add_column(col, justify=justify, overflow="fold", no_wrap=col in ("agent", "status"))  # type: ignore[arg-type]
    for name, step in run.steps.items():
        ok = step.ok
        table.add_row(
            name,
            f"{step.score:+.3f}" if ok and step.score is not None else "-",
            f"{step.confidence:.1f}" if ok and step.confidence is not None else "-",
            step.status if ok else f"[red]{step.status}[/]",
            f"{step.duration_ms:.2f}",
            key_evidence(step),
        )
    out.print(table)
    d = run.decision
    action = d.action or "NO DECISION"
    colour = {"BUY": "green", "SELL": "red", "HOLD": "yellow"}.get(action, "magenta")
    lines = [f"[bold {colour}]{action}[/]  status {d.status}"]
    if d.conviction is not None:
        lines.append(
            f"conviction {d.conviction:+.3f}   confidence {d.confidence or 0.0:.1f}"
            f"   strength {d.strength:.2f}   size x{d.size_multiplier:.2f}"
        )
    lines.append(f"tradable {'yes' if d.tradable else 'no'}   healthy analysis agents "
                 f"{d.healthy_analysis}/8 (quorum {d.quorum})")  # fmt: skip
    if d.degraded:
        why = [f"missing {', '.join(d.missing_agents)}"] if d.missing_agents else []
        why += [f"gaps {r.describe()}" for r in run.gaps.values() if r.degraded]
        lines.append(f"[yellow]degraded[/]: {'; '.join(why)}")
    elif run.gaps_filled:
        lines.append("filled: " + ", ".join(r.describe() for r in run.gaps.values()))
    lines.append(f"reason: {d.reason}")
    label = "decision (SIMULATED)" if run.simulated else "decision"
    out.print(Panel("\n".join(lines), title=label, expand=False))


async def _execute(
    state: CliState,
    spec: str,
    symbol: str,
    timeframe: str,
    as_of: str | None,
    one_file: bool,
    news: NewsSource | None = None,
) -> PipelineRun:
    from conclave.market.gateway import MarketGateway
    from conclave.market.sources import open_source
    from conclave.pipeline import Pipeline
    from conclave.timeframes import iso_ms

    tf = check_series(state.settings, spec, symbol, timeframe)
    now_ms = state.now_ms()
    as_of_ms = now_ms if as_of is None else parse_instant(as_of, "as-of")
    source = open_source(spec, state.settings, now_ms=state.now_ms)
    gateway = MarketGateway(source, resample="resample" if one_file else "auto")
    try:
        async with Pipeline(gateway, news_source=news) as pipeline:
            return await pipeline.run(None, symbol, tf.name, as_of_ms=as_of_ms,
                                      now_iso=iso_ms(now_ms))  # fmt: skip
    finally:
        await gateway.aclose()


def run(
    ctx: typer.Context,
    symbol: SymbolOption,
    timeframe: TimeframeOption,
    source: SourceOption = None,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Point in time, ISO 8601, UTC unless stated (default: now)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    news: Annotated[
        str | None,
        typer.Option("--news", help="Headlines: file:PATH (JSON/CSV) or rss:URL (default: none)."),
    ] = None,
) -> None:
    """Run the nine agents once and print their steps and the decision."""
    state: CliState = ctx.obj
    spec = source or state.settings.market.source
    # one file holds one timeframe: the higher ones are built from it
    one_file = spec.startswith("file:") and Path(spec[5:]).expanduser().is_file()
    news_spec = news or state.settings.news.source
    news_source = open_news(state, news_spec) if news_spec else None
    result = run_or_fail(
        state, _execute(state, spec, symbol, timeframe, as_of, one_file, news_source)
    )
    if as_json:
        typer.echo(json.dumps(result.to_wire(), allow_nan=False))
    d = result.decision
    if d.status == "no_signal":
        hint = ""
        if d.reason.startswith("stale_data") and as_of is None:
            hint = "; historical data needs --as-of ISO_TIME (e.g. --as-of 2022-10-11T11:00)"
        fail(state.err, f"no signal: {d.reason}{hint}", 1)
    if not as_json:
        _print_run(state.out, result)
