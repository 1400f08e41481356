"""What metrics and traces cost a run: everything off, metrics on, metrics and tracing on.

Each configuration is measured in a process of its own (the tracer provider is global to a
process), A B C A B C for ``--rounds`` rounds so all three meet the same machine load, in
two modes:

- **in process**: ``POST /pipeline/run`` through the orchestrator's whole ASGI app (its
  middleware, the run, the database write) with the nine agents in process;
- **HTTP**: the same, with the nine agents as real services on loopback, started with the
  same configuration (their own ``/metrics`` and request timing; with tracing, their own
  server and compute spans).

Configurations: ``off`` (``CONCLAVE_METRICS__ENABLED=false``, no ``OTEL_*``), ``metrics``
(the default: metrics on, tracing off), ``metrics+traces`` (OTLP over HTTP, 100 % sampling,
``parentbased_always_on``, to a sink on loopback that answers every export with 200, run in
its own process). Each measurement makes ``--warmup`` runs, then times ``--runs`` runs one
at a time. The table shows the median p50 / p90 over the rounds and the ratio to ``off``;
the targets are metrics <= 1.05x and metrics+traces <= 1.15x of ``off`` at p50. Beside
latency, the CPU time per run of the orchestrator and the nine services together (read 6 s
after the last run, so the batch processors' exports, every 5 s by default, are counted): a
figure a loaded machine distorts less.

    .venv/bin/python benchmarks/observability.py [--rounds 3] [--runs 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("off", "metrics", "metrics+traces")
MODES = ("in process", "HTTP")
console = Console(width=110)
Proc = subprocess.Popen[bytes]

SINK = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_env(config: str, sink_port: int) -> dict[str, str]:
    """The environment of one configuration (for the measuring process and its agents)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["CONCLAVE_METRICS__ENABLED"] = "false" if config == "off" else "true"
    if config == "metrics+traces":
        env |= {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{sink_port}/v1/traces",
            "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        }
    for name in ("DATABASE_URL", "REDIS_URL", "USE_HTTP_AGENTS"):
        env.pop(name, None)
    return env


@contextlib.contextmanager
def processes(cmds: list[list[str]], env: dict[str, str]) -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    try:
        for cmd in cmds:
            quiet = subprocess.DEVNULL
            procs.append(subprocess.Popen(cmd, env=env, stdout=quiet, stderr=quiet))
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(timeout=10)


def wait_up(urls: list[str], timeout_s: float = 180.0) -> None:
    import httpx2

    deadline = time.monotonic() + timeout_s
    with httpx2.Client(timeout=0.5, trust_env=False) as client:
        for url in urls:
            while True:
                with contextlib.suppress(httpx2.HTTPError):
                    if client.get(f"{url}/health/live").status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise SystemExit(f"{url} did not come up")
                time.sleep(0.1)


# --- one measurement, in its own process ------------------------------------------------


async def measure(mode: str, config: str, runs: int, warmup: int, data_dir: str) -> dict[str, Any]:
    import httpx2

    from conclave.agents import REGISTRY
    from conclave.logging import configure_logging
    from conclave.observability.tracing import (
        ORCHESTRATOR_SERVICE,
        configure_tracing,
        shutdown_tracing,
        tracing_config,
    )
    from conclave.services.api import create_app
    from conclave.settings import load_settings

    configure_logging("WARNING")
    configure_tracing(tracing_config(os.environ, service_name=ORCHESTRATOR_SERVICE))
    ports = {name: free_port() for name in REGISTRY}
    # this script is an edge: the settings come from its environment, like the CLI's
    os.environ |= {"CONCLAVE_DATA_DIR": data_dir, "CONCLAVE_LOG_LEVEL": "WARNING"}
    if mode == "HTTP":
        os.environ |= {"USE_HTTP_AGENTS": "true", "CONCLAVE_AGENTS__PORTS": json.dumps(ports)}
    settings = load_settings(None)
    serve = [sys.executable, "-m", "conclave", "agent", "serve"]
    cmds = [
        [*serve, name, "--port", str(port), "--host", "127.0.0.1"] for name, port in ports.items()
    ]
    env = dict(os.environ) | {"CONCLAVE_LOG_LEVEL": "WARNING"}
    with processes(cmds if mode == "HTTP" else [], env) as procs:
        agents = [psutil.Process(p.pid) for p in procs]
        if mode == "HTTP":
            wait_up([f"http://127.0.0.1:{p}" for p in ports.values()])
        app = create_app(settings)
        lat: list[float] = []
        async with app.router.lifespan_context(app):
            transport = httpx2.ASGITransport(app=app)
            async with httpx2.AsyncClient(transport=transport, base_url="http://x") as c:
                body = {"symbol": "BTCUSDT", "timeframe": "1h"}
                for i in range(warmup + runs):
                    t0 = time.perf_counter()
                    resp = await c.post("/pipeline/run", json=body)
                    took = (time.perf_counter() - t0) * 1000.0
                    if resp.status_code != 201 or resp.json()["degraded"]:
                        raise SystemExit(f"{mode}/{config}: {resp.status_code} {resp.text[:300]}")
                    if i >= warmup:
                        lat.append(took)
                    if i + 1 == warmup:
                        cpu0, agents0 = time.process_time(), cpu_s(agents)
        shutdown_tracing()  # what is still queued is exported now, and counted
        await asyncio.sleep(6.0)  # the agents' batch processors export every 5 s (default)
        cpu1, agents1 = time.process_time(), cpu_s(agents)
    return {
        "p50": float(np.percentile(lat, 50)),
        "p90": float(np.percentile(lat, 90)),
        "cpu": (cpu1 - cpu0) * 1000.0 / runs,
        "agents_cpu": (agents1 - agents0) * 1000.0 / runs,
    }


def cpu_s(procs: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def child(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        out = asyncio.run(measure(args.mode, args.config, args.runs, args.warmup, data_dir))
    print(json.dumps(out))


# --- the driver -----------------------------------------------------------------------------


def run_one(mode: str, config: str, args: argparse.Namespace, sink_port: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "--mode", mode, "--config", config,
           "--runs", str(args.runs), "--warmup", str(args.warmup)]  # fmt: skip
    env = config_env(config, sink_port)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{mode}/{config} failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop every process started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--config", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    sink_port = free_port()
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with processes([[sys.executable, "-c", SINK, str(sink_port)]], dict(os.environ)):
        for r in range(args.rounds):
            order = CONFIGS[r % 3 :] + CONFIGS[: r % 3]  # ABC, BCA, CAB: no config always first
            for mode in MODES:
                for config in order:
                    console.print(f"round {r + 1}/{args.rounds}: {mode}, {config}")
                    results.setdefault((mode, config), []).append(
                        run_one(mode, config, args, sink_port)
                    )
    table = Table(title=f"one run through POST /pipeline/run, ms ({args.runs} runs, "
                  f"median of {args.rounds} rounds; min-max)")  # fmt: skip
    cols = ("mode", "configuration", "p50", "p90", "p50 / off", "per round", "target",
            "CPU ms/run", "CPU / off")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col in ("mode", "configuration") else "right")
    for mode in MODES:
        base = statistics.median(x["p50"] for x in results[(mode, "off")])
        base_cpu = statistics.median(x["cpu"] + x["agents_cpu"] for x in results[(mode, "off")])
        for config in CONFIGS:
            rows = results[(mode, config)]
            p50s, p90s = [x["p50"] for x in rows], [x["p90"] for x in rows]
            p50 = statistics.median(p50s)
            cpu = statistics.median(x["cpu"] + x["agents_cpu"] for x in rows)
            target = {"off": "", "metrics": "<= 1.05", "metrics+traces": "<= 1.15"}[config]
            offs = results[(mode, "off")]
            per_round = statistics.median(
                x["p50"] / o["p50"] for x, o in zip(rows, offs, strict=True)
            )
            table.add_row(
                mode, config,
                f"{p50:.2f} ({min(p50s):.2f}-{max(p50s):.2f})",
                f"{statistics.median(p90s):.2f}",
                f"{p50 / base:.3f}", f"{per_round:.3f}", target, f"{cpu:.2f}",
                f"{cpu / base_cpu:.3f}",
            )  # fmt: skip
    console.print(table)
    console.print(f"{os.cpu_count()} cores; each measurement in its own process, "
                  "configurations alternated within each round, their order rotated from one "
                  "round to the next; 'per round': the median over rounds of the ratio to the "
                  "round's own off; load average at the end "
                  f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip


if __name__ == "__main__":
    main()
