"""What a sweep shows: the JSON summary, the table of every row, and the printed ranking.

`sweep_summary` is ``conclave backtest --sweep --json``'s object: the run's fields as
`summary.summary` names them (symbol .. missingBars, timings, settings, validation), a
``sweep`` object (the file, the ranking and its tie-break, the spread of the ranked figure,
the in-sample warning) and ``results``: every configuration, best first, each with its
rank, number, name, the swept keys' values and a ``performance`` object shaped as a
single backtest's. `results_table` flattens ``results`` for CSV or Parquet; `print_sweep`
prints the top rows, the spread and the warning (data printed literally, never as markup).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from conclave.backtest.export import Table as Columns
from conclave.backtest.settings import BacktestSettings
from conclave.backtest.summary import plain
from conclave.backtest.sweep import (
    IN_SAMPLE,
    METRICS,
    TIE_BREAK,
    SweepResult,
    rank,
    spread,
)
from conclave.backtest.sweep_space import value_of
from conclave.backtest.table import dd, num, pct, print_period, validation_table
from conclave.timeframes import iso_ms

#: The figures of each row in the table written (`results_table`), `Performance` names.
FIGURES = ("total_return", "cagr", "sharpe", "sortino", "max_drawdown", "win_rate", "trades",
           "buys", "sells", "round_trips", "time_in_market", "mean_exposure", "fees_paid",
           "final_equity", "excess")  # fmt: skip
_LIMITS = ("warn", "reduce", "halt")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def sweep_summary(
    found: SweepResult,
    metric: str,
    path: str | Path,
    *,
    base: BacktestSettings,
    agents: Sequence[str],
    validation: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The sweep as one plain-JSON object (see the module docstring), ranked by
    ``metric`` (a key of `METRICS`)."""
    m = METRICS[metric]
    rows = found.rows
    keys = list(dict.fromkeys(k for r in rows for k in r.config.values))
    results = []
    for place, i in enumerate(rank(rows, m), start=1):
        row = rows[i]
        results.append({
            "rank": place,
            "number": row.config.number,
            "name": row.config.name,
            "params": {k: value_of(row.config.settings, k) for k in keys},
            "performance": row.performance.to_json(),
        })  # fmt: skip
    n = found.bars
    run = {"agents": list(agents), "warmupBars": found.warmup_bars,
           "resampled": list(found.resampled)}  # fmt: skip
    out: dict[str, Any] = {
        "symbol": found.symbol,
        "timeframe": found.timeframe,
        "source": found.source,
        "simulated": bool(found.simulated),
        "from": iso_ms(int(found.open_time[0])) if n else None,
        "to": iso_ms(int(found.close_time[-1])) if n else None,
        "bars": n,
        "gaps": [g.to_json() for g in found.gaps],
        "missingBars": sum(g.missing_bars for g in found.gaps),
        "sweep": {
            "file": str(path),
            "configurations": len(rows),
            "keys": keys,
            "rankBy": metric,
            "figure": _camel(m.field),
            "better": "higher" if m.higher_is_better else "lower",
            "tieBreak": TIE_BREAK,
            "spread": {**spread(rows, m), "metric": _camel(m.field)},
            "engineRuns": sum(not r.compiled for r in rows),
            "warning": IN_SAMPLE.format(n=len(rows)),
        },
        "results": results,
        "timings": {**found.timings, "workers": found.workers},
        "settings": base.to_json() | run,
    }
    if validation is not None:
        out["validation"] = dict(validation)
    result: dict[str, Any] = plain(out)
    return result


