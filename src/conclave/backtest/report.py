"""The backtest report: one self-contained HTML page.

`write_html` puts the header, the performance and buy-and-hold figures, the chart
(`chart.plot_png`, embedded as a data URI), the per-agent skill, the correlation of the
agents' scores (a table coloured blue for positive, red for negative, deeper the stronger),
gaps, trades and timings in one HTML file with no external assets and no JavaScript.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from conclave.backtest.chart import chart_title, plot_png
from conclave.backtest.export import iso_array
from conclave.backtest.metrics import Headline, Performance, performance, period_years
from conclave.backtest.result import BacktestResult, Fill
from conclave.backtest.skill import AgentSkill, agent_skill, score_correlation
from conclave.backtest.summary import period_iso, plain

#: Trades listed in full up to this many; beyond it, the first and last `TRADES_EDGE`.
MAX_TRADES_SHOWN = 100
TRADES_EDGE = 50

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; color: #222; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; }
h1 { margin-bottom: .2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.meta { color: #555; }
.sim { background: #b3261e; color: #fff; padding: .1em .5em; border-radius: 3px;
       font-weight: bold; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
tr.skip td { text-align: center; color: #777; font-style: italic; }
img { max-width: 100%; height: auto; }
.muted { color: #777; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _pct(x: float | None, digits: int = 2) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{100.0 * x:.{digits}f}%"


def _num(x: float | None, digits: int = 2) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:,.{digits}f}"


def _bp(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{1e4 * x:.2f}"


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(plain(value), sort_keys=True)


def _table(head: Sequence[str], rows: Sequence[Sequence[str] | str], left: int = 1) -> str:
    """An HTML table of already-escaped cells, the first ``left`` columns left-aligned; a
    row given as one string is inserted as it is (a whole ``<tr>``)."""

    def cells(tag: str, row: Sequence[str]) -> str:
        return "".join(
            f'<{tag} class="l">{c}</{tag}>' if j < left else f"<{tag}>{c}</{tag}>"
            for j, c in enumerate(row)
        )

    body = "".join(r if isinstance(r, str) else f"<tr>{cells('td', r)}</tr>" for r in rows)
    return f"<table><tr>{cells('th', head)}</tr>{body}</table>"


def _kv_table(items: Mapping[str, Any]) -> str:
    rows = [[_e(k), _e(_json_text(v))] for k, v in items.items()]
    return _table(["key", "value"], rows, left=2) if rows else '<p class="muted">none</p>'


def _performance_html(perf: Performance) -> str:
    bh: Headline = perf.buy_and_hold
    rows = [
        ["Total return", _pct(perf.total_return), _pct(bh.total_return)],
        ["CAGR", _pct(perf.cagr), _pct(bh.cagr)],
        ["Sharpe (annualised)", _num(perf.sharpe), _num(bh.sharpe)],
        ["Sortino (annualised)", _num(perf.sortino), _num(bh.sortino)],
        ["Max drawdown", _pct(perf.max_drawdown), _pct(bh.max_drawdown)],
        ["Final equity", _num(perf.final_equity), _num(bh.final_equity)],
        ["Excess return vs buy &amp; hold", _pct(perf.excess), "—"],
        ["Win rate (sells)", _pct(perf.win_rate, 1), "—"],
        ["Fills (buys / sells)", f"{perf.trades} ({perf.buys} / {perf.sells})", "1"],
        ["Round trips (closing sells)", str(perf.round_trips), "—"],
        ["Time in market", _pct(perf.time_in_market, 1), "100.0%"],
        ["Mean exposure", _pct(perf.mean_exposure, 1), "—"],
        ["Fees paid", _num(perf.fees_paid), "—"],
    ]
    return _table(["", "Strategy", "Buy &amp; hold"], rows)


def _skill_html(skills: Sequence[AgentSkill]) -> str:
    if not skills:
        return '<p class="muted">no agents</p>'
    head = ["Agent", "Signals", "Hit rate", "IC", "Mean signed return (bp)"]
    head += [
        f"conf [{b.lower:g}, {b.upper:g}{']' if k == len(skills[0].buckets) - 1 else ')'}"
        for k, b in enumerate(skills[0].buckets)
    ]
    rows = []
    for s in skills:
        row = [
            _e(s.name),
            str(s.signals),
            _pct(s.hit_rate, 1),
            _num(s.ic, 3),
            _bp(s.mean_signed_return),
        ]
        row += [
            f"{b.count} · {_pct(b.hit_rate, 1)} · {_bp(b.mean_signed_return)} bp"
            if b.count
            else "0"
            for b in s.buckets
        ]
        rows.append(row)
    note = (
        '<p class="muted">Against the next bar\'s return; hit rate leaves out bars with a zero'
        " return; IC is Spearman's rank correlation. Buckets: signals · hit rate · mean signed"
        " return.</p>"
    )
    return _table(head, rows) + note


def _corr_cell(r: float | None) -> str:
    """A correlation cell: blue for positive, red for negative, opacity |r|."""
    if r is None or not math.isfinite(r):
        return '<td class="muted">—</td>'
    rgb = "33, 102, 172" if r >= 0 else "178, 24, 43"
    ink = "#fff" if abs(r) >= 0.6 else "#222"
    return (
        f'<td style="background: rgba({rgb}, {abs(r):.2f}); color: {ink}"'
        f' title="r = {r:.4f}">{r:+.2f}</td>'
    )


def _correlation_html(matrix: Mapping[str, Mapping[str, float | None]]) -> str:
    if not matrix:
        return '<p class="muted">no directional agents</p>'
    names = list(matrix)
    head = "".join(f"<th>{_e(b)}</th>" for b in names)
    rows = "".join(
        f'<tr><th class="l">{_e(a)}</th>'
        + "".join(_corr_cell(matrix[a].get(b)) for b in names)
        + "</tr>"
        for a in names
    )
    note = (
        "<p class=\"muted\">Pearson's r of two agents' scores over the bars where both are"
        " usable; near 1 the two cast one vote twice, near -1 they read the same moves"
        " opposite ways; — where undefined (no data, or a constant score).</p>"
    )
    return f'<table><tr><th class="l"></th>{head}</tr>{rows}</table>' + note


def _gaps_html(result: BacktestResult) -> str:
    if not result.gaps:
        return "<p>no gaps</p>"
    after = iso_array([g.after_open_ms for g in result.gaps])
    before = iso_array([g.before_open_ms for g in result.gaps])
    rows = [
        [_e(a), _e(b), str(g.missing_bars)]
        for a, b, g in zip(after.tolist(), before.tolist(), result.gaps, strict=True)
    ]
    total = f"<p>{len(result.gaps)} gaps, {result.missing_bars} missing bars in all.</p>"
    return total + _table(["last bar before", "first bar after", "missing bars"], rows, left=2)


def _trade_rows(fills: Sequence[Fill]) -> list[list[str]]:
    if not fills:
        return []
    times = iso_array([f.time_ms for f in fills]).tolist()
    decided = iso_array([f.decision_ms for f in fills]).tolist()
    return [
        [
            _e(t),
            _e(d),
            _e(f.side),
            f"{f.qty:.8g}",
            f"{f.price:,.8g}",
            _num(f.notional),
            _num(f.fee, 4),
            _num(f.realised_pnl),
            _e(f.reason),
        ]
        for t, d, f in zip(times, decided, fills, strict=True)
    ]


def _trades_html(result: BacktestResult) -> str:
    fills = result.fills
    if not fills:
        return "<p>no trades</p>"
    head = [
        "fill time",
        "decision time",
        "side",
        "qty",
        "price",
        "notional",
        "fee",
        "realised P&amp;L",
        "reason",
    ]
    if len(fills) <= MAX_TRADES_SHOWN:
        return f"<p>{len(fills)} fills.</p>" + _table(head, _trade_rows(fills), left=3)
    skipped = len(fills) - 2 * TRADES_EDGE
    rows: list[Sequence[str] | str] = [*_trade_rows(fills[:TRADES_EDGE])]
    rows.append(
        f'<tr class="skip"><td colspan="{len(head)}">… {skipped} fills not shown …</td></tr>'
    )
    rows += _trade_rows(fills[-TRADES_EDGE:])
    note = f"<p>{len(fills)} fills; the first and last {TRADES_EDGE} are listed.</p>"
    return note + _table(head, rows, left=3)


def write_html(
    result: BacktestResult,
    path: str | Path,
    *,
    png_path: str | Path | None = None,
    parity: Mapping[str, Any] | None = None,
) -> Path:
    """Write the report to ``path`` as one self-contained HTML file and return the path.

    The chart is written to ``png_path`` (default: ``path`` with the suffix ``.png``) and
    embedded as a base64 data URI; ``parity`` (live versus backtest check) is shown as a
    small section when given. Every text from the result is HTML-escaped.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    png = plot_png(result, Path(png_path) if png_path is not None else p.with_suffix(".png"))
    image = base64.b64encode(png.read_bytes()).decode("ascii")
    perf = performance(result)
    skills = agent_skill(result)
    start, end = period_iso(result)
    years = period_years(result)

    sim = ' <span class="sim">SIMULATED</span>' if result.simulated else ""
    title = f"{result.symbol} {result.timeframe} backtest"
    meta = (
        f"source <b>{_e(result.source)}</b> · {_e(start or '—')} → {_e(end or '—')}"
        f" ({years:.2f} years) · {len(result)} bars · {result.missing_bars} missing bars"
        f" · starting balance {_num(result.starting_balance)} · fee rate"
        f" {result.fee_rate:g} · slippage {result.slippage:g}"
    )
    sections = [
        f"<h1>{_e(title)}{sim}</h1>",
        f'<p class="meta">{meta}</p>',
        "<h2>Performance</h2>",
        _performance_html(perf),
        "<h2>Equity and drawdown</h2>",
        f'<img alt="{_e(chart_title(result))}: equity and drawdown" '
        f'src="data:image/png;base64,{image}">',
        "<h2>Agent skill</h2>",
        _skill_html(skills),
        "<h2>Score correlation</h2>",
        _correlation_html(score_correlation(result)),
        "<h2>Gaps</h2>",
        _gaps_html(result),
        "<h2>Trades</h2>",
        _trades_html(result),
        "<h2>Settings</h2>",
        _kv_table(result.settings),
        "<h2>Timings (s)</h2>",
        _table(
            ["phase", "seconds"],
            [[_e(k), f"{v:.3f}"] for k, v in result.timings.items()],
        )
        if result.timings
        else '<p class="muted">none</p>',
    ]
    if parity is not None:
        sections += ["<h2>Parity</h2>", _kv_table(parity)]
    doc = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )
    p.write_text(doc, encoding="utf-8")
    return p
