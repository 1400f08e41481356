"""Sim-source figures: how long 1,000 bars take from a cold source and from its cache.

For each timeframe (``--timeframes``), a fresh `SimSource` (seed 7, a fixed clock at
2023-11-14 22:13:20 UTC) serves ``get_candles("BTCUSDT", tf, --bars)`` twice: the first
call builds every day it needs (cold), the second is served from the source's day cache
(cached); 1w has fewer bars, the market starting on 2017-01-01. Prints the median and
the best of ``--runs`` such pairs, in ms, and bars/s of the cold call.

    .venv/bin/python benchmarks/sim.py [--runs 5] [--bars 1000] [--timeframes 1m 1h 1d 1w]
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

import numpy as np
from rich.console import Console
from rich.table import Table

from conclave.market.sources.sim import SimSource

NOW_MS = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC, mid-bar on every timeframe
console = Console(width=110)


async def cold_and_cached(tf: str, bars: int) -> tuple[float, float, int]:
    """Seconds of a cold and of a cached call for ``bars`` bars of ``tf``, and the bar count."""
    source = SimSource(7, now_ms=lambda: NOW_MS)
    t0 = time.perf_counter()
    got = await source.get_candles("BTCUSDT", tf, bars)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = await source.get_candles("BTCUSDT", tf, bars)
    cached = time.perf_counter() - t0
    assert again.equals(got)  # a benchmark of a wrong answer is worthless
    return cold, cached, len(got)


async def bench(timeframes: list[str], bars: int, runs: int) -> None:
    table = Table(title=f"SimSource.get_candles, {bars} bars, {runs} runs")
    for col in ("timeframe", "bars", "cold p50 ms", "cold best ms", "cached p50 ms",
                "cached best ms", "cold bars/s"):  # fmt: skip
        table.add_column(col, justify="left" if col == "timeframe" else "right")
    for tf in timeframes:
        pairs = [await cold_and_cached(tf, bars) for _ in range(runs)]
        cold = [p[0] for p in pairs]
        cached = [p[1] for p in pairs]
        n = pairs[0][2]
        table.add_row(
            tf, str(n),
            f"{statistics.median(cold) * 1e3:.1f}", f"{min(cold) * 1e3:.1f}",
            f"{statistics.median(cached) * 1e3:.2f}", f"{min(cached) * 1e3:.2f}",
            f"{n / statistics.median(cold):,.0f}",
        )  # fmt: skip
    console.print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--bars", type=int, default=1000)
    ap.add_argument("--timeframes", nargs="+", default=["1m", "1h", "1d", "1w"])
    args = ap.parse_args()
    console.print(
        shlex.join([".venv/bin/python", f"benchmarks/{Path(__file__).name}", *sys.argv[1:]]),
        markup=False,
    )
    console.print(f"python {sys.version.split()[0]}, numpy {np.__version__}, cpus {os.cpu_count()}")
    asyncio.run(bench(args.timeframes, args.bars, args.runs))


if __name__ == "__main__":
    main()
