"""HTTP mode: this tree's agent client beside another tree's, measured alternately.

Each measurement runs in its own process with ``PYTHONPATH`` set to one tree's ``src``
(this one, or the one given with ``--compare-with``), A B A B for ``--rounds`` rounds, so
both meet the same machine load. A measurement starts its tree's nine agent services as
real uvicorn processes on free loopback ports (`conclave.services.procs.start_agents`,
records in a temporary directory), then times the full `Pipeline.run` (memory-cached
gateway over the real BTC 1h file, context, nine steps, decision) over HTTP with the
tree's own agent client, and in process as the control (what differs between the trees
besides HTTP):

- p50 and p99 ms of one run at a time (``--runs`` runs after ``--warmup``);
- pipelines per second with ``--inflight`` (8) runs in flight;
- CPU ms per run of the orchestrator process (the one running the pipeline) and of the
  nine services together, over the timed runs of both kinds;
- the services' resident memory after the load, largest and total.

The orchestrator runs on asyncio's default loop (as ``conclave run`` does), or on uvloop
with ``--loop uvloop`` (the services always run uvicorn's: uvloop when installed). The
table shows the median over the rounds with the range, and the ratio this / other. A
measurement stops every process it started; should it die, this script stops them by
their recorded PIDs.

    .venv/bin/python benchmarks/http_mode.py --compare-with /tmp/base_http/src
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT.parent / "shared/data/candles/binance_BTCUSDT_1h_20170817-20221011.csv"
AS_OF = 1_665_486_060_000  # one minute after the file's last bar closed
NOW_ISO = "2022-10-11T11:01:00.000Z"
console = Console(width=110)

# Put first on PYTHONPATH, it keeps the chosen tree's ``src`` the only place ``conclave``
# is imported from, in the measurement and in the services it starts: the editable
# install adds this checkout's ``src`` to every interpreter of the virtualenv.
SITECUSTOMIZE = """import os, sys
_SRC = {src!r}
sys.path[:] = [p for p in sys.path
               if os.path.abspath(p or ".") == _SRC
               or not os.path.isdir(os.path.join(p or ".", "conclave"))]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the measurement, in a process of its own, importing only the chosen tree ---------


def gateway() -> Any:
    from conclave.market.cache import MemoryCache
    from conclave.market.gateway import MarketGateway
    from conclave.market.sources.files import FileSource

    source = FileSource(CSV)
    return MarketGateway(source, cache=MemoryCache(), cache_ttl_s=3600.0, resample="resample")


async def one_run(pipe: Any) -> float:
    t0 = time.perf_counter()
    run = await pipe.run(None, "BTCUSDT", "1h", as_of_ms=AS_OF, now_iso=NOW_ISO)
    if run.degraded:
        raise SystemExit(f"degraded run: {run.missing_agents} {run.decision.reason}")
    return (time.perf_counter() - t0) * 1000.0


async def throughput(pipe: Any, runs: int, inflight: int) -> float:
    left = runs

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one_run(pipe)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return runs / (time.perf_counter() - t0)


def cpu_s(procs: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in procs)