def results_table(summary: Mapping[str, Any]) -> Columns:
    """One row per configuration, best first: rank, number, name, each swept key (a
    ``[warn, reduce, halt]`` triple as three columns), the figures (`FIGURES`) and
    buy-and-hold's total return, Sharpe and max drawdown; None as NaN (empty in CSV)."""
    results = summary["results"]
    table: Columns = {
        "rank": np.array([r["rank"] for r in results], dtype=np.int64),
        "number": np.array([r["number"] for r in results], dtype=np.int64),
        "name": np.array([r["name"] for r in results], dtype=np.str_),
    }
    for key in summary["sweep"]["keys"]:
        values = [r["params"][key] for r in results]
        if values and isinstance(values[0], list):
            for j, part in enumerate(_LIMITS):
                table[f"{key}.{part}"] = np.array([v[j] for v in values], dtype=np.float64)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            table[key] = np.array(values, dtype=np.int64)
        elif all(isinstance(v, int | float) for v in values):
            table[key] = np.array(values, dtype=np.float64)
        else:
            table[key] = np.array([str(v) for v in values], dtype=np.str_)
    for name in FIGURES:
        got = [r["performance"][_camel(name)] for r in results]
        dtype = np.int64 if name in ("trades", "buys", "sells", "round_trips") else np.float64
        table[name] = np.array([np.nan if v is None else v for v in got], dtype=dtype)
    for name in ("total_return", "sharpe", "max_drawdown"):
        got = [r["performance"]["buyAndHold"][_camel(name)] for r in results]
        table[f"buy_and_hold_{name}"] = np.array([np.nan if v is None else v for v in got],
                                                 dtype=np.float64)  # fmt: skip
    return table


# -- printing ------------------------------------------------------------------------------------


