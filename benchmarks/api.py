"""End to end: ``POST /pipeline/run`` against the orchestrator as users start it.

``conclave serve`` (monolithic, agents in process, metrics on, the default log level, open on
loopback) is started as its own process on SQLite (a fresh file) and on PostgreSQL (a fresh
database on ``--pg``), reading real BTCUSDT 1h history from ``../shared/data`` through the file
source. The file is a copy whose times are shifted so that its last bar is the hour now open:
the runs are fresh for the hour the benchmark takes, and the source's parse cache and the
in-process candle cache are warm after the warm-up. Each level sends ``--runs`` runs with 1, 8
and 50 in flight from this process (aiohttp, keep-alive) and prints p50, p99 and runs/s, with
the server's CPU per run (psutil). With py-spy installed, the 8-in-flight level is also
sampled (``py-spy record --pid``, every thread, idle time excluded) and the server's CPU split
into pipeline (agents, decision, market data), persistence (store, SQLAlchemy, drivers),
logging (structlog, logging) and HTTP and JSON (the rest: uvicorn, Starlette, FastAPI,
pydantic, orjson), each sample given to the first of those met from the leaf frame up.

``--baseline REV`` measures the tree of git revision REV too (``git archive`` into a temporary
directory, run with ``PYTHONPATH`` there), interleaved with the working tree, so both columns
come from one sitting: every tree's server is up at once and, level by level, the trees take
turns for ``--rounds`` batches of ``--runs`` runs each (the order rotating); each figure is the
median over a tree's batches, so a busy spell of a shared machine hits every tree alike.
Targets (issue 16): p50 <= 4 ms one at a time, >= 300 runs/s with 8 in
flight on PostgreSQL, p99 < 50 ms with 8 in flight on both databases, p99 < 250 ms with 50.

``--variant LABEL:NAME=VALUE,...`` adds a column: the working tree started with those settings
(e.g. ``r4:CONCLAVE_API__MAX_RUNS_RUNNING=4``, to choose a default side by side).

    .venv/bin/python benchmarks/api.py [--runs 400] [--db sqlite,postgres] [--baseline eca77b4]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
HISTORY = ROOT.parent / "shared/data/candles/binance_BTCUSDT_1h_20170817-20221011.csv"
HOUR_MS = 3_600_000
BODY = b'{"symbol": "BTCUSDT", "timeframe": "1h"}'
BUCKETS = (
    ("logging", ("structlog", "/logging/", "conclave/logging.py")),
    ("persistence", ("conclave/store/", "sqlalchemy", "aiosqlite", "asyncpg", "sqlite3")),
    ("pipeline", ("conclave/pipeline/", "conclave/agents/", "conclave/market/",
                  "conclave/news/", "conclave/accounts/", "talib", "numpy")),
)  # fmt: skip
console = Console(width=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shifted_history(folder: Path) -> Path:
    """A copy of the BTCUSDT 1h history whose last bar opens at the current hour."""
    lines = HISTORY.read_text().splitlines()
    last_open = int(lines[-1].split(",", 1)[0])
    shift = (time.time_ns() // 1_000_000 // HOUR_MS) * HOUR_MS - last_open
    out = [lines[0]]
    for line in lines[1:]:
        open_ms, rest = line.split(",", 1)
        out.append(f"{int(open_ms) + shift},{rest}")
    path = folder / "binance_BTCUSDT_1h_20170817-20221011.csv"
    path.write_text("\n".join(out) + "\n")
    return path


@contextlib.contextmanager
def database(kind: str, pg: str) -> Iterator[str | None]:
    """None for SQLite (the data dir's file), else the URL of a fresh PostgreSQL database,
    dropped afterwards (also used by `benchmarks/soak.py` and `benchmarks/load.py`)."""
    if kind == "sqlite":
        yield None
        return
    name = f"bench_api_{os.getpid()}_{time.monotonic_ns() % 10**9}"
    admin = ["-h", "127.0.0.1", "-U", "postgres"]
    subprocess.run(["createdb", *admin, name], check=True)
    try:
        yield f"{pg.rstrip('/')}/{name}"
    finally:
        subprocess.run(["dropdb", *admin, "--if-exists", "--force", name], check=False)


@contextlib.contextmanager
def server(tree: Path, db_url: str | None, source: Path, port: int,
           extra: dict[str, str] | None = None) -> Iterator[psutil.Process]:  # fmt: skip
    """``conclave serve`` of ``tree`` on ``port`` (``extra``: more environment); stopped by
    its PID."""
    data_dir = Path(tempfile.mkdtemp(prefix="bench_api_"))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CONCLAVE_", "OTEL_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env |= {"PYTHONPATH": str(tree / "src"), "CONCLAVE_DATA_DIR": str(data_dir),
            "CONCLAVE_MARKET__SOURCE": f"file:{source}", "USE_HTTP_AGENTS": "false"}  # fmt: skip
    if db_url:
        env["DATABASE_URL"] = db_url
    env |= extra or {}
    cmd = [sys.executable, "-m", "conclave", "serve", "--host", "127.0.0.1", "--port", str(port)]
    log = (data_dir / "server.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, cwd=data_dir, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_live([port], {"conclave serve": proc})
        yield psutil.Process(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def wait_live(
    ports: list[int], procs: dict[str, subprocess.Popen[bytes]], timeout_s: float = 180.0
) -> None:
    """Until each of ``ports`` answers ``/health/live``; `SystemExit` if one of ``procs``
    exits first or time runs out (also used by `benchmarks/soak.py`)."""
    import httpx2

    deadline = time.monotonic() + timeout_s
    with httpx2.Client(timeout=1.0, trust_env=False) as client:
        for port in ports:
            while True:
                dead = [n for n, p in procs.items() if p.poll() is not None]
                if dead:
                    raise SystemExit(f"exited during start-up: {', '.join(dead)}")
                with contextlib.suppress(httpx2.HTTPError):
                    if client.get(f"http://127.0.0.1:{port}/health/live").status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise SystemExit(f"port {port} did not come up")
                time.sleep(0.2)


async def load(port: int, runs: int, in_flight: int) -> tuple[list[float], float]:
    """Latencies (ms) of ``runs`` runs with ``in_flight`` at once, and the wall seconds."""
    import aiohttp

    url = f"http://127.0.0.1:{port}/pipeline/run"
    headers = {"content-type": "application/json"}
    left = runs
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=in_flight)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                t0 = time.perf_counter()
                async with session.post(url, data=BODY, headers=headers) as resp:
                    answer = await resp.json()
                    if resp.status != 201 or answer.get("degraded"):
                        raise SystemExit(f"run failed: {resp.status} {str(answer)[:300]}")
                latencies.append((time.perf_counter() - t0) * 1000.0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return latencies, time.perf_counter() - t0


@dataclass
class Level:
    p50: float
    p99: float
    rate: float
    cpu_ms: float
    split: dict[str, float] = field(default_factory=dict)


def classify(raw: Path) -> dict[str, float]:
    """Shares of py-spy's collapsed samples by bucket (leaf frame first)."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        bucket = "HTTP and JSON"
        for frame in reversed(stack.split(";")):
            hit = next((b for b, keys in BUCKETS if any(k in frame for k in keys)), None)
            if hit:
                bucket = hit
                break
        counts[bucket] += int(n)
    total = sum(counts.values()) or 1
    return {b: counts[b] / total for b in ("pipeline", "persistence", "HTTP and JSON", "logging")}


def measure(proc: psutil.Process, port: int, runs: int, in_flight: int, split: bool,
            keep: Path | None = None) -> Level:  # fmt: skip
    spy = None
    raw = keep or Path(tempfile.mkstemp(suffix=".txt")[1])
    if split:
        spy = subprocess.Popen(
            ["py-spy", "record", "--pid", str(proc.pid), "--format", "raw", "--rate", "250",
             "--output", str(raw), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)
    cpu0 = sum(proc.cpu_times()[:2])
    lat, wall = asyncio.run(load(port, runs, in_flight))
    cpu = sum(proc.cpu_times()[:2]) - cpu0
    shares: dict[str, float] = {}
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=30)
        shares = classify(raw)
    if keep is None:
        raw.unlink(missing_ok=True)
    return Level(float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), runs / wall,
                 cpu * 1000.0 / runs, shares)  # fmt: skip


