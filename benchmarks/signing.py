"""Signed agent calls: what signing and verifying cost per call and per nine-call run.

Builds the nine real ``POST /run`` bodies of one pipeline run (simulated BTCUSDT 1h market,
data inline, `conclave.pipeline.wire.encode_input`), then times, over ``--runs`` runs
after a warm-up, each side on its own: the orchestrator's `Signer.headers` for the nine
bodies (serial, on the run's path) and each agent's `Verifier.verify` of its body (nine
processes, in parallel: a run waits for the slowest). The same for empty bodies gives the
fixed part (HMAC, nonce, replay memory); the rest is the SHA-256 body digest, which grows
with the bytes sent. Prints p50 and p99 per side and the run's critical path (sign the nine
+ the slowest verify), against the issue's target of 0.1 ms per run.

``--e2e`` adds what a user sees: a whole run over HTTP (nine agent services on loopback,
data inline) with and without signing, two sets of services and two pipelines in this process,
runs alternated one by one so both meet the same machine (see `e2e`).

    .venv/bin/python benchmarks/signing.py [--runs 2000] [--e2e --rounds 3 --e2e-runs 150]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from conclave.security.signing import (
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    Signer,
    Verifier,
)

SECRET = "benchmark-agent-signing-secret-0123456789abcdef"
SIM_AS_OF = 1_700_000_000_000
REAL_AS_OF = 1_650_000_000_000  # 2022-04-15, inside the Binance BTCUSDT 1h file
CANDLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "candles"
console = Console(width=110)


def run_bodies(market: str = "sim") -> list[bytes]:
    """The nine ``/run`` bodies of one BTCUSDT 1h pipeline run, as the orchestrator sends
    them: ``sim`` (the simulator, whose prices carry 17 significant digits) or ``real``
    (Binance candles from ``../shared/data/candles``, prices on the venue's 0.01 tick)."""
    from conclave.market.gateway import MarketGateway
    from conclave.market.sources.files import FileSource
    from conclave.market.sources.sim import SimSource
    from conclave.pipeline import Pipeline
    from conclave.pipeline.wire import encode_input

    source: Any = SimSource(now_ms=lambda: SIM_AS_OF) if market == "sim" else FileSource(CANDLES)
    as_of = SIM_AS_OF if market == "sim" else REAL_AS_OF

    async def build() -> list[bytes]:
        gateway = MarketGateway(source)
        async with Pipeline(gateway) as pipe:
            limit, higher = pipe.plan("1h")
            snap = await pipe.gateway.snapshot(
                "BTCUSDT", "1h", higher=higher, limit=limit, as_of_ms=as_of
            )
            ctx = await pipe.context(snap, None)
            return [encode_input(ctx.input_for(a)) for a in pipe.agents.values()]

    return asyncio.run(build())


def time_sides(bodies: list[bytes], runs: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per run: ``sign`` (the nine bodies), ``verify`` (their sum), ``slowest``
    (the slowest single verify), ``path`` (sign + slowest: what a run waits for)."""
    signer, verifier = Signer(SECRET), Verifier([SECRET])
    out: dict[str, list[float]] = {"sign": [], "verify": [], "slowest": [], "path": []}
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        signed = [signer.headers("POST", "/run", body) for body in bodies]
        sign = time.perf_counter() - t0
        verify, slowest = 0.0, 0.0
        for body, h in zip(bodies, signed, strict=True):
            t1 = time.perf_counter()
            verdict = verifier.verify(
                "POST", "/run", body, timestamp=h[HEADER_TIMESTAMP], nonce=h[HEADER_NONCE],
                signature=h[HEADER_SIGNATURE],
            )  # fmt: skip
            took = time.perf_counter() - t1
            if not verdict.ok:
                raise SystemExit(f"verification failed: {verdict.reason}")
            verify, slowest = verify + took, max(slowest, took)
        if i >= warmup:
            for key, value in (("sign", sign), ("verify", verify), ("slowest", slowest),
                               ("path", sign + slowest)):  # fmt: skip
                out[key].append(value)
    return out


def digest_seconds(bodies: list[bytes], runs: int) -> float:
    """Median seconds of hashing the nine bodies twice (sender and receiver) per run."""
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for body in bodies:
            hashlib.sha256(body).digest()
            hashlib.sha256(body).digest()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _p(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def e2e(rounds: int, runs: int, warmup: int) -> None:
    """Signing's cost to a whole run: two sets of the nine agent services on loopback, one
    started with the agent secret and one without, and two pipelines in this process over
    the same memory-cached real BTC 1h market (`benchmarks/http_mode.py`'s gateway), one
    signing its calls; runs alternate between them one by one, so both meet the same
    machine. Prints p50/p99 of a run and CPU per run of this process (timed around each run)
    and of each set of services."""
    import psutil

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import http_mode as hm
    import observability as obs
    from conclave.agents import REGISTRY
    from conclave.pipeline import Pipeline
    from conclave.pipeline.agent_client import AgentHttpClient
    from conclave.pipeline.http_runner import HttpRunner

    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONCLAVE_", "OTEL_"))}
    env |= {"CONCLAVE_LOG_LEVEL": "WARNING"}
    sets = {"unsigned": {n: hm.free_port() for n in REGISTRY},
            "signed": {n: hm.free_port() for n in REGISTRY}}  # fmt: skip
    procs: dict[str, list[subprocess.Popen[bytes]]] = {"unsigned": [], "signed": []}
    try:
        for label, ports in sets.items():
            child = env | ({"CONCLAVE_AGENTS__SECRET": SECRET} if label == "signed" else {})
            for name, port in ports.items():
                cmd = [sys.executable, "-m", "conclave", "agent", "serve", name, "--port",
                       str(port), "--host", "127.0.0.1"]  # fmt: skip
                procs[label].append(subprocess.Popen(cmd, env=child, stdout=subprocess.DEVNULL,
                                                     stderr=subprocess.DEVNULL))  # fmt: skip
        obs.wait_up([f"http://127.0.0.1:{p}" for ports in sets.values() for p in ports.values()])
        services = {k: [psutil.Process(p.pid) for p in v] for k, v in procs.items()}
        got = asyncio.run(_alternate(sets, services, rounds * runs, warmup, hm, Pipeline,
                                     AgentHttpClient, HttpRunner))  # fmt: skip
    finally:
        for group in procs.values():
            for proc in group:
                proc.kill()
                proc.wait(timeout=10)
    table = Table(title=f"a run over HTTP, nine agents, data inline ({rounds * runs} runs each,"
                  " alternated one by one)")  # fmt: skip
    for col in ("agent calls", "p50 ms", "p99 ms", "orchestrator CPU ms/run",
                "agents CPU ms/run", "p50 - unsigned"):  # fmt: skip
        table.add_column(col, justify="right")
    base = got["unsigned"]["p50"]
    for label, m in got.items():
        table.add_row(label, f"{m['p50']:.3f}", f"{m['p99']:.3f}", f"{m['cpu']:.3f}",
                      f"{m['agents']:.3f}", f"{(m['p50'] - base) * 1000:+.0f} us")  # fmt: skip
    console.print(table)


async def _alternate(sets: Any, services: Any, runs: int, warmup: int, hm: Any, pipeline: Any,
                     client_cls: Any, runner_cls: Any) -> dict[str, dict[str, float]]:  # fmt: skip
    from conclave.security.signing import Signer

    gateway = hm.gateway()
    clients = {"unsigned": client_cls(), "signed": client_cls(signer=Signer(SECRET))}
    pipes = {}
    for label, ports in sets.items():
        runners = {n: runner_cls(n, f"http://127.0.0.1:{p}", client=clients[label],
                                 timeout_s=2.0) for n, p in ports.items()}  # fmt: skip
        pipes[label] = pipeline(gateway, runners=runners)
    lat: dict[str, list[float]] = {k: [] for k in pipes}
    cpu: dict[str, float] = dict.fromkeys(pipes, 0.0)
    agents0: dict[str, float] = {}
    try:
        for i in range(warmup + runs):
            if i == warmup:
                agents0 = {k: sum(sum(p.cpu_times()[:2]) for p in v) for k, v in services.items()}
            for label in ("unsigned", "signed") if i % 2 == 0 else ("signed", "unsigned"):
                c0 = time.process_time()
                took = await hm.one_run(pipes[label])
                if i >= warmup:
                    lat[label].append(took)
                    cpu[label] += time.process_time() - c0
        agents1 = {k: sum(sum(p.cpu_times()[:2]) for p in v) for k, v in services.items()}
    finally:
        for pipe in pipes.values():
            await pipe.aclose()
        for client in clients.values():
            await client.aclose()
    out = {}
    for label in pipes:
        arr = sorted(lat[label])
        out[label] = {"p50": statistics.median(arr), "p99": _p(arr, 0.99),
                      "cpu": cpu[label] * 1000.0 / runs,
                      "agents": (agents1[label] - agents0[label]) * 1000.0 / runs}  # fmt: skip
    return out


def main() -> None:
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop every process started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--e2e", action="store_true", help="also time HTTP-mode runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--e2e-runs", type=int, default=150)
    args = parser.parse_args()
    markets = {"sim": run_bodies("sim")}
    if CANDLES.is_dir():
        markets["real"] = run_bodies("real")
    else:
        console.print(f"[yellow]{CANDLES} absent: real-market bodies skipped[/]")
    table = Table(title="signed agent calls per run, microseconds (p50 / p99); target: the"
                  " orchestrator's signing under 100 us a run")  # fmt: skip
    for col in ("bodies of one run", "orchestrator signs 9", "target 100", "agents verify (sum)",
                "slowest verify", "run waits (sign + slowest)"):  # fmt: skip
        table.add_column(col, justify="right")
    payloads = {f"{k}: {sum(map(len, v)) / 1000:.0f} KB": v for k, v in markets.items()}
    payloads["empty (the fixed part)"] = [b""] * 9
    for label, payload in payloads.items():
        got = time_sides(payload, args.runs, args.warmup)
        cells = [f"{statistics.median(got[k]) * 1e6:.1f} / {_p(got[k], 0.99) * 1e6:.1f}"
                 for k in ("sign", "verify", "slowest", "path")]  # fmt: skip
        sign = statistics.median(got["sign"])
        table.add_row(label, cells[0], "met" if sign < 100e-6 else "OVER", *cells[1:])
    console.print(table)
    for name, bodies in markets.items():
        sizes = [len(b) for b in bodies]
        digest = digest_seconds(bodies, max(100, args.runs // 10))
        console.print(
            f"{name}: bodies of one run {sum(sizes):,} bytes (min {min(sizes):,}, max"
            f" {max(sizes):,}); SHA-256 of them at both ends: {digest * 1e6:.1f} us per run"
            f" ({sum(sizes) * 2 / digest / 1e9:.2f} GB/s)"
        )
    if args.e2e:
        e2e(args.rounds, args.e2e_runs, 20)
    console.print(f"python {sys.version.split()[0]}; command: "
                  f"{shlex.join([sys.executable, *sys.argv])}")  # fmt: skip


if __name__ == "__main__":
    main()