def _value(v: Any) -> str:
    if isinstance(v, list):
        return "/".join(f"{x:g}" for x in v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _figure(field: str, v: Any) -> str:
    if field == "maxDrawdown":
        return dd(v)
    if field in ("sharpe", "sortino"):
        return num(v)
    if field == "winRate":
        return pct(v).lstrip("+")
    if field == "trades":
        return f"{v:,}"
    return pct(v)


_LABELS = {"totalReturn": "total return", "cagr": "CAGR", "sharpe": "Sharpe",
           "sortino": "Sortino", "maxDrawdown": "max drawdown", "winRate": "win rate",
           "excess": "excess vs B&H", "trades": "fills"}  # fmt: skip
_SHOWN = ("sharpe", "totalReturn", "maxDrawdown", "excess", "trades")


def key_label(key: str) -> str:
    """A swept key as a column heading: its last part in words (``weights.momentum``:
    ``momentum weight``)."""
    section, _, name = key.partition(".")
    if section == "weights":
        return f"{name} weight"
    return (name or section).replace("_", " ")


def _ranking(summary: Mapping[str, Any], top: int) -> Table:
    sweep = summary["sweep"]
    field = sweep["figure"]
    results = summary["results"][:top]
    figures = [field, *(f for f in _SHOWN if f != field)]
    named = any(r["name"] for r in summary["results"])
    title = (f"top {len(results):,} of {sweep['configurations']:,} by {_LABELS[field]}"
             f" ({sweep['better']} is better)")  # fmt: skip
    table = Table(title=title, title_justify="left")
    heads = ["rank", "#", *(["name"] if named else []), *map(key_label, sweep["keys"]),
             *(_LABELS[f] for f in figures)]  # fmt: skip
    for h in heads:
        table.add_column(Text(h), justify="left" if h == "name" else "right")
    for r in results:
        perf = r["performance"]
        table.add_row(
            f"{r['rank']:,}", f"{r['number']:,}", *([Text(r["name"])] if named else []),
            *(Text(_value(r["params"][k])) for k in sweep["keys"]),
            *(_figure(f, perf[f]) for f in figures),
        )  # fmt: skip
    holds = {str(r["performance"]["buyAndHold"]) for r in summary["results"]}
    if len(holds) == 1 and results:
        bh = results[0]["performance"]["buyAndHold"]
        blanks = ["", "", *([""] if named else []), *("" for _ in sweep["keys"])]
        blanks[0] = "buy and hold"
        shown = {"excess": 0.0, "trades": 1, **bh}
        table.add_row(*blanks, *(_figure(f, shown.get(f)) for f in figures), style="dim")
    return table


def spread_line(summary: Mapping[str, Any]) -> Text:
    """The ranked figure's spread over every configuration and how many beat buy and
    hold, in words."""
    sweep = summary["sweep"]
    s = sweep["spread"]
    field, n = sweep["figure"], sweep["configurations"]
    label = _LABELS[field]
    parts = [f"{label} across the {n:,} configurations:"]
    if s["withValue"]:
        q = ", ".join(f"{name} {_figure(field, s[key])}" for name, key in
                      (("min", "min"), ("25%", "q1"), ("median", "median"), ("75%", "q3"),
                       ("max", "max")))  # fmt: skip
        parts.append(q)
        if s["withValue"] < n:
            parts.append(f"({n - s['withValue']:,} without a value)")
    else:
        parts.append("no configuration has a value")
    if s["buyAndHold"] is not None:
        parts.append(f"(buy and hold {_figure(field, s['buyAndHold'])})")
    text = " ".join(parts) + "."
    beat = s["beatBuyAndHold"]
    if beat is not None and field not in ("totalReturn", "excess"):
        text += f" Beat buy and hold: {beat:,} of {n:,} on {label},"
        text += f" {s['beatBuyAndHoldTotalReturn']:,} on total return."
    else:
        text += f" Beat buy and hold on total return: {s['beatBuyAndHoldTotalReturn']:,} of {n:,}."
    return Text(text)


def _print_wide(out: Console, table: Table) -> None:
    """Print ``table``; piped (80 columns), as wide as it needs, rather than cut short."""
    if out.is_terminal:
        out.print(table)
        return
    need = Measurement.get(out, out.options.update(width=1_000), table).maximum
    width = out.width
    out.width = max(width, min(need, 1_000))
    try:
        out.print(table)
    finally:
        out.width = width


def print_sweep(out: Console, summary: Mapping[str, Any], *, top: int = 10) -> None:
    """The period, the top ``top`` rows, the spread, the tie-break, the in-sample warning,
    validation, gaps, and the files written (or how to write every row)."""
    sweep = summary["sweep"]
    t = summary["timings"]
    n = sweep["configurations"]
    print_period(out, summary)
    took = t.get("configurations_s", 0.0)
    rate = f" ({n / took:,.0f} a second)" if took > 0 else ""
    out.print(
        Text(f"sweep {sweep['file']}: {n:,} configurations in {took:.2f} s on {t['workers']}"
             f" threads{rate}; the agents computed once, in {t.get('agents_s', 0.0):.2f} s;"
             f" numba's compiled code loaded in {t.get('numba_load_s', 0.0):.2f} s"),
        soft_wrap=True,
    )  # fmt: skip
    _print_wide(out, _ranking(summary, top))
    out.print(spread_line(summary), soft_wrap=True)
    out.print(Text(f"ranking: {_LABELS[sweep['figure']]}, {sweep['better']} first; ties:"
                   f" {sweep['tieBreak']}"), soft_wrap=True)  # fmt: skip
    out.print(Text.assemble(("warning: ", "bold yellow"), sweep["warning"]), soft_wrap=True)
    validation = summary.get("validation")
    if validation is not None and validation.get("rejectedRows"):
        out.print(validation_table(validation))
    gaps = summary["gaps"]
    out.print(
        Text(f"gaps: {len(gaps)} in the period, {summary['missingBars']:,} bars missing"
             if gaps else "gaps: none"),
        soft_wrap=True,
    )  # fmt: skip
    for item in summary.get("written", []):
        out.print(Text(f"wrote {item}"), soft_wrap=True)
    if not summary.get("written"):
        out.print(Text(f"every row: --results FILE.csv or FILE.parquet ({n:,} rows)"))
