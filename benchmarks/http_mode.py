"""HTTP mode against in process, side by side in one run (PERFORMANCE.md, HTTP section).

Starts the nine agent services as real uvicorn processes on free loopback ports (with
`conclave.services.procs.start_agents`, records in a temporary directory), then measures
the full `Pipeline.run` (memory-cached gateway over the real BTC 1h file, context, nine
steps, decision) in process and over HTTP with each client library (httptools, aiohttp,
httpx2; see `conclave.pipeline.http_runner.DEFAULT_BACKEND` for measured figures):

- p50 and p99 ms of one run at a time (``--runs`` runs after ``--warmup``);
- pipelines per second with ``--inflight`` (8) runs in flight;
- the request size of each agent call (the context with its data inline);
- each agent service's resident memory after the load.

Every process it started is stopped at the end, whatever happens.

    .venv/bin/python benchmarks/http_mode.py [--runs 300] [--warmup 50] [--inflight 8]
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

from conclave.market.cache import MemoryCache
from conclave.market.gateway import MarketGateway
from conclave.market.sources.files import FileSource
from conclave.pipeline import Pipeline
from conclave.pipeline.http_runner import BACKENDS, AgentHttpClient, Backend, HttpRunner
from conclave.services.procs import read_pidfile, start_agents, stop_recorded
from conclave.services.wire import encode_input
from conclave.settings import AGENT_NAMES, AgentServiceSettings, Settings

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT.parent / "shared/data/candles/binance_BTCUSDT_1h_20170817-20221011.csv"
AS_OF = 1_665_486_060_000  # one minute after the file's last bar closed
NOW_ISO = "2022-10-11T11:01:00.000Z"
console = Console(width=110)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway() -> MarketGateway:
    return MarketGateway(
        FileSource(CSV), cache=MemoryCache(), cache_ttl_s=3600.0, resample="resample"
    )


async def latency(pipe: Pipeline, runs: int, warmup: int) -> list[float]:
    out: list[float] = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        run = await pipe.run(None, "BTCUSDT", "1h", as_of_ms=AS_OF, now_iso=NOW_ISO)
        took = (time.perf_counter() - t0) * 1000.0
        if run.degraded:
            raise SystemExit(f"degraded run: {run.missing_agents} {run.decision.reason}")
        if i >= warmup:
            out.append(took)
    return out


async def throughput(pipe: Pipeline, runs: int, inflight: int) -> float:
    left = runs

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await pipe.run(None, "BTCUSDT", "1h", as_of_ms=AS_OF, now_iso=NOW_ISO)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return runs / (time.perf_counter() - t0)


async def request_sizes() -> dict[str, int]:
    async with Pipeline(gateway()) as pipe:
        limit, higher = pipe.plan("1h")
        snap = await pipe.gateway.snapshot(
            "BTCUSDT", "1h", higher=higher, limit=limit, as_of_ms=AS_OF
        )
        ctx = await pipe.context(snap, None)
        return {n: len(encode_input(ctx.input_for(a))) for n, a in pipe.agents.items()}


async def measure(settings: Settings, args: argparse.Namespace) -> dict[str, tuple[float, ...]]:
    rows: dict[str, tuple[float, ...]] = {}
    modes: list[Backend | None] = [None, *BACKENDS]
    for backend in modes:
        label = "in process" if backend is None else f"HTTP, {backend}"
        client = AgentHttpClient(backend=backend) if backend is not None else None
        runners = None
        if client is not None:
            runners = {
                n: HttpRunner(n, settings.agent_url(n), client=client, timeout_s=2.0)
                for n in AGENT_NAMES
            }
        try:
            async with Pipeline(gateway(), runners=runners) as pipe:
                lat = await latency(pipe, args.runs, args.warmup)
                rate = await throughput(pipe, args.runs, args.inflight)
        finally:
            if client is not None:
                await client.aclose()
        p50, p99 = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
        rows[label] = (p50, p99, rate)
        console.print(f"  measured {label}: p50 {p50:.2f} ms, {rate:.0f} runs/s")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--inflight", type=int, default=8)
    args = parser.parse_args()
    console.print("$ " + shlex.join([".venv/bin/python", "benchmarks/http_mode.py", *sys.argv[1:]]))
    with tempfile.TemporaryDirectory(prefix="conclave-bench-") as tmp:
        ports = {n: free_port() for n in AGENT_NAMES}
        settings = Settings(
            _env_file=None,
            data_dir=Path(tmp),
            logs_dir=Path(tmp) / "logs",
            agents=AgentServiceSettings(ports=ports, start_timeout_s=60.0, stop_timeout_s=5.0),
        )
        try:
            started = start_agents(settings)
            failed = [r for r in started if r.status != "started"]
            if failed:
                raise SystemExit(f"agent services failed to start: {failed}")
            rows = asyncio.run(measure(settings, args))
            rss = {
                n: psutil.Process(p.pid).memory_info().rss / 2**20
                for n, p in read_pidfile(settings).items()
            }
        finally:
            stop_recorded(settings)
    sizes = asyncio.run(request_sizes())

    table = Table(
        title=f"full Pipeline.run, BTCUSDT 1h, {args.runs} runs; {args.inflight} in flight"
    )
    for col in ("mode", "p50 ms", "p99 ms", "runs/s"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for label, (p50, p99, rate) in rows.items():
        table.add_row(label, f"{p50:.2f}", f"{p99:.2f}", f"{rate:.0f}")
    console.print(table)
    per_agent = Table(title="per agent service")
    for col in ("agent", "request bytes", "RSS MB"):
        per_agent.add_column(col, justify="left" if col == "agent" else "right")
    for name in AGENT_NAMES:
        per_agent.add_row(name, f"{sizes[name]:,}", f"{rss.get(name, float('nan')):.1f}")
    per_agent.add_row("total / max", f"{sum(sizes.values()):,}", f"{max(rss.values()):.1f}")
    console.print(per_agent)
    console.print("targets: HTTP p50 <= 6 ms, p99 <= 12 ms, >= 250 runs/s, <= 120 MB per agent")


if __name__ == "__main__":
    main()
