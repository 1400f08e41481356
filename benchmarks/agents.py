"""Agent figures: the live step of each of the nine agents and their full-history pass.

Loads the 45,024-bar BTC 1h file, resamples 4h and 1d from its closed 1h bars and builds,
for every agent, the input the pipeline gives it (`PipelineContext.input_for`: the last
``lookback`` 1h bars as views, the last ``--bars`` bars of each higher timeframe it needs;
no news source, no account). Prints:

- each agent's `Agent.run` p50 and p99 in us over ``--runs`` calls (after a warm-up), and
  the p50 of the nine called one after another (target: at most 1 ms);
- each agent's `Agent.series` throughput over the whole history (bars/s, best of
  ``--passes``) and the nine together (target: at least 1 M bars/s).

``--json`` prints those figures as one JSON object; ``--baseline SRC`` runs this script
against the tree at SRC and this checkout alternately and prints both side by side with the
ratio (benchmarks/sidebyside.py).

    .venv/bin/python benchmarks/agents.py [--runs 400] [--passes 3] [--bars 600]
    mkdir -p /tmp/base && git archive HEAD | tar -x -C /tmp/base
    .venv/bin/python benchmarks/agents.py --baseline /tmp/base/src [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from conclave.agents import REGISTRY, Agent, AgentInput
from conclave.market.candles import Candles
from conclave.market.resample import resample
from conclave.market.sources.file_formats import read_candles

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT.parent / "shared/data/candles/binance_BTCUSDT_1h_20170817-20221011.csv"
NOW_ISO = "2022-10-11T11:01:00.000Z"
console = Console(width=110)


def tail(candles: Candles, n: int) -> Candles:
    """The last ``n`` bars as views (as the pipeline's context cuts them)."""
    if n >= len(candles):
        return candles
    return replace(candles, **{k: v[len(candles) - n :] for k, v in candles.columns().items()})


def live_input(agent: Agent, hist: Candles, higher: dict[str, Candles], bars: int) -> AgentInput:
    base = tail(hist, bars)
    names = agent.needs.higher_timeframes("1h")
    return AgentInput(
        symbol="BTCUSDT",
        timeframe="1h",
        as_of_ms=int(base.close_time[-1]),
        candles=tail(base, agent.lookback("1h")),
        higher={tf: tail(higher[tf], bars) for tf in names},
    )


def bench_run(
    agents: dict[str, Agent], inputs: dict[str, AgentInput], runs: int, *, quiet: bool = False
) -> dict[str, float]:
    per: dict[str, list[float]] = {name: [] for name in agents}
    total: list[float] = []
    for i in range(runs + runs // 10):
        t_all = 0.0
        for name, agent in agents.items():
            t0 = time.perf_counter()
            res = agent.run(inputs[name], now_iso=NOW_ISO)
            took = time.perf_counter() - t0
            if res.status not in ("ok", "no_data"):  # news-sentiment without a news source
                raise SystemExit(f"{name}: {res.status} {res.reason}")
            t_all += took
            if i >= runs // 10:
                per[name].append(took * 1e6)
        if i >= runs // 10:
            total.append(t_all * 1e6)
    p50 = float(np.percentile(total, 50))
    figures = {f"run {name} p50 (us)": float(np.percentile(t, 50)) for name, t in per.items()}
    figures["run, nine sequential p50 (us)"] = p50
    if quiet:
        return figures
    table = Table(title=f"Agent.run on the pipeline's input ({runs} calls each, us)")
    for col in ("agent", "bars", "p50 us", "p99 us"):
        table.add_column(col, justify="left" if col == "agent" else "right")
    for name, t in per.items():
        n = len(inputs[name].candles)
        table.add_row(name, str(n), f"{np.percentile(t, 50):.1f}", f"{np.percentile(t, 99):.1f}")
    table.add_row("nine, sequential", "", f"{p50:.1f}", f"{np.percentile(total, 99):.1f}")
    console.print(table)
    console.print(f"target p50 <= 1000 us for the nine: {'met' if p50 <= 1000 else 'NOT met'}")
    return figures


def bench_series(
    agents: dict[str, Agent], full: dict[str, AgentInput], passes: int, *, quiet: bool = False
) -> dict[str, float]:
    n = len(next(iter(full.values())).candles)
    figures: dict[str, float] = {}
    table = Table(title=f"Agent.series over the whole history ({n:,} bars, best of {passes})")
    for col in ("agent", "ms", "M bars/s"):
        table.add_column(col, justify="left" if col == "agent" else "right")
    total = 0.0
    for name, agent in agents.items():
        best = float("inf")
        for _ in range(passes):
            t0 = time.perf_counter()
            out = agent.series(full[name])
            best = min(best, time.perf_counter() - t0)
            if out.status not in ("ok", "no_data"):
                raise SystemExit(f"{name}: {out.status} {out.reason}")
        total += best
        figures[f"series {name} (ms)"] = best * 1e3
        table.add_row(name, f"{best * 1e3:.1f}", f"{n / best / 1e6:.2f}")
    figures["series, nine sequential (ms)"] = total * 1e3
    if quiet:
        return figures
    table.add_row("nine, sequential", f"{total * 1e3:.1f}", f"{n / total / 1e6:.2f}")
    console.print(table)
    console.print(f"target >= 1 M bars/s for the nine: {'met' if n / total >= 1e6 else 'NOT met'}")
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=400)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--bars", type=int, default=600, help="at least the longest lookback (582)")
    ap.add_argument("--json", action="store_true", help="the figures as one JSON object")
    ap.add_argument("--baseline", type=Path, help="a source tree to compare with")
    ap.add_argument("--rounds", type=int, default=3, help="with --baseline")
    args = ap.parse_args()
    if not args.json:
        console.print(
            shlex.join([".venv/bin/python", f"benchmarks/{Path(__file__).name}", *sys.argv[1:]]),
            markup=False,
        )
    if args.baseline is not None:
        from sidebyside import side_by_side

        child = ["--runs", str(args.runs), "--passes", str(args.passes), "--bars", str(args.bars)]
        side_by_side(Path(__file__), child, args.baseline, rounds=args.rounds, console=console)
        return

    hist = read_candles(CSV, symbol="BTCUSDT", timeframe="1h")
    higher = {tf: resample(hist, tf) for tf in ("4h", "1d")}
    agents = {name: cls() for name, cls in REGISTRY.items()}
    inputs = {name: live_input(a, hist, higher, args.bars) for name, a in agents.items()}
    figures = bench_run(agents, inputs, args.runs, quiet=args.json)
    full = {
        name: AgentInput(
            "BTCUSDT",
            "1h",
            int(hist.close_time[-1]),
            hist,
            {tf: higher[tf] for tf in a.needs.higher_timeframes("1h")},
        )
        for name, a in agents.items()
    }
    figures.update(bench_series(agents, full, args.passes, quiet=args.json))
    if args.json:
        import conclave

        print(json.dumps({**figures, "package": str(Path(conclave.__file__).parent)}))


if __name__ == "__main__":
    main()
