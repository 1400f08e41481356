"""A4 (RELIABILITY.md): the exchange's weight under load; the client throttle is the subject.

Pass figure: peak ``X-MBX-USED-WEIGHT-1M`` <= 4,800 (80 % of Binance's 6,000), 0 429s over
10 minutes, no request with ``limit`` > 1000; with 3 replicas, 9 agents, 20 symbols and
every timeframe.

Starts Stub-BX (the fake Binance, `tests.fakes.FakeBinance`) on loopback, enforcing
Binance's rules: weight per one-minute window of the wall clock, 429 + ``Retry-After`` past
``--limit``, 418 bans for requests sent inside that pause. It serves the 20 symbol names
from the same recorded BTCUSDT rows relabelled to end now (`tests.fakes.binance_live`: the
recorded data covers fewer symbols and ends in 2022). Then ``--replicas`` ``conclave serve``
processes (the nine agents in process; SQLite files of their own, or ``--pg``) share one
Redis (``--redis``: the rate limiter and the candle cache), and a driver posts runs over
every (symbol, timeframe) round robin over them, ``--per-replica`` at a time each, as fast as
they answer, for ``--minutes`` (`tests.reliability.a4_fleet`).

The cache TTL defaults to 0.001 s, so every run fetches: the worst case for the budget
(the default 30 s cache leaves little for the throttle to do; ``--cache-ttl 30`` shows it).
Figures are Stub-BX's own counts, not our client's: requests, weight per window (peak, and
p99 of the header values it sent), the most weight in any sliding 60 s, 429s, 418s and
requests sent inside a pause, the largest ``limit``; then the runs by answer (a run the
throttle held past its deadline is ``201 no_signal weight_budget``), and each replica's CPU.

    .venv/bin/python benchmarks/a4_weight.py --minutes 10 [--redis redis://127.0.0.1:6379/15]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.fakes import FakeBinance  # noqa: E402
from tests.fakes.binance_weight import WeightRules  # noqa: E402
from tests.reliability.a4_fleet import (  # noqa: E402
    SYMBOLS,
    TIMEFRAMES,
    drive,
    exchange_figures,
    fleet,
    outcomes,
)

SHARED = ROOT.parent / "shared" / "data"
console = Console(width=120)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its children."""
    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        t = p.cpu_times()
        total += t.user + t.system
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--per-replica", type=int, default=3, help="runs in flight per replica")
    parser.add_argument("--limit", type=int, default=6000, help="the exchange's weight/minute")
    parser.add_argument("--share", type=float, default=0.8, help="our share of --limit")
    parser.add_argument("--cache-ttl", type=float, default=0.001)
    parser.add_argument(
        "--redis", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/15"
    )
    parser.add_argument("--pg", default=None, help="a PostgreSQL URL (default: SQLite files)")
    args = parser.parse_args()
    command = "benchmarks/a4_weight.py " + " ".join(sys.argv[1:])
    load_before = os.getloadavg()
    fake = FakeBinance(SHARED, clock=time.time, weights=WeightRules(limit=args.limit))
    fake.serve_live(SYMBOLS)
    with tempfile.TemporaryDirectory(prefix="a4-") as tmp, fake.running():
        with fleet(
            Path(tmp), fake.base_url, args.redis, replicas=args.replicas,
            weight_limit=args.limit, budget_share=args.share, cache_ttl_s=args.cache_ttl,
            database_url=args.pg, extra_env={"CONCLAVE_LOG_LEVEL": "WARNING"},
        ) as replicas:  # fmt: skip
            cpu0 = [cpu_s(r.pid) for r in replicas]
            t0 = time.monotonic()
            answers = drive(replicas, args.minutes * 60, per_replica=args.per_replica)
            wall = time.monotonic() - t0
            cpu = [cpu_s(r.pid) - c for r, c in zip(replicas, cpu0, strict=True)]
        figures = exchange_figures(fake)
        would_ban = fake.would_ban
    load_after = os.getloadavg()
    budget = int(args.limit * args.share)

    table = Table(title=f"A4: Stub-BX's counts over {wall:.0f} s ({command})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("requests to the exchange", f"{figures.requests} {figures.by_path}"),
        ("windows (minutes) seen", str(len(figures.weight_by_window))),
        ("peak weight in a minute window", f"{figures.peak_window} (budget {budget})"),
        ("p99 X-MBX-USED-WEIGHT-1M sent", f"{figures.p99_reported:.0f}"),
        (
            "weight per window",
            " ".join(str(w) for _, w in sorted(figures.weight_by_window.items())),
        ),
        ("most weight in any sliding 60 s", str(figures.peak_sliding)),
        ("429s / 418s", f"{figures.status[429]} / {figures.status[418]}"),
        ("requests inside a Retry-After", str(would_ban)),
        ("largest limit parameter", str(figures.max_limit)),
        ("markets", f"{len(SYMBOLS)} symbols x {len(TIMEFRAMES)} timeframes"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)

    runs = Table(title=f"runs: {len(answers)} ({len(answers) / wall:.1f}/s)")
    runs.add_column("answer")
    runs.add_column("runs", justify="right")
    for name, n in sorted(outcomes(answers).items(), key=lambda kv: -kv[1]):
        runs.add_row(name, str(n))
    took = np.array([a.seconds for a in answers if a.status]) if answers else np.zeros(1)
    runs.add_row("p50 / p99 s", f"{np.percentile(took, 50):.3f} / {np.percentile(took, 99):.3f}")
    console.print(runs)
    for i, c in enumerate(cpu):
        console.print(f"replica {i}: CPU {c:.1f} s ({100 * c / wall:.0f} % of one core)")
    console.print(
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
        f"(1 min; {os.cpu_count()} cores)"
    )
    ok = (
        figures.peak_window <= budget
        and figures.throttled == 0
        and figures.max_limit <= 1000
        and not any(a.status >= 500 or a.status == 0 for a in answers)
    )
    console.print(f"A4 {'holds' if ok else 'FAILS'}: peak {figures.peak_window} <= {budget}, "
                  f"{figures.throttled} 429/418, largest limit {figures.max_limit}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
