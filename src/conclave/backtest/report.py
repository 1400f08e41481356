"""The backtest report: a chart (PNG), one self-contained HTML page and the JSON summary.

`plot_png` draws the equity of the strategy and of buy-and-hold (same starting balance) over
their drawdowns (percent), gaps shaded; `write_html` puts the header, the performance and
buy-and-hold figures, the chart (embedded as a data URI), the per-agent skill, gaps, trades
and timings in one HTML file with no external assets and no JavaScript; `summary` is the
CLI's ``--json`` object (plain JSON types only, NaN as null).
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from conclave.backtest.export import iso_array
from conclave.backtest.metrics import (
    Headline,
    Performance,
    buy_and_hold_equity,
    drawdown,
    performance,
    period_years,
)
from conclave.backtest.result import F64, BacktestResult, Fill
from conclave.backtest.skill import AgentSkill, agent_skill

#: Points per plotted line at most (each bucket keeps its min and max).
MAX_PLOT_POINTS = 4000
#: Trades listed in full up to this many; beyond it, the first and last `TRADES_EDGE`.
MAX_TRADES_SHOWN = 100
TRADES_EDGE = 50
FIGSIZE = (12.0, 7.0)  # inches
DPI = 100


# ---------------------------------------------------------------- plain JSON


def plain(value: Any) -> Any:
    """``value`` with only JSON types: numpy scalars and arrays unwrapped, tuples as lists,
    mapping keys as text, NaN/inf as None, objects with ``to_json`` converted, anything
    else as its text."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return plain(value.item())
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if hasattr(value, "to_json"):
        return plain(value.to_json())
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _period(result: BacktestResult) -> tuple[str | None, str | None]:
    if len(result) == 0:
        return None, None
    start = str(iso_array([int(result.open_time[0])])[0])
    end = str(iso_array([int(result.close_time[-1])])[0])
    return start, end


def summary(
    result: BacktestResult,
    *,
    parity: Mapping[str, Any] | None = None,
    lookahead: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything about the run as one plain-JSON object (camelCase keys): symbol,
    timeframe, source, simulated, from/to (ISO, first open to last close), bars,
    performance (with buyAndHold), skill, gaps and missingBars, fills (count), timings
    (seconds), settings, and parity/lookahead when given."""
    start, end = _period(result)
    out: dict[str, Any] = {
        "symbol": result.symbol,
        "timeframe": result.timeframe,
        "source": result.source,
        "simulated": bool(result.simulated),
        "from": start,
        "to": end,
        "bars": len(result),
        "performance": performance(result).to_json(),
        "skill": [s.to_json() for s in agent_skill(result)],
        "gaps": [g.to_json() for g in result.gaps],
        "missingBars": result.missing_bars,
        "fills": len(result.fills),
        "timings": dict(result.timings),
        "settings": dict(result.settings),
    }
    if parity is not None:
        out["parity"] = dict(parity)
    if lookahead is not None:
        out["lookahead"] = dict(lookahead)
    result_json: dict[str, Any] = plain(out)
    return result_json


# ---------------------------------------------------------------- chart


def minmax_indices(y: F64, max_points: int = MAX_PLOT_POINTS) -> npt.NDArray[np.int64]:
    """Sorted indices of at most ~``max_points`` points of ``y`` that keep each bucket's
    minimum and maximum (and the first and last point): all of them when ``y`` is short."""
    n = int(y.size)
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    k = -(-n // max(1, max_points // 2))  # bucket length
    nb = -(-n // k)
    padded = np.concatenate([y, np.full(nb * k - n, y[-1])]).reshape(nb, k)
    base = np.arange(nb, dtype=np.int64) * k
    lo = base + np.nanargmin(np.where(np.isnan(padded), np.inf, padded), axis=1)
    hi = base + np.nanargmax(np.where(np.isnan(padded), -np.inf, padded), axis=1)
    idx = np.concatenate([lo, hi, np.array([0, n - 1], dtype=np.int64)])
    out: npt.NDArray[np.int64] = np.unique(np.minimum(idx, n - 1))
    return out


def _title(result: BacktestResult) -> str:
    text = f"{result.symbol} · {result.timeframe} · {result.source}"
    return text + " · SIMULATED" if result.simulated else text


def plot_png(result: BacktestResult, path: str | Path) -> Path:
    """Write the chart to ``path`` (PNG, 1200 x 700 px): equity of the strategy and of
    buy-and-hold above, their drawdowns (%) below, sharing the date axis; gaps shaded.
    Lines are downsampled to about `MAX_PLOT_POINTS` points (min and max per bucket)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    from matplotlib.figure import Figure

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax_eq, ax_dd = fig.subplots(2, 1, sharex=True, height_ratios=(3.0, 1.3))
    fig.suptitle(_title(result), fontsize=13)

    n = len(result)
    if n:
        times = np.asarray(result.open_time, dtype=np.int64).astype("datetime64[ms]")
        x = mdates.date2num(times)  # type: ignore[no-untyped-call]
        equity = np.asarray(result.equity, dtype=np.float64)
        bh = buy_and_hold_equity(result)
        start = result.starting_balance
        lines = (
            (ax_eq, equity, "strategy", "#1f5fa8"),
            (ax_eq, bh, "buy & hold", "#9a9a9a"),
            (ax_dd, -100.0 * drawdown(equity, start), "strategy", "#1f5fa8"),
            (ax_dd, -100.0 * drawdown(bh, start), "buy & hold", "#9a9a9a"),
        )
        for ax, y, label, color in lines:
            i = minmax_indices(y)
            width = 1.2 if label == "strategy" else 1.0
            ax.plot(x[i], y[i], label=label, color=color, linewidth=width)
            if ax is ax_dd:
                ax.fill_between(x[i], y[i], 0.0, color=color, alpha=0.15, linewidth=0)
        ax_eq.axhline(start, color="#444444", linewidth=0.6, linestyle=":")
        if result.gaps:
            t0 = np.array([g.after_open_ms for g in result.gaps], dtype=np.int64)
            t1 = np.array([g.before_open_ms for g in result.gaps], dtype=np.int64)
            g0 = mdates.date2num(t0.astype("datetime64[ms]"))  # type: ignore[no-untyped-call]
            g1 = mdates.date2num(t1.astype("datetime64[ms]"))  # type: ignore[no-untyped-call]
            # at least 0.2% of the axis wide, so that a short gap in a long run shows
            width = np.maximum(g1 - g0, 0.002 * float(x[-1] - x[0]))
            spans = list(zip(g0.tolist(), width.tolist(), strict=True))
            for k, ax in enumerate((ax_eq, ax_dd)):
                ax.broken_barh(
                    spans,
                    (0.0, 1.0),
                    transform=ax.get_xaxis_transform(),
                    color="#e07b39",
                    alpha=0.25,
                    label="gap" if k == 0 else None,
                )
        locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
        ax_dd.xaxis.set_major_locator(locator)
        ax_dd.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    ax_eq.set_ylabel("equity (quote)")
    ax_dd.set_ylabel("drawdown (%)")
    ax_eq.grid(True, alpha=0.3)
    ax_dd.grid(True, alpha=0.3)
    if n:
        ax_eq.legend(loc="upper left", frameon=False)
    fig.savefig(p, format="png", dpi=DPI)
    return p


# ---------------------------------------------------------------- HTML

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
    start, end = _period(result)
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
        f'<img alt="{_e(_title(result))}: equity and drawdown" '
        f'src="data:image/png;base64,{image}">',
        "<h2>Agent skill</h2>",
        _skill_html(skills),
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
