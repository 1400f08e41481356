"""Soak (RELIABILITY F3): steady runs for ``--minutes``; do memory, fds or connections grow?

Starts the system as its own processes on loopback: the nine agent services and
``conclave serve`` in HTTP mode (``--mode http``, the default) or ``conclave serve`` alone
(``--mode monolithic``), on SQLite (a fresh file) or PostgreSQL (a fresh database on
``--pg``), over the simulated market. Creates a paper account and drives ``POST
/pipeline/run`` at ``--rate`` runs a second, rotating over four markets (1m and 5m, so new
candles arrive every minute), half of them for the account (its equity curve grows a point
a run). Every ``--every`` seconds it samples each process's RSS and open file descriptors
and the database connections (PostgreSQL: ``pg_stat_activity`` of the database; SQLite: the
server's open descriptors on the database files).

At the end it prints, per process, the RSS slope in MB/h after ``--warmup-minutes`` (a
least-squares line through the samples; target at most 5 MB/h), the RSS at the start and
end of the measured part, and the fds and connections range (target: flat, within 5), with
the run count, failures and p50/p99; ``--csv`` writes every sample.

    .venv/bin/python benchmarks/soak.py --minutes 30 [--rate 2] [--db sqlite|postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import psutil
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

if TYPE_CHECKING:
    import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api import database, wait_live

ROOT = Path(__file__).resolve().parents[1]
MARKETS = (("BTCUSDT", "1m"), ("ETHUSDT", "1m"), ("BTCUSDT", "5m"), ("SOLUSDT", "5m"))
console = Console(width=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Samples:
    """What was sampled over time, by process name."""

    t: list[float] = field(default_factory=list)
    rss: dict[str, list[float]] = field(default_factory=dict)
    fds: dict[str, list[int]] = field(default_factory=dict)
    conns: list[int] = field(default_factory=list)
    load: list[float] = field(default_factory=list)


@contextlib.contextmanager
def system(
    mode: str, db_url: str | None, data_dir: Path, extra: dict[str, str] | None = None
) -> Iterator[tuple[int, dict[str, int]]]:
    """The processes of ``mode`` (``extra`` added to their environment); the API port and
    every process's PID by name."""
    from conclave.agents import REGISTRY

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CONCLAVE_", "OTEL_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env |= {"CONCLAVE_DATA_DIR": str(data_dir), "CONCLAVE_LOGS_DIR": str(data_dir / "logs"),
            "CONCLAVE_LOG_LEVEL": "WARNING", "CONCLAVE_MARKET__SOURCE": "sim"}  # fmt: skip
    if db_url:
        env["DATABASE_URL"] = db_url
    env |= extra or {}
    ports = {name: free_port() for name in REGISTRY} if mode == "http" else {}
    if ports:
        env |= {"USE_HTTP_AGENTS": "true", "CONCLAVE_AGENTS__PORTS": json.dumps(ports)}
    api = free_port()
    cmds = {name: [sys.executable, "-m", "conclave", "agent", "serve", name, "--host",
                   "127.0.0.1", "--port", str(port)] for name, port in ports.items()}  # fmt: skip
    cmds["orchestrator"] = [sys.executable, "-m", "conclave", "serve", "--host", "127.0.0.1",
                            "--port", str(api)]  # fmt: skip
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, cmd in cmds.items():
            log = (data_dir / f"{name}.out").open("wb")
            procs[name] = subprocess.Popen(cmd, env=env, cwd=data_dir, stdout=log,
                                           stderr=subprocess.STDOUT)  # fmt: skip
        wait_live([*ports.values(), api], procs)
        yield api, {name: p.pid for name, p in procs.items()}
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