async def measure_modes(
    urls: dict[str, str], services: list[psutil.Process], args: argparse.Namespace
) -> dict[str, Any]:
    from conclave.pipeline import Pipeline
    from conclave.pipeline.http_runner import HttpRunner

    try:
        from conclave.pipeline.agent_client import AgentHttpClient
    except ImportError:  # a tree from before the client had its own module
        from conclave.pipeline.http_runner import AgentHttpClient  # type: ignore[attr-defined,no-redef]

    out: dict[str, Any] = {}
    for mode in ("HTTP", "in process"):
        client = AgentHttpClient() if mode == "HTTP" else None
        runners = None
        if client is not None:
            out["client"] = str(getattr(client, "backend", "aiohttp"))
            runners = {n: HttpRunner(n, u, client=client, timeout_s=2.0) for n, u in urls.items()}
        try:
            async with Pipeline(gateway(), runners=runners) as pipe:
                for _ in range(args.warmup):
                    await one_run(pipe)
                cpu0, services0 = time.process_time(), cpu_s(services)
                lat = [await one_run(pipe) for _ in range(args.runs)]
                rate = await throughput(pipe, args.runs, args.inflight)
                cpu1, services1 = time.process_time(), cpu_s(services)
        finally:
            if client is not None:
                await client.aclose()
        per_run = 1000.0 / (2 * args.runs)
        out[mode] = {
            "p50 ms": float(np.percentile(lat, 50)),
            "p99 ms": float(np.percentile(lat, 99)),
            "runs/s": rate,
            "CPU ms/run": (cpu1 - cpu0) * per_run,
            "services CPU ms/run": (services1 - services0) * per_run,
        }
    rss = [p.memory_info().rss / 2**20 for p in services]
    out["rss"] = {"max MB": max(rss), "total MB": sum(rss)}
    return out


def _loop_factory(loop: str) -> Any:
    if loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def measure(args: argparse.Namespace) -> None:
    """Measure the tree at ``--src`` (already on ``PYTHONPATH``); print the figures as JSON."""
    import conclave.pipeline.http_runner as http_runner
    from conclave.agents import REGISTRY
    from conclave.services.procs import read_pidfile, start_agents, stop_recorded
    from conclave.settings import AgentServiceSettings, Settings

    src = Path(args.src).resolve()
    if not Path(http_runner.__file__).resolve().is_relative_to(src):
        raise SystemExit(f"conclave came from {http_runner.__file__}, not {src}")
    ports = {name: free_port() for name in REGISTRY}
    data = Path(args.data_dir)
    agents = AgentServiceSettings(ports=ports, start_timeout_s=60.0, stop_timeout_s=5.0)
    settings = Settings(_env_file=None, data_dir=data, logs_dir=data / "logs", agents=agents)
    try:
        failed = [r for r in start_agents(settings) if r.status != "started"]
        if failed:
            logs = {r.name: _tail(settings.logs_dir / f"{r.name}.log") for r in failed}
            raise SystemExit(f"agent services failed to start: {failed}\n{logs}")
        services = [psutil.Process(p.pid) for p in read_pidfile(settings).values()]
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        with asyncio.Runner(loop_factory=_loop_factory(args.loop)) as runner:
            figures = runner.run(measure_modes(urls, services, args))
    finally:
        stop_recorded(settings)
    print(json.dumps(figures))


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-1500:]
    except OSError as exc:
        return f"({exc})"


# --- the comparison, in this process ----------------------------------------------------


def stop_leftovers(data_dir: Path) -> None:
    """Stop the services a dead measurement recorded, by PID (same PID and start time)."""
    with contextlib.suppress(OSError, ValueError):
        recorded = json.loads((data_dir / "run" / "agents.json").read_text())["agents"]
        for rec in recorded.values():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(rec["pid"])
                if abs(proc.create_time() - rec["create_time"]) < 0.01:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=5)


