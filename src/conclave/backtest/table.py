"""The backtest's printed summary: rich tables and lines drawn from the `summary` object.

Every text that comes from data (symbols, paths, reasons, messages) is printed literally:
it goes into `rich.text.Text`, never through rich markup, so a ``[x]`` in a file name or a
``[bold]`` in a message shows as written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text


def pct(x: Any) -> str:
    """A fraction as a signed percentage (``+1.23%``); ``-`` for None."""
    return "-" if x is None else f"{100.0 * float(x):+.2f}%"


def dd(x: Any) -> str:
    """A drawdown (a fraction) as a loss (``-12.34%``); ``-`` for None."""
    return "-" if x is None else f"{-100.0 * float(x):.2f}%"


def num(x: Any, digits: int = 2) -> str:
    """A number with thousands separators and ``digits`` decimals; ``-`` for None."""
    return "-" if x is None else f"{float(x):,.{digits}f}"


def _performance(perf: Mapping[str, Any]) -> Table:
    bh = perf["buyAndHold"]
    table = Table(title="performance", title_justify="left")
    for name in ("", "strategy", "buy and hold"):
        table.add_column(name, justify="left" if not name else "right")
    rows = [
        ("total return", pct(perf["totalReturn"]), pct(bh["totalReturn"])),
        ("CAGR", pct(perf["cagr"]), pct(bh["cagr"])),
        ("Sharpe", num(perf["sharpe"]), num(bh["sharpe"])),
        ("Sortino", num(perf["sortino"]), num(bh["sortino"])),
        ("max drawdown", dd(perf["maxDrawdown"]), dd(bh["maxDrawdown"])),
        ("win rate (sells)", pct(perf["winRate"]).lstrip("+"), ""),
        ("trades (fills)", f"{perf['trades']:,} ({perf['roundTrips']:,} round trips)", "1"),
        ("exposure: time in market", pct(perf["timeInMarket"]).lstrip("+"), "100.00%"),
        ("exposure: mean of equity", pct(perf["meanExposure"]).lstrip("+"), "100.00%"),
        ("fees paid", num(perf["feesPaid"]), ""),
        ("final equity", num(perf["finalEquity"]), num(bh["finalEquity"])),
    ]
    for row in rows:
        table.add_row(*row)
    return table


def _skill(skill: list[Mapping[str, Any]]) -> Table:
    table = Table(title="agent skill against the next bar's return", title_justify="left")
    for name in ("agent", "signals", "hit rate", "IC", "mean signed return"):
        table.add_column(name, justify="left" if name == "agent" else "right")
    for s in skill:
        table.add_row(
            Text(s["name"]),
            f"{s['signals']:,}",
            pct(s["hitRate"]).lstrip("+") if s["hitRate"] is not None else "-",
            num(s["ic"], 4),
            "-" if s["meanSignedReturn"] is None else f"{1e4 * s['meanSignedReturn']:+.2f} bp",
        )
    return table


def validation_table(validation: Mapping[str, Any]) -> Table:
    """One row per timeframe read (rows read and kept, rejected, duplicates merged, open bars
    dropped), each followed by a row per rejection reason (``validation`` as
    `HistoryValidation.to_json` gives it)."""
    table = Table(title="validation of the rows read", title_justify="left")
    for name in ("timeframe / reason", "read", "kept", "rejected", "merged", "unclosed"):
        table.add_column(name, justify="left" if name.startswith("timeframe") else "right")
    series = [("base", validation["base"]), *(("higher", h) for h in validation["higher"])]
    for role, s in series:
        table.add_row(
            Text(f"{s['timeframe']} ({role})"),
            f"{s['rowsRead']:,}",
            f"{s['rowsKept']:,}",
            f"{s['rejectedRows']:,}",
            f"{s['duplicatesMerged']:,}",
            f"{s['droppedUnclosed']:,}",
        )
        for reason, n in s["rejected"].items():
            table.add_row(Text(f"  {reason}"), "", "", f"{n:,}", "", "")
    return table


def print_period(out: Console, summary: Mapping[str, Any]) -> None:
    """The line that names what was tested: market, period, bar count and source."""
    label = " (SIMULATED)" if summary.get("simulated") else ""
    out.print(
        Text.assemble(
            (f"{summary['symbol']} {summary['timeframe']}", "bold"),
            f" from {summary['from']} to {summary['to']}: {summary['bars']:,} bars,"
            f" source {summary['source']}{label}",
        ),
        soft_wrap=True,
    )


def print_summary(out: Console, summary: Mapping[str, Any]) -> None:
    """The performance next to buy-and-hold, the agents' skill, validation, and the gaps."""
    perf = summary["performance"]
    print_period(out, summary)
    out.print(_performance(perf))
    out.print(_skill(summary["skill"]))
    validation = summary.get("validation")
    if validation is not None:
        out.print(validation_table(validation))
        resampled = validation.get("resampled") or []
        if resampled:
            built = ", ".join(resampled)
            out.print(Text(f"built from the validated base bars: {built}"), soft_wrap=True)
    gaps = summary["gaps"]
    if gaps:
        out.print(
            Text.assemble(
                ("gaps", "yellow"),
                f": {len(gaps)} in the period, {summary['missingBars']:,} bars missing"
                " (not filled: orders fill at the next bar that exists)",
            ),
            soft_wrap=True,
        )
    else:
        out.print("gaps: none", markup=False)
    t = summary["timings"]
    out.print(
        f"excess return over buy and hold: {pct(perf['excess'])}; backtest"
        f" took {t.get('total_s', 0.0):.3f} s: agents {t.get('agents_s', 0.0):.3f} s,"
        f" decision {t.get('decision_s', 0.0):.3f} s, account {t.get('account_s', 0.0):.3f} s",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def check_lines(summary: Mapping[str, Any]) -> list[Text]:
    """The checks' verdicts and the files written, one line each."""
    lines = []
    parity = summary.get("parity")
    if parity is not None:
        verdict = ("agrees", "green") if parity["ok"] else ("DIFFERS", "red")
        lines.append(
            Text.assemble(
                "parity with live: ",
                verdict,
                f" at {parity['bars']} bars, largest difference {parity['maxAbsDiff']:.3g}"
                f" (tolerance {parity['tolerance']:g}), {parity['mismatchCount']} status/action"
                " mismatches",
            )
        )
    look = summary.get("lookahead")
    if look is not None:
        verdict = ("none", "green") if look["ok"] else ("FOUND", "red")
        lines.append(
            Text.assemble(
                "lookahead: ",
                verdict,
                f"; {len(look['agents'])} agents recomputed on history cut at {look['cuts']} bars",
            )
        )
    for item in summary.get("written", []):
        lines.append(Text(f"wrote {item}"))
    return lines
