"""Parameter sweep figures (issue 16 item 5): 1,000 configurations over 45,024 bars.

Over the real 45,024-bar BTC 1h file, runs the grid of examples/sweep.toml (5 x 4 x 2 x 5 x 5
= 1,000 configurations: thresholds, a weight, position size, drawdown limits) with
`run_sweep` and prints, median of ``--repeat`` runs (loading the file apart):

- the whole sweep (the agents once, then each configuration's decision, account loop and
  figures), in seconds, against the target of 10 s on this 2-core machine, and its CPU
  time (on a loaded machine the wall time grows, the CPU time much less);
- its parts: the agents once, the configurations (and per configuration, in ms), the
  figures' assembly;
- the same on one thread, and the first run in the process (numba loads or compiles);
- what the sweep saves: a plain `run_backtest` per configuration (agents included), timed
  on ``--plain`` configurations and scaled to 1,000.

    .venv/bin/python benchmarks/sweep.py [--repeat 3] [--plain 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from conclave.backtest.engine import run_backtest
from conclave.backtest.history import History, load_history
from conclave.backtest.settings import BacktestSettings
from conclave.backtest.sweep import default_workers, run_sweep
from conclave.backtest.sweep_file import read_sweep
from conclave.backtest.sweep_space import SweepConfig
from conclave.market.sources.files import FileSource
from conclave.pipeline.orchestrator import default_agents

ROOT = Path(__file__).resolve().parents[1]
CANDLES = ROOT.parent / "shared/data/candles"
FILE = "binance_BTCUSDT_1h_20170817-20221011.csv"
EXAMPLE = ROOT / "examples/sweep.toml"
TARGET_S = 10.0
console = Console(width=120)


def _load(settings: BacktestSettings) -> History:
    load = load_history(FileSource(CANDLES / FILE), "BTCUSDT", "1h", default_agents(),
                        start_ms=None, end_ms=None, now_ms=0,
                        resample_policy=settings.resample)  # fmt: skip
    return asyncio.run(load)


def _grid(settings: BacktestSettings) -> list[SweepConfig]:
    """The example's grid (its list entries left out): 1,000 configurations."""
    spec = read_sweep(EXAMPLE)
    configs = spec.configurations(settings)
    return [c for c in configs if c.number > len(spec.entries)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--plain", type=int, default=10, help="plain backtests timed (0: skip)")
    args = parser.parse_args()
    if not CANDLES.is_dir():
        sys.exit(f"real market data not found at {CANDLES}")
    console.print(f"$ {shlex.join(['python', *sys.argv])}  (load {os.getloadavg()[0]:.2f})")
    settings = BacktestSettings(resample="resample")  # one file: higher timeframes from it
    t0 = time.perf_counter()
    history = _load(settings)
    load_s = time.perf_counter() - t0
    configs = _grid(settings)
    agents = default_agents()
    bars = len(history.period)

    t0 = time.perf_counter()
    run_sweep(history, agents, configs[:4])
    first_s = time.perf_counter() - t0
    workers = default_workers()
    runs: dict[int, list[dict[str, float]]] = {workers: [], 1: []}
    for _ in range(args.repeat):
        for w in runs:
            t0, c0 = time.perf_counter(), time.process_time()
            found = run_sweep(history, agents, configs, workers=w)
            took = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
            runs[w].append({**found.timings, **took})
    plain_s = 0.0
    if args.plain:
        t0 = time.perf_counter()
        for c in configs[:: max(1, len(configs) // args.plain)][: args.plain]:
            run_backtest(history, agents, c.settings)
        plain_s = (time.perf_counter() - t0) / args.plain

    def med(w: int, key: str) -> float:
        return statistics.median(r[key] for r in runs[w])

    table = Table(title=f"sweep of {len(configs):,} configurations over {bars:,} BTC 1h bars,"
                        f" median of {args.repeat} (2-core machine)")  # fmt: skip
    table.add_column("")
    for w in runs:
        table.add_column(f"{w} thread{'s' if w > 1 else ''}", justify="right")
    rows = [
        ("whole sweep, without loading (s)", "wall_s", "{:.2f}", 1.0),
        ("  its CPU time, all threads (s)", "cpu_s", "{:.2f}", 1.0),
        ("  agents, once (s)", "agents_s", "{:.3f}", 1.0),
        ("  numba's compiled kernels loaded (s)", "numba_load_s", "{:.3f}", 1.0),
        ("  configurations (s)", "configurations_s", "{:.2f}", 1.0),
        ("  figures' assembly (s)", "figures_s", "{:.3f}", 1.0),
        ("per configuration (ms)", "configurations_s", "{:.2f}", 1e3 / len(configs)),
        ("configurations a second", "configurations_s", "{:,.0f}", -1.0),
    ]
    for label, key, fmt, scale in rows:
        cells = []
        for w in runs:
            v = med(w, key)
            cells.append(fmt.format(len(configs) / v if scale < 0 else v * scale))
        table.add_row(label, *cells)
    console.print(table)
    whole = med(workers, "wall_s")
    verdict = "met" if whole <= TARGET_S else "MISSED"
    console.print(
        f"target: {len(configs):,} configurations over {bars:,} bars in {TARGET_S:.0f} s or"
        f" less -> {whole:.2f} s on {workers} threads ({verdict}); loading the file took"
        f" {load_s:.2f} s apart; the first run in the process (4 configurations, numba"
        f" loading or compiling) {first_s:.2f} s"
    )
    if plain_s:
        console.print(
            f"a plain run_backtest per configuration: {plain_s * 1e3:.1f} ms -> 1,000 would"
            f" take {plain_s * len(configs):.1f} s ({plain_s * len(configs) / whole:.0f}x the"
            " sweep)"
        )


if __name__ == "__main__":
    main()