def run_measurement(src: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement of the tree at ``src`` in a process of its own."""
    with tempfile.TemporaryDirectory(prefix="conclave-bench-") as tmp:
        shim = Path(tmp) / "shim"
        shim.mkdir()
        (shim / "sitecustomize.py").write_text(SITECUSTOMIZE.format(src=str(src)))
        env = {**os.environ, "PYTHONPATH": f"{shim}{os.pathsep}{src}"}
        cmd = [sys.executable, __file__, "--measure", "--src", str(src),
               "--data-dir", str(Path(tmp) / "data"), "--runs", str(args.runs),
               "--warmup", str(args.warmup), "--inflight", str(args.inflight),
               "--loop", args.loop]  # fmt: skip
        try:
            done = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True,
                                  timeout=args.measure_timeout_s, check=False)  # fmt: skip
        finally:
            stop_leftovers(Path(tmp) / "data")
    if done.returncode != 0:
        raise SystemExit(f"measurement of {src} failed:\n{done.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


FIGURES = [
    ("HTTP", "p50 ms", "{:.2f}"),
    ("HTTP", "p99 ms", "{:.2f}"),
    ("HTTP", "runs/s", "{:.0f}"),
    ("HTTP", "CPU ms/run", "{:.2f}"),
    ("HTTP", "services CPU ms/run", "{:.2f}"),
    ("rss", "max MB", "{:.1f}"),
    ("rss", "total MB", "{:.0f}"),
    ("in process", "p50 ms", "{:.2f}"),
    ("in process", "p99 ms", "{:.2f}"),
    ("in process", "runs/s", "{:.0f}"),
    ("in process", "CPU ms/run", "{:.2f}"),
]


def cell(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return fmt.format(values[0])
    mid = fmt.format(statistics.median(values))
    return f"{mid} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def report(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    labels = list(results)
    title = (f"full Pipeline.run, BTCUSDT 1h, orchestrator on {args.loop}; {args.runs} runs one"
             f" at a time, {args.runs} with {args.inflight} in flight; median (range) of"
             f" {args.rounds} rounds")  # fmt: skip
    table = Table(title=title)
    table.add_column("figure")
    for label in labels:
        table.add_column(f"{label}: {results[label][0]['client']}", justify="right")
    if len(labels) == 2:
        table.add_column("ratio", justify="right")
    for group, name, fmt in FIGURES:
        values = {label: [r[group][name] for r in rs] for label, rs in results.items()}
        row = [f"{group}: {name}", *(cell(values[label], fmt) for label in labels)]
        if len(labels) == 2:
            this, other = (statistics.median(values[label]) for label in labels)
            row.append(f"{this / other:.2f}" if other else "-")
        table.add_row(*row)
    console.print(table)


def request_bytes() -> int:
    """Bytes of the nine ``/run`` request bodies of one run, this tree."""
    from conclave.pipeline import Pipeline
    from conclave.pipeline.wire import encode_input

    async def measure() -> int:
        async with Pipeline(gateway()) as pipe:
            limit, higher = pipe.plan("1h")
            snap = await pipe.gateway.snapshot(
                "BTCUSDT", "1h", higher=higher, limit=limit, as_of_ms=AS_OF
            )
            ctx = await pipe.context(snap, None)
            return sum(len(encode_input(ctx.input_for(a))) for a in pipe.agents.values())

    return asyncio.run(measure())


def main() -> None:
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop every process started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--compare-with", type=Path, metavar="SRC",
                        help="the src directory of the tree to compare with")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--inflight", type=int, default=8)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="the orchestrator's event loop (the services run uvicorn's:"
                             " uvloop)")  # fmt: skip
    parser.add_argument("--measure-timeout-s", type=float, default=240.0)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args)
        return
    console.print("$ " + shlex.join([".venv/bin/python", "benchmarks/http_mode.py", *sys.argv[1:]]))
    trees = {"this tree": ROOT / "src"}
    if args.compare_with is not None:
        trees["other tree"] = args.compare_with.resolve()
    results: dict[str, list[dict[str, Any]]] = {label: [] for label in trees}
    load = [os.getloadavg()[0]]
    for i in range(args.rounds):
        for label, src in trees.items():
            results[label].append(figures := run_measurement(src, args))
            console.print(f"  round {i + 1}, {label} ({src}): HTTP p50"
                          f" {figures['HTTP']['p50 ms']:.2f} ms,"
                          f" {figures['HTTP']['runs/s']:.0f} runs/s")  # fmt: skip
            load.append(os.getloadavg()[0])
    report(results, args)
    console.print(f"request bytes per run (this tree): {request_bytes():,};"
                  f" load average (1 min) during the rounds: {min(load):.1f} to {max(load):.1f}"
                  f" on {os.cpu_count()} CPUs")  # fmt: skip


if __name__ == "__main__":
    main()
