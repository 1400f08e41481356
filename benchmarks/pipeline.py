"""Pipeline figures, measured side by side in one run (PERFORMANCE.md: quote ratios).

One run on 500 real BTC 1h candles (the last 500 of the shared file) plus the 4h and 1d
bars the agents need, resampled from the same file. Prints:

- the agent phase of one run (all nine steps, inputs cut per agent, data in memory, no
  fetch) for each way of executing the agents: inline one after another, inline gathered,
  a thread pool, a process pool: p50 and p99 ms over ``--runs`` runs, interleaved so drift
  hits all alike, and the ratio to inline sequential;
- each agent's share of the inline sequential phase (median ms and % of the sum);
- the full `Pipeline.run` (gateway over a memory-cached file source, context, agents,
  decision), sequential against parallel.

``--json`` prints the inline sequential agent phase, each agent's median and the full run
as JSON; ``--baseline SRC`` runs this script against the tree at SRC and this checkout
alternately and prints both side by side with the ratio (benchmarks/sidebyside.py). A step
with status ``no_data`` (news-sentiment without a news source) counts as answered.

    .venv/bin/python benchmarks/pipeline.py [--runs 300] [--warmup 30]
    mkdir -p /tmp/base && git archive eca77b4 | tar -x -C /tmp/base   # before issue 16
    .venv/bin/python benchmarks/pipeline.py --baseline /tmp/base/src [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

import conclave
from conclave.market.cache import MemoryCache
from conclave.market.gateway import MarketGateway
from conclave.market.sources.files import FileSource
from conclave.pipeline import Pipeline, PipelineContext
from conclave.pipeline.runners import ExecutorKind

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT.parent / "shared/data/candles/binance_BTCUSDT_1h_20170817-20221011.csv"
AS_OF = 1_665_486_060_000  # one minute after the file's last bar closed
NOW_ISO = "2022-10-11T11:01:00.000Z"
BARS = 500
ANSWERED = ("ok", "no_data")  # no_data: an agent with nothing to speak from (no news source)
console = Console(width=110)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


async def build_context() -> PipelineContext:
    gateway = MarketGateway(FileSource(CSV), resample="resample")
    async with Pipeline(gateway) as probe:
        limit, higher = probe.plan("1h")
    snap = await gateway.snapshot(
        "BTCUSDT", "1h", higher=higher, limit=max(BARS, limit), as_of_ms=AS_OF
    )
    await gateway.aclose()
    return PipelineContext.from_snapshot(snap, account_id=None)


BLOCK = 20


async def agent_phase(
    ctx: PipelineContext, runs: int, warmup: int, *, inline_only: bool = False
) -> dict[str, float]:
    configs: list[tuple[str, bool, ExecutorKind]] = [
        ("inline, sequential", False, "inline"),
        ("inline, gathered", True, "inline"),
        ("thread pool, parallel", True, "thread"),
        ("process pool, parallel", True, "process"),
    ]
    if inline_only:
        configs = configs[:1]
    gateway = MarketGateway(FileSource(CSV))
    pipes = [Pipeline(gateway, parallel=par, executor=ex, workers=2) for _, par, ex in configs]
    times: dict[str, list[float]] = defaultdict(list)
    per_agent: dict[str, list[float]] = defaultdict(list)
    # modes rotate in blocks of BLOCK runs (each block after its own warm-up run): side by
    # side in one process, so drift hits all alike, without each inline run following a
    # process-pool run that has just evicted the caches (a deployment runs one mode)
    for i in range(0, warmup + runs, BLOCK):
        for (label, _, _), pipe in zip(configs, pipes, strict=True):
            await pipe.run_steps(ctx, now_iso=NOW_ISO)
            for j in range(i, min(i + BLOCK, warmup + runs)):
                t0 = time.perf_counter()
                steps = await pipe.run_steps(ctx, now_iso=NOW_ISO)
                took = (time.perf_counter() - t0) * 1000.0
                bad = [n for n, s in steps.items() if s.status not in ANSWERED]
                if bad:
                    raise SystemExit(f"{label}: steps failed: {bad}")
                if j >= warmup:
                    times[label].append(took)
                    if label == "inline, sequential":
                        for name, step in steps.items():
                            per_agent[name].append(step.duration_ms)
    for pipe in pipes:
        await pipe.aclose()

    base = statistics.median(times["inline, sequential"])
    med = {n: statistics.median(v) for n, v in per_agent.items()}
    figures = {
        "agent phase p50 (ms)": base,
        "agent phase p99 (ms)": pct(times["inline, sequential"], 99),
        **{f"  {n} (median ms)": m for n, m in med.items()},
    }
    if inline_only:
        return figures
    table = Table(title=f"agent phase of one run: 9 agents, {len(ctx.base)} x 1h + 4h + 1d bars")
    for col in ("execution", "p50 ms", "p99 ms", "p50 / inline seq"):
        table.add_column(col, justify="left" if col == "execution" else "right")
    for label, _, _ in configs:
        t = times[label]
        table.add_row(label, f"{pct(t, 50):.3f}", f"{pct(t, 99):.3f}", f"{pct(t, 50) / base:.2f}x")
    console.print(table)
    target = "met" if base <= 0.5 else "NOT met"
    console.print(f"target p50 <= 0.5 ms with the data in memory (inline sequential): {target}")

    shares = Table(title="each agent's share (inline sequential)")
    for col in ("agent", "median ms", "share"):
        shares.add_column(col, justify="left" if col == "agent" else "right")
    total = sum(med.values())
    for name, m in med.items():
        shares.add_row(name, f"{m:.3f}", f"{100 * m / total:.1f} %")
    shares.add_row("sum of medians", f"{total:.3f}", "100 %")
    console.print(shares)
    return figures


async def full_run(runs: int, warmup: int, *, quiet: bool = False) -> dict[str, float]:
    gateway = MarketGateway(FileSource(CSV), cache=MemoryCache(), resample="resample")
    seq = Pipeline(gateway, parallel=False)
    par = Pipeline(gateway, parallel=True)
    times: dict[str, list[float]] = defaultdict(list)
    for i in range(warmup + runs):
        for label, pipe in (("sequential", seq), ("parallel (gathered)", par)):
            t0 = time.perf_counter()
            run = await pipe.run(None, "BTCUSDT", "1h", as_of_ms=AS_OF, now_iso=NOW_ISO)
            took = (time.perf_counter() - t0) * 1000.0
            if run.degraded:
                raise SystemExit(f"{label}: degraded run: {run.missing_agents}")
            if i >= warmup:
                times[label].append(took)
    await seq.aclose()
    await par.aclose()
    await gateway.aclose()
    if quiet:
        return {f"full Pipeline.run, {k} p50 (ms)": pct(t, 50) for k, t in times.items()}
    table = Table(title="full Pipeline.run: memory-cached file source, gateway, agents, decision")
    for col in ("mode", "p50 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for label, t in times.items():
        table.add_row(label, f"{pct(t, 50):.3f}", f"{pct(t, 99):.3f}")
    console.print(table)
    return {}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--json", action="store_true", help="inline figures as JSON")
    parser.add_argument("--baseline", type=Path, help="a source tree to compare with")
    parser.add_argument("--rounds", type=int, default=3, help="with --baseline")
    args = parser.parse_args()
    if not CSV.is_file():
        raise SystemExit(f"data not found: {CSV}")
    if args.json:
        ctx = await build_context()
        got: dict[str, float | str] = dict(await agent_phase(ctx, args.runs, args.warmup,
                                                             inline_only=True))  # fmt: skip
        got.update(await full_run(max(args.runs // 3, 20), min(args.warmup, 10), quiet=True))
        got["package"] = str(Path(conclave.__file__).parent)
        print(json.dumps(got))
        return
    load = os.getloadavg()[0]
    console.print(f"$ {shlex.join([Path(sys.executable).name, *sys.argv])}  (load {load:.2f})")
    if args.baseline is not None:
        from sidebyside import side_by_side

        child = ["--runs", str(args.runs), "--warmup", str(args.warmup)]
        side_by_side(Path(__file__), child, args.baseline, rounds=args.rounds, console=console)
        return
    ctx = await build_context()
    await agent_phase(ctx, args.runs, args.warmup)
    await full_run(max(args.runs // 3, 20), min(args.warmup, 10))


if __name__ == "__main__":
    asyncio.run(main())
