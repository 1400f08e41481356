"""What a backtest result costs to turn into figures, a summary, a chart and a report.

For the real 45,024-bar BTC 1h file and the 65,741-bar BTC 5m file, runs the nine-agent
backtest once, then times on its result (median of ``--repeat`` runs after one warm-up):

- `performance` (conclave.backtest.metrics): the headline figures and buy-and-hold;
- `agent_skill` (conclave.backtest.skill): hit rate, IC and buckets per agent;
- `summary` (conclave.backtest.summary): the CLI's ``--json`` object;
- `plot_png` (conclave.backtest.chart): the 1200 x 700 PNG, lines downsampled;
- `write_html` (conclave.backtest.report): the whole page, chart included.

These were timed assertions in tests/backtest (bounds on a 100,000-bar synthetic result:
performance 0.1 s, agent_skill 0.5 s, summary 0.5 s, plot_png 10 s); tests now state only
behaviour, and the figures are printed here.

    .venv/bin/python benchmarks/backtest_figures.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from conclave.backtest.chart import plot_png
from conclave.backtest.engine import run_backtest
from conclave.backtest.history import load_history
from conclave.backtest.metrics import performance
from conclave.backtest.report import write_html
from conclave.backtest.result import BacktestResult
from conclave.backtest.settings import BacktestSettings
from conclave.backtest.skill import agent_skill
from conclave.backtest.summary import summary
from conclave.market.sources.files import FileSource
from conclave.pipeline.orchestrator import default_agents

ROOT = Path(__file__).resolve().parents[1]
CANDLES = ROOT.parent / "shared/data/candles"
FILES = {
    "BTC 1h": ("binance_BTCUSDT_1h_20170817-20221011.csv", "1h"),
    "BTC 5m": ("binance_BTCUSDT_5m_20201201-20210717.csv", "5m"),
}
#: The bounds the tests used to assert on 100,000 synthetic bars (seconds).
FORMER_BOUNDS = {"performance": 0.1, "agent_skill": 0.5, "summary": 0.5, "plot_png": 10.0}
console = Console(width=120)


def _result(file: str, tf: str) -> BacktestResult:
    settings = BacktestSettings(resample="resample")  # one file: higher timeframes from it
    history = asyncio.run(
        load_history(
            FileSource(CANDLES / file), "BTCUSDT", tf, default_agents(),
            start_ms=None, end_ms=None, now_ms=0, resample_policy=settings.resample,
        )
    )  # fmt: skip
    return run_backtest(history, default_agents(), settings)


def _median_s(call: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``call`` over ``repeat`` runs, after one warm-up run."""
    call()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(result: BacktestResult, repeat: int, out: Path) -> dict[str, float]:
    """Seconds per figure-making call on ``result`` (files written under ``out``)."""
    return {
        "performance": _median_s(lambda: performance(result), repeat),
        "agent_skill": _median_s(lambda: agent_skill(result), repeat),
        "summary": _median_s(lambda: summary(result), repeat),
        "plot_png": _median_s(lambda: plot_png(result, out / "chart.png"), repeat),
        "write_html": _median_s(lambda: write_html(result, out / "report.html"), repeat),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if not CANDLES.is_dir():
        sys.exit(f"real market data not found at {CANDLES}")
    console.print(f"$ {shlex.join(['python', *sys.argv])}")
    bars: dict[str, int] = {}
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (file, tf) in FILES.items():
            result = _result(file, tf)
            bars[name] = len(result)
            rows[name] = measure(result, args.repeat, Path(tmp))

    table = Table(title=f"backtest figures, median of {args.repeat} runs (2-core machine)")
    table.add_column("")
    for name in rows:
        table.add_column(f"{name} (s)", justify="right")
        table.add_column(f"{name} (M bars/s)", justify="right")
    table.add_column("former test bound, 100k bars (s)", justify="right")
    table.add_row("bars", *(x for n in rows for x in (f"{bars[n]:,}", "")), "100,000")
    for call in next(iter(rows.values())):
        cells = [
            x
            for n, figures in rows.items()
            for x in (f"{figures[call]:.4f}", f"{bars[n] / figures[call] / 1e6:.2f}")
        ]
        bound = FORMER_BOUNDS.get(call)
        table.add_row(call, *cells, "—" if bound is None else f"{bound:g}")
    console.print(table)


if __name__ == "__main__":
    main()
