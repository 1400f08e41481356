"""Backtest figures, measured side by side in one run (issue 6; PERFORMANCE.md "Backtest").

For the real 45,024-bar BTC 1h file and the 65,741-bar BTC 5m file, prints:

- the whole nine-agent backtest (`run_backtest`: the eight analysis agents vectorized, the
  decision vectorized, the account and risk manager bar by bar), median of ``--repeat``
  runs, in seconds and bars/s, with and without loading the file (target: 45,024 bars in
  under 1 s);
- the vectorized agent pass alone (the eight `Agent.series` calls) in bars/s (target: at
  least 1 M bars/s) and each phase's share;
- a naive replay: the live in-process `Pipeline.run` called at every bar of a
  ``--naive-bars`` slice (gateway over the same file source, the agents' live `run`, the
  decision), in bars/s, and the ratios of the backtest to it (target: at least 500x).

What the result then costs to turn into figures, a chart and a report:
benchmarks/backtest_figures.py.

The account loop runs compiled (numba) where the tree has it; ``--json`` prints the BTC 1h
figures as JSON (with the pure-Python loop's too, where the tree has the choice), and
``--baseline SRC`` runs this script against the tree at SRC and this checkout alternately,
printing both side by side with the ratio (benchmarks/sidebyside.py):

    .venv/bin/python benchmarks/backtest.py [--repeat 5] [--naive-bars 400]
    mkdir -p /tmp/base && git archive eca77b4 | tar -x -C /tmp/base   # before issue 16
    .venv/bin/python benchmarks/backtest.py --baseline /tmp/base/src [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

import conclave
from conclave.backtest.checks import TraceReader
from conclave.backtest.engine import run_backtest
from conclave.backtest.history import History, load_history
from conclave.backtest.result import BacktestResult
from conclave.backtest.settings import BacktestSettings
from conclave.backtest.signals import agent_series
from conclave.market.gateway import MarketGateway
from conclave.market.sources.files import FileSource
from conclave.pipeline import Pipeline
from conclave.pipeline.orchestrator import default_agents
from conclave.timeframes import iso_ms

ROOT = Path(__file__).resolve().parents[1]
CANDLES = ROOT.parent / "shared/data/candles"
FILES = {
    "BTC 1h": ("binance_BTCUSDT_1h_20170817-20221011.csv", "1h"),
    "BTC 5m": ("binance_BTCUSDT_5m_20201201-20210717.csv", "5m"),
}
console = Console(width=120)


@dataclass(frozen=True, slots=True)
class Figures:
    bars: int
    load_s: float
    total_s: float
    agents_s: float
    decision_s: float
    account_s: float
    naive_bars: int
    naive_s: float
    first_s: float  # the first run in the process (numba loads or compiles the loop)
    python_account_s: float | None  # the pure-Python reference loop, where there is one
    two_thread_agents_s: float | None  # the agent phase on two threads, where there is a choice

    @property
    def naive_rate(self) -> float:
        return self.naive_bars / self.naive_s if self.naive_s else float("nan")


async def _load(path: Path, tf: str, settings: BacktestSettings) -> tuple[FileSource, History]:
    source = FileSource(path)
    history = await load_history(
        source, "BTCUSDT", tf, default_agents(), start_ms=None, end_ms=None, now_ms=0,
        resample_policy=settings.resample,
    )  # fmt: skip
    return source, history


async def _naive(
    source: FileSource, result: BacktestResult, settings: BacktestSettings, bars: int
) -> float:
    """Seconds for the live pipeline at each of ``bars`` consecutive bars mid-history."""
    pipeline = Pipeline(
        MarketGateway(source, resample=settings.resample),
        account_reader=TraceReader(result, settings),
        decision_config=settings.decision,
        parallel=False,
    )
    start = len(result) // 2
    times = result.close_time[start : start + bars].tolist()
    await pipeline.run(
        "bench", "BTCUSDT", result.timeframe, as_of_ms=times[0], now_iso=iso_ms(times[0])
    )  # fmt: skip  (warm-up)
    t0 = time.perf_counter()
    for t in times:
        await pipeline.run("bench", "BTCUSDT", result.timeframe, as_of_ms=t, now_iso=iso_ms(t))
    took = time.perf_counter() - t0
    await pipeline.aclose()
    return took


def measure(name: str, repeat: int, naive_bars: int) -> Figures:
    file, tf = FILES[name]
    settings = BacktestSettings(resample="resample")  # one file: higher timeframes from it
    loads, totals, agents, decisions, accounts = [], [], [], [], []
    source, history = asyncio.run(_load(CANDLES / file, tf, settings))
    t0 = time.perf_counter()
    run_backtest(history, default_agents(), settings)
    first = time.perf_counter() - t0
    python_s: list[float] = []
    if "loop" in inspect.signature(run_backtest).parameters:
        for _ in range(max(1, repeat // 2)):
            ref = run_backtest(history, default_agents(), settings, loop="python")
            python_s.append(ref.timings["account_s"])
    two_threads: list[float] = []  # interleaved with the runs below, where there is a choice
    threads = "workers" in inspect.signature(agent_series).parameters
    result = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        source, history = asyncio.run(_load(CANDLES / file, tf, settings))
        t1 = time.perf_counter()
        result = run_backtest(history, default_agents(), settings)
        t2 = time.perf_counter()
        loads.append(t1 - t0)
        totals.append(t2 - t1)
        agents.append(result.timings["agents_s"])
        decisions.append(result.timings["decision_s"])
        accounts.append(result.timings["account_s"])
        if threads:
            t0 = time.perf_counter()
            agent_series(history, default_agents(), workers=2)
            two_threads.append(time.perf_counter() - t0)
    assert result is not None
    assert source is not None
    naive_s = asyncio.run(_naive(source, result, settings, naive_bars)) if naive_bars else 0.0
    med = statistics.median
    return Figures(len(result), med(loads), med(totals), med(agents), med(decisions),
                   med(accounts), naive_bars, naive_s, first,
                   med(python_s) if python_s else None,
                   med(two_threads) if two_threads else None)  # fmt: skip


def as_json(f: Figures) -> dict[str, float | str]:
    """The BTC 1h figures for `sidebyside` (ms, bars/s, us a bar)."""
    out: dict[str, float | str] = {
        "whole backtest (ms)": 1e3 * f.total_s,
        "whole backtest (M bars/s)": f.bars / f.total_s / 1e6,
        "agents, vectorized (ms)": 1e3 * f.agents_s,
        "decision, vectorized (ms)": 1e3 * f.decision_s,
        "account loop (ms)": 1e3 * f.account_s,
        "account loop (us a bar)": 1e6 * f.account_s / f.bars,
        "load file (ms)": 1e3 * f.load_s,
        "first run in the process (ms)": 1e3 * f.first_s,
        "package": str(Path(conclave.__file__).parent),
    }
    if f.python_account_s is not None:
        out["account loop, python reference (us a bar)"] = 1e6 * f.python_account_s / f.bars
    if f.two_thread_agents_s is not None:
        out["agents on two threads (ms)"] = 1e3 * f.two_thread_agents_s
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--naive-bars", type=int, default=400, help="0: skip the naive replay")
    parser.add_argument("--json", action="store_true", help="BTC 1h figures as JSON")
    parser.add_argument("--baseline", type=Path, help="a source tree to compare with")
    parser.add_argument("--rounds", type=int, default=3, help="with --baseline")
    args = parser.parse_args()
    if not CANDLES.is_dir():
        sys.exit(f"real market data not found at {CANDLES}")
    if args.json:
        print(json.dumps(as_json(measure("BTC 1h", args.repeat, args.naive_bars))))
        return
    console.print(f"$ {shlex.join(['python', *sys.argv])}  (load {os.getloadavg()[0]:.2f})")
    if args.baseline is not None:
        from sidebyside import side_by_side

        rates = ("whole backtest (M bars/s)",)
        side_by_side(Path(__file__), ["--repeat", str(args.repeat), "--naive-bars", "0"],
                     args.baseline, rounds=args.rounds, console=console,
                     higher_is_better=rates)  # fmt: skip
        return
    rows = {name: measure(name, args.repeat, args.naive_bars) for name in FILES}

    table = Table(title=f"backtest, median of {args.repeat} runs (2-core machine)")
    for col in ("", *rows):
        table.add_column(col, justify="left" if not col else "right")

    def add(label: str, fmt: str, get: object) -> None:
        table.add_row(label, *(fmt.format(get(f)) for f in rows.values()))  # type: ignore[operator]

    add("bars", "{:,}", lambda f: f.bars)
    add("load file (s)", "{:.3f}", lambda f: f.load_s)
    add("whole backtest (s)", "{:.3f}", lambda f: f.total_s)
    add("  agents, vectorized (s)", "{:.3f}", lambda f: f.agents_s)
    add("  decision, vectorized (s)", "{:.3f}", lambda f: f.decision_s)
    add("  account + risk, bar by bar (s)", "{:.3f}", lambda f: f.account_s)
    add("whole backtest (bars/s)", "{:,.0f}", lambda f: f.bars / f.total_s)
    add("load + backtest (bars/s)", "{:,.0f}", lambda f: f.bars / (f.total_s + f.load_s))
    add("agent pass (bars/s)", "{:,.0f}", lambda f: f.bars / f.agents_s)
    add("naive live replay (bars/s)", "{:,.0f}", lambda f: f.naive_rate)
    add("agent pass / naive", "{:,.0f}x", lambda f: f.bars / f.agents_s / f.naive_rate)
    add("whole backtest / naive", "{:,.0f}x", lambda f: f.bars / f.total_s / f.naive_rate)
    console.print(table)
    btc = rows["BTC 1h"]
    console.print(
        f"targets: 45,024 bars in 45 ms or less (1 M bars/s) -> {btc.total_s * 1e3:.1f} ms"
        f" ({(btc.total_s + btc.load_s) * 1e3:.1f} ms with loading);"
        f" account loop <= 0.5 us a bar -> {btc.account_s / btc.bars * 1e6:.3f} us;"
        f" agent pass >= 1 M bars/s -> {btc.bars / btc.agents_s / 1e6:.2f} M;"
        f" >= 500x naive -> {btc.bars / btc.agents_s / btc.naive_rate:,.0f}x (agent pass),"
        f" {btc.bars / btc.total_s / btc.naive_rate:,.0f}x (whole backtest)"
    )


if __name__ == "__main__":
    main()
