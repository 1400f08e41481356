"""Signed agent calls: what signing and verifying cost per call and per nine-call run.

Builds the nine real ``POST /run`` bodies of one pipeline run (simulated BTCUSDT 1h market,
data inline, `conclave.pipeline.wire.encode_input`), then times, over ``--runs`` runs
after a warm-up, `Signer.headers` plus `Verifier.verify` of each body (the orchestrator's
and the agent's share together), and the same for an empty body (the fixed part: HMAC,
nonce, replay memory). Prints p50 and p99 per call and per run (target: under 0.1 ms per
run), and the share of the body digest (SHA-256 over the body).

    .venv/bin/python benchmarks/signing.py [--runs 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import shlex
import statistics
import sys
import time

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
console = Console(width=110)


def run_bodies() -> list[bytes]:
    """The nine ``/run`` bodies of one simulated pipeline run, as the orchestrator sends them."""
    from conclave.market.gateway import MarketGateway
    from conclave.market.sources.sim import SimSource
    from conclave.pipeline import Pipeline
    from conclave.pipeline.wire import encode_input

    async def build() -> list[bytes]:
        gateway = MarketGateway(SimSource(now_ms=lambda: SIM_AS_OF))
        async with Pipeline(gateway) as pipe:
            limit, higher = pipe.plan("1h")
            snap = await pipe.gateway.snapshot(
                "BTCUSDT", "1h", higher=higher, limit=limit, as_of_ms=SIM_AS_OF
            )
            ctx = await pipe.context(snap, None)
            return [encode_input(ctx.input_for(a)) for a in pipe.agents.values()]

    return asyncio.run(build())


def time_runs(bodies: list[bytes], runs: int, warmup: int) -> tuple[list[float], list[float]]:
    """Seconds per run and per call of sign + verify over ``bodies`` (every call verified)."""
    signer, verifier = Signer(SECRET), Verifier([SECRET])
    per_run: list[float] = []
    per_call: list[float] = []
    for i in range(warmup + runs):
        t_run = time.perf_counter()
        for body in bodies:
            t0 = time.perf_counter()
            h = signer.headers("POST", "/run", body)
            verdict = verifier.verify(
                "POST", "/run", body, timestamp=h[HEADER_TIMESTAMP], nonce=h[HEADER_NONCE],
                signature=h[HEADER_SIGNATURE],
            )  # fmt: skip
            t1 = time.perf_counter()
            if not verdict.ok:
                raise SystemExit(f"verification failed: {verdict.reason}")
            if i >= warmup:
                per_call.append(t1 - t0)
        if i >= warmup:
            per_run.append(time.perf_counter() - t_run)
    return per_run, per_call


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


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()
    bodies = run_bodies()
    sizes = [len(b) for b in bodies]
    table = Table(title="sign + verify (orchestrator and agent together), microseconds")
    for col in ("bodies", "call p50", "call p99", "run p50", "run p99", "target"):
        table.add_column(col, justify="right")
    real_run = 0.0
    for label, payload in (("real (9 bodies)", bodies), ("empty (9 bodies)", [b""] * 9)):
        per_run, per_call = time_runs(payload, args.runs, args.warmup)
        run_p50 = statistics.median(per_run)
        real_run = real_run or run_p50
        table.add_row(label, f"{statistics.median(per_call) * 1e6:.1f}",
                      f"{_p(per_call, 0.99) * 1e6:.1f}", f"{run_p50 * 1e6:.1f}",
                      f"{_p(per_run, 0.99) * 1e6:.1f}",
                      "ok (< 100)" if run_p50 < 100e-6 else "OVER 100")  # fmt: skip
    console.print(table)
    digest = digest_seconds(bodies, max(100, args.runs // 10))
    console.print(
        f"bodies of one run: {sum(sizes):,} bytes (min {min(sizes):,}, max {max(sizes):,});"
        f" SHA-256 of them at both ends: {digest * 1e6:.1f} us per run"
        f" ({digest / real_run:.0%} of sign + verify)"
    )
    console.print(f"python {sys.version.split()[0]}; command: "
                  f"{shlex.join([sys.executable, *sys.argv])}")  # fmt: skip


if __name__ == "__main__":
    main()