def db_connections(db_url: str | None, server: psutil.Process, data_dir: Path) -> int:
    if db_url is None:
        files = {str(data_dir / f"conclave.db{s}") for s in ("", "-wal", "-shm")}
        with contextlib.suppress(psutil.Error):
            return sum(1 for f in server.open_files() if f.path in files)
        return -1
    name = db_url.rsplit("/", 1)[1]
    query = f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}'"
    out = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-Atc",
                          query], capture_output=True, text=True, check=False)  # fmt: skip
    return int(out.stdout.strip() or -1)


async def drive(
    api: int, seconds: float, rate: float, sample: Callable[[float], None], burst: int = 0
) -> tuple[list[float], int]:
    """Runs at ``rate`` a second for ``seconds``; ``sample()`` is called every tick.

    ``burst`` runs are sent at once first (in the warm-up): the connection pools and the
    allocator's high-water mark reach what a load spike would take them to, so that a later
    spike (another process busy on the machine) does not read as growth."""
    import aiohttp

    base = f"http://127.0.0.1:{api}"
    latencies: list[float] = []
    failures = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        body = {"name": "soak", "balance": 10_000, "quote": "USDT"}
        async with session.post(f"{base}/accounts", json=body) as resp:
            if resp.status != 201:
                raise SystemExit(f"creating the account: {resp.status} {await resp.text()}")
            account = (await resp.json())["id"]
        in_flight: set[asyncio.Task[None]] = set()

        async def one(i: int) -> None:
            nonlocal failures
            symbol, tf = MARKETS[i % len(MARKETS)]
            run = {"symbol": symbol, "timeframe": tf}
            if i % 2 == 0:
                run["accountId"] = account
            t0 = time.perf_counter()
            try:
                async with session.post(f"{base}/pipeline/run", json=run) as resp:
                    await resp.read()
                    if resp.status != 201:
                        failures += 1
                        return
            except (aiohttp.ClientError, TimeoutError):
                failures += 1
                return
            latencies.append((time.perf_counter() - t0) * 1000.0)

        if burst:
            statuses = await asyncio.gather(*(_post(session, base, i, account)
                                              for i in range(burst)))  # fmt: skip
            console.print(f"burst: {burst} runs at once: "
                          f"{dict(collections.Counter(statuses))} (status: count)")  # fmt: skip
        start = time.monotonic()
        i = 0
        while (now := time.monotonic() - start) < seconds:
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            task = asyncio.create_task(one(i))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            sample(now)
            i += 1
        await asyncio.gather(*in_flight)
    return latencies, failures


async def _post(session: aiohttp.ClientSession, base: str, i: int, account: str) -> int:
    symbol, tf = MARKETS[i % len(MARKETS)]
    run = {"symbol": symbol, "timeframe": tf, "accountId": account}
    async with session.post(f"{base}/pipeline/run", json=run) as resp:
        await resp.read()
        return int(resp.status)


def slope_mb_per_h(t: list[float], mb: list[float]) -> float:
    if len(t) < 3:
        return float("nan")
    return float(np.polyfit(np.asarray(t) / 3600.0, np.asarray(mb), 1)[0])