def tree_of(rev: str, folder: Path) -> Path:
    out = folder / rev
    out.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True,
                             capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def variant(spec: str) -> tuple[str, tuple[Path, dict[str, str]]]:
    """``LABEL:NAME=VALUE,...`` as a column of the working tree with that environment."""
    label, _, pairs = spec.partition(":")
    extra = dict(p.split("=", 1) for p in pairs.split(",") if p)
    return f"now {label}", (ROOT, extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=400, help="runs per level and round")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--levels", default="1,8,50")
    parser.add_argument("--db", default="sqlite,postgres")
    parser.add_argument("--pg", default="postgresql+asyncpg://postgres@127.0.0.1:5432")
    parser.add_argument("--baseline", help="a git revision measured beside the working tree")
    parser.add_argument("--rounds", type=int, default=1,
                        help="batches per tree and level, taking turns; medians")  # fmt: skip
    parser.add_argument("--no-split", action="store_true", help="no py-spy sampling")
    parser.add_argument(
        "--variant", action="append", default=[], metavar="LABEL:NAME=VALUE[,NAME=VALUE]",
        help="the working tree again with these settings, e.g. r4:CONCLAVE_API__MAX_RUNS_RUNNING=4",
    )  # fmt: skip
    parser.add_argument(
        "--profiles", type=Path, help="keep py-spy's collapsed stacks here (flamegraph input)"
    )
    args = parser.parse_args()
    if not HISTORY.exists():
        raise SystemExit(f"needs {HISTORY.name} under ../shared/data/candles")
    levels = [int(x) for x in args.levels.split(",")]
    split = shutil.which("py-spy") is not None or (Path(sys.executable).parent / "py-spy").exists()
    split = split and not args.no_split
    if split and shutil.which("py-spy") is None:
        os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    rounds: dict[tuple[str, str, int], list[Level]] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        trees: dict[str, tuple[Path, dict[str, str]]] = {"now": (ROOT, {})}
        if args.baseline:
            trees = {args.baseline: (tree_of(args.baseline, Path(tmp)), {}), "now": (ROOT, {})}
        trees |= dict(variant(v) for v in args.variant)
        source = shifted_history(Path(tmp))
        for db in args.db.split(","):
            with contextlib.ExitStack() as stack:  # every tree's server up at once
                up: dict[str, tuple[psutil.Process, int]] = {}
                for label, (tree, extra) in trees.items():
                    console.print(f"{db}, {label}: starting the server")
                    port = free_port()
                    url = stack.enter_context(database(db, args.pg))
                    up[label] = stack.enter_context(server(tree, url, source, port, extra)), port
                    asyncio.run(load(port, args.warmup, 1))
                labels = list(up)
                for n in levels:
                    for i in range(args.rounds):  # the trees take turns: no one always first
                        for label in labels[i % len(labels) :] + labels[: i % len(labels)]:
                            proc, port = up[label]
                            keep = None
                            if split and n == 8 and args.profiles:
                                args.profiles.mkdir(parents=True, exist_ok=True)
                                keep = args.profiles / f"{db}-{label}-{n}-{i}.txt"
                            rounds[(db, label, n)].append(measure(
                                proc, port, args.runs, n, split and n == 8, keep
                            ))  # fmt: skip
    results = {k: median_level(v) for k, v in sorted(rounds.items(), key=lambda kv: kv[0][::2])}
    report(results, list(trees), levels, args)