def main() -> None:
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop every process started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--warmup-minutes", type=float, help="default: a sixth, at most 30")
    parser.add_argument("--rate", type=float, default=2.0, help="runs a second")
    parser.add_argument("--every", type=float, default=15.0, help="seconds between samples")
    parser.add_argument("--mode", choices=("http", "monolithic"), default="http")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--pg", default="postgresql+asyncpg://postgres@127.0.0.1:5432")
    parser.add_argument("--csv", type=Path, help="write every sample here")
    parser.add_argument("--burst", type=int, default=48,
                        help="runs sent at once at the start of the warm-up (0: none)")  # fmt: skip
    args = parser.parse_args()
    warmup = args.warmup_minutes if args.warmup_minutes is not None else min(30, args.minutes / 6)
    seconds = args.minutes * 60.0
    data_dir = Path(tempfile.mkdtemp(prefix="soak_"))
    samples = Samples()
    try:
        with database(args.db, args.pg) as url, system(args.mode, url, data_dir) as (api, pids):
            procs = {name: psutil.Process(pid) for name, pid in pids.items()}
            last = -1e9
            progress = Progress(TextColumn("soak"), BarColumn(), TextColumn("{task.description}"),
                                TimeRemainingColumn(), console=console)  # fmt: skip
            task = progress.add_task("", total=seconds)

            def sample(now: float) -> None:
                nonlocal last
                progress.update(task, completed=now)
                if now - last < args.every:
                    return
                last = now
                samples.t.append(now)
                for name, p in procs.items():
                    with p.oneshot():
                        samples.rss.setdefault(name, []).append(p.memory_info().rss / 2**20)
                        samples.fds.setdefault(name, []).append(p.num_fds())
                samples.conns.append(db_connections(url, procs["orchestrator"], data_dir))
                samples.load.append(os.getloadavg()[0])
                progress.update(task, description=f"{len(samples.t)} samples, orchestrator "
                                f"{samples.rss['orchestrator'][-1]:.0f} MB")  # fmt: skip

            with progress:
                latencies, failures = asyncio.run(
                    drive(api, seconds, args.rate, sample, args.burst)
                )
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    report(args, warmup, samples, latencies, failures)


def report(args: argparse.Namespace, warmup: float, s: Samples, latencies: list[float],
           failures: int) -> None:  # fmt: skip
    keep = [i for i, t in enumerate(s.t) if t >= warmup * 60.0]
    table = Table(
        title=f"soak: {args.minutes:g} min at {args.rate:g} runs/s, {args.mode} mode, "
        f"{args.db}; measured after a {warmup:g} min warm-up ({len(keep)} samples)"
    )
    for col in ("process", "RSS start MB", "RSS end MB", "slope MB/h", "target <= 5",
                "fds min-max", "flat (<= 5)"):  # fmt: skip
        table.add_column(col, justify="right")
    for name, rss in s.rss.items():
        t = [s.t[i] for i in keep]
        mb = [rss[i] for i in keep]
        fds = [s.fds[name][i] for i in keep]
        slope = slope_mb_per_h(t, mb)
        table.add_row(name, f"{mb[0]:.1f}" if mb else "-", f"{mb[-1]:.1f}" if mb else "-",
                      f"{slope:+.2f}", "ok" if slope <= 5 else "OVER",
                      f"{min(fds)}-{max(fds)}" if fds else "-",
                      "ok" if fds and max(fds) - min(fds) <= 5 else "NO")  # fmt: skip
    console.print(table)
    conns = [s.conns[i] for i in keep]
    if conns:
        console.print(f"database connections: {min(conns)}-{max(conns)} "
                      f"({'flat' if max(conns) - min(conns) <= 5 else 'NOT flat'})")  # fmt: skip
    if latencies:
        p50, p99 = np.percentile(latencies, [50, 99])
        console.print(f"runs: {len(latencies) + failures:,} sent, {failures} failed; "
                      f"p50 {p50:.1f} ms, p99 {p99:.1f} ms")  # fmt: skip
    if args.csv:
        with args.csv.open("w", newline="") as fh:
            w = csv.writer(fh)
            names = list(s.rss)
            w.writerow(["t_s", *(f"rss_mb_{n}" for n in names), *(f"fds_{n}" for n in names),
                        "db_connections"])  # fmt: skip
            for i, t in enumerate(s.t):
                w.writerow([f"{t:.1f}", *(f"{s.rss[n][i]:.2f}" for n in names),
                            *(s.fds[n][i] for n in names), s.conns[i]])  # fmt: skip
        console.print(f"samples written to {args.csv}")
    if s.load:
        console.print(f"load average (1 min) over the samples: {min(s.load):.1f} to "
                      f"{max(s.load):.1f}, median {float(np.median(s.load)):.1f}")  # fmt: skip
    console.print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}; "
                  f"command: {' '.join(sys.argv)}")  # fmt: skip


if __name__ == "__main__":
    main()