def median_level(levels: list[Level]) -> Level:
    """Each figure's median over the rounds (the CPU split of the first round that has one)."""
    med = [float(np.median([getattr(x, f) for x in levels])) for f in ("p50", "p99", "rate",
                                                                       "cpu_ms")]  # fmt: skip
    return Level(med[0], med[1], med[2], med[3], next((x.split for x in levels if x.split), {}))


def report(results: dict[tuple[str, str, int], Level], labels: list[str], levels: list[int],
           args: argparse.Namespace) -> None:  # fmt: skip
    table = Table(title=f"POST /pipeline/run, monolithic, file source (median of {args.rounds} "
                  f"interleaved rounds of {args.runs} runs)")  # fmt: skip
    for col in ("database", "in flight", "tree", "p50 ms", "p99 ms", "runs/s", "server CPU ms/run",
                "target"):  # fmt: skip
        table.add_column(col, justify="right")
    for (db, label, n), got in results.items():
        target = {1: f"p50 <= 4: {'ok' if got.p50 <= 4 else 'MISS'}",
                  8: f"p99 < 50: {'ok' if got.p99 < 50 else 'MISS'}"
                     + (f", >= 300/s: {'ok' if got.rate >= 300 else 'MISS'}" if db == "postgres"
                        else ""),
                  50: f"p99 < 250: {'ok' if got.p99 < 250 else 'MISS'}"}.get(n, "")  # fmt: skip
        table.add_row(db, str(n), label, f"{got.p50:.2f}", f"{got.p99:.1f}", f"{got.rate:.0f}",
                      f"{got.cpu_ms:.2f}", target if label.startswith("now") else "")  # fmt: skip
    console.print(table)
    split = Table(title="server CPU split with 8 in flight (py-spy samples, idle excluded)")
    for col in ("database", "tree", "pipeline", "persistence", "HTTP and JSON", "logging"):
        split.add_column(col, justify="right")
    for (db, label, _n), got in results.items():
        if got.split:
            split.add_row(db, label, *(f"{v:.0%}" for v in got.split.values()))
    if split.row_count:
        console.print(split)
    load_avg = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    console.print(f"{os.cpu_count()} cores; load average at the end {load_avg}; python "
                  f"{sys.version.split()[0]}; command: {' '.join(sys.argv)}")  # fmt: skip


if __name__ == "__main__":
    main()
