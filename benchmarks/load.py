"""Load and overload (RELIABILITY F1, F2) with locust as a library, on loopback.

Starts the system as its own processes (`benchmarks/soak.py`'s `system`: the nine agent
services and ``conclave serve`` in HTTP mode, or the orchestrator alone with ``--mode
monolithic``; SQLite; the simulated market), then drives ``POST /pipeline/run`` from locust
users that send their next run as soon as the last one is answered:

1. **F1**: ``--users`` (50) for ``--seconds``: answers by status, failures (any 5xx, or a
   transport error), p50/p99 (target p99 <= 500 ms, 0 5xx) and runs/s, the capacity;
2. **F2**: twice the users for ``--seconds``: the orchestrator runs a few at once, queues
   the next ones and sheds what is over ``CONCLAVE_API__MAX_RUNS_IN_FLIGHT``
   (``--max-in-flight``, default a quarter over ``--users``) with 503 ``overloaded`` (or
   429), and a shed user waits the ``Retry-After`` it was given; the shed answers' p99
   (target < 50 ms), the admitted runs' p99 (target <= 2x F1's), any other 5xx;
3. **recovery**: F1's users again; seconds until the p50 of a 2 s window is back within
   1.2x F1's p50 (target <= 10 s).

Prints one table and, with ``--json``, one JSON object (the suite's short run reads it).
The locust process is this one (gevent); the servers are other processes, stopped by PID.

``--baseline REV`` runs the same phases against the tree of git revision REV first (``git
archive``, ``PYTHONPATH``), ``--also-running N`` against the working tree with N runs executing
at once, then the working tree itself (``--running``: its ``CONCLAVE_API__MAX_RUNS_RUNNING``,
runs executing at once; the others wait in the admission queue), and prints them side by
side.

    .venv/bin/python benchmarks/load.py [--users 50] [--seconds 60] [--mode http|monolithic]
        [--db sqlite|postgres] [--baseline REV] [--also-running N] [--running N]
"""

from __future__ import annotations

# locust patches the standard library with gevent: it must be imported first
from locust import FastHttpUser, constant, events, task  # isort: skip
from locust.env import Environment  # isort: skip

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api import database
from soak import system

BODY = {"symbol": "BTCUSDT", "timeframe": "1h"}
console = Console(width=120, stderr=True)


@dataclass
class Phase:
    """What one phase's answers were: latency (ms) by kind, statuses, when each came."""

    ok: list[float] = field(default_factory=list)
    shed: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    failures: int = 0
    done_at: list[tuple[float, float]] = field(default_factory=list)  # (time, ms) of ok runs
    seconds: float = 0.0

    def figures(self) -> dict[str, Any]:
        rate = len(self.ok) / self.seconds if self.seconds else 0.0
        return {"runs": len(self.ok), "runs_per_s": rate, "p50_ms": _pct(self.ok, 50),
                "p99_ms": _pct(self.ok, 99), "shed": len(self.shed),
                "shed_p99_ms": _pct(self.shed, 99), "failures": self.failures,
                "statuses": self.statuses}  # fmt: skip


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


CURRENT = Phase()


class RunUser(FastHttpUser):
    """One user: a run, then the next as soon as it is answered."""

    wait_time = constant(0)

    @task
    def post_run(self) -> None:
        t0 = time.perf_counter()
        with self.client.post("/pipeline/run", json=BODY, catch_response=True) as resp:
            took = (time.perf_counter() - t0) * 1000.0
            code = resp.status_code
            CURRENT.statuses[str(code)] = CURRENT.statuses.get(str(code), 0) + 1
            if code == 201:
                CURRENT.ok.append(took)
                CURRENT.done_at.append((time.monotonic(), took))
                resp.success()
            elif code == 429 or (code == 503 and b"overloaded" in (resp.content or b"")):
                CURRENT.shed.append(took)
                resp.success()
                wait = resp.headers.get("retry-after", "1")
                gevent.sleep(float(wait) if wait.isdigit() else 1.0)  # as told, like a client
            else:
                CURRENT.failures += 1
                resp.failure(f"HTTP {code}")


def drive(host: str, users: int, seconds: float) -> Phase:
    global CURRENT
    CURRENT = Phase()
    env = Environment(user_classes=[RunUser], host=host, events=events)
    runner = env.create_local_runner()
    t0 = time.monotonic()
    runner.start(users, spawn_rate=users)
    gevent.sleep(seconds)
    runner.quit()
    CURRENT.seconds = time.monotonic() - t0
    return CURRENT


def recovery_s(phase: Phase, start: float, target_ms: float) -> float:
    """Seconds from ``start`` until a 2 s window's p50 is within ``target_ms``."""
    if not phase.done_at:
        return float("nan")
    times = np.array([t for t, _ in phase.done_at]) - start
    ms = np.array([m for _, m in phase.done_at])
    for lo in np.arange(0.0, times.max(), 0.5):
        window = ms[(times >= lo) & (times < lo + 2.0)]
        if window.size >= 5 and np.median(window) <= target_ms:
            return float(lo + 2.0)
    return float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--mode", choices=("http", "monolithic"), default="http")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--pg", default="postgresql+asyncpg://postgres@127.0.0.1:5432")
    parser.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    parser.add_argument("--max-in-flight", type=int,
                        help="CONCLAVE_API__MAX_RUNS_IN_FLIGHT, runs running and queued "
                             "(default: a quarter over --users: F1 is admitted whole, even "
                             "while a finished run's slot is being handed back, and F2 is "
                             "shed)")  # fmt: skip
    parser.add_argument(
        "--running", type=int, help="CONCLAVE_API__MAX_RUNS_RUNNING (default: the setting's)"
    )
    parser.add_argument("--baseline", help="a git revision measured first, in the same sitting")
    parser.add_argument("--also-running", type=int, action="append", default=[], metavar="N",
                        help="the working tree with CONCLAVE_API__MAX_RUNS_RUNNING=N too, "
                             "measured before it (N = the limit: every admitted run at once, "
                             "as before the queue)")  # fmt: skip
    args = parser.parse_args()
    limit = args.max_in_flight or args.users + args.users // 4 + 1
    extra = {"CONCLAVE_API__MAX_RUNS_IN_FLIGHT": str(limit)}
    now = extra | ({"CONCLAVE_API__MAX_RUNS_RUNNING": str(args.running)} if args.running else {})
    sittings: dict[str, dict[str, str]] = {"now": now}
    with tempfile.TemporaryDirectory() as tmp:
        if args.baseline:  # its settings may not know the new names: the limit alone
            tree = tree_of(args.baseline, Path(tmp))
            sittings = {args.baseline: extra | {"PYTHONPATH": str(tree / "src")}, "now": now}
        for n in args.also_running:
            sittings = {f"now running={n}": extra | {"CONCLAVE_API__MAX_RUNS_RUNNING": str(n)}
                        } | sittings  # fmt: skip
        if args.baseline:
            sittings = {args.baseline: sittings.pop(args.baseline)} | sittings
        outs = {label: sitting(args, label, env) for label, env in sittings.items()}
    out = outs["now"] | {"limit": limit}
    if len(outs) > 1:
        out["others"] = {label: o for label, o in outs.items() if label != "now"}
        side_by_side(outs)
    if args.json:
        print(json.dumps(out))


def sitting(args: argparse.Namespace, label: str, extra: dict[str, str]) -> dict[str, Any]:
    """Warm-up, F1, F2 and recovery against a fresh system of the tree ``label``."""
    data_dir = Path(tempfile.mkdtemp(prefix="load_"))
    with database(args.db, args.pg) as url, system(args.mode, url, data_dir, extra) as (api, _):
        host = f"http://127.0.0.1:{api}"
        drive(host, 4, 3.0)  # warm-up
        console.print(f"{label}: F1, {args.users} users for {args.seconds:g} s")
        f1 = drive(host, args.users, args.seconds)
        console.print(f"{label}: F2, {2 * args.users} users for {args.seconds:g} s")
        f2 = drive(host, 2 * args.users, args.seconds)
        console.print(f"{label}: recovery, {args.users} users for {min(args.seconds, 30):g} s")
        start = time.monotonic()
        after = drive(host, args.users, min(args.seconds, 30.0))
    f1f, f2f = f1.figures(), f2.figures()
    back = recovery_s(after, start, 1.2 * float(f1f["p50_ms"]))
    out = {"tree": label, "mode": args.mode, "db": args.db, "users": args.users,
           "seconds": args.seconds, "settings": {k: v for k, v in extra.items()
                                                 if k.startswith("CONCLAVE_")},
           "f1": f1f, "f2": f2f, "recovery_s": back, "after": after.figures(),
           "load_average": os.getloadavg()[0]}  # fmt: skip
    report(out)
    return out


def tree_of(rev: str, folder: Path) -> Path:
    """The files of git revision ``rev`` under ``folder`` (``git archive``)."""
    out = folder / rev
    out.mkdir(parents=True)
    root = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(root), "archive", rev], check=True,
                             capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def side_by_side(outs: dict[str, dict[str, Any]]) -> None:
    table = Table(title="F1 and F2 side by side (one sitting, one after the other)")
    for col in ("tree", "F1 runs/s", "F1 p50", "F1 p99", "F2 runs/s", "F2 admitted p99",
                "F2 shed", "F2 shed p99", "recovery s", "load avg"):  # fmt: skip
        table.add_column(col, justify="right")
    for label, o in outs.items():
        f1, f2 = o["f1"], o["f2"]
        table.add_row(label, f"{f1['runs_per_s']:.0f}", f"{f1['p50_ms']:.1f}",
                      f"{f1['p99_ms']:.1f}", f"{f2['runs_per_s']:.0f}", f"{f2['p99_ms']:.1f}",
                      str(f2["shed"]), f"{f2['shed_p99_ms']:.1f}", f"{o['recovery_s']:.1f}",
                      f"{o['load_average']:.2f}")  # fmt: skip
    console.print(table)
    console.print(f"command: {' '.join(sys.argv)}")


def report(out: dict) -> None:  # type: ignore[type-arg]
    f1, f2 = out["f1"], out["f2"]
    table = Table(title=f"POST /pipeline/run under load, {out['tree']}, {out['mode']} mode, "
                  f"{out['db']}, {out['seconds']:g} s a phase, {out['settings']}")  # fmt: skip
    for col in (
        "phase",
        "users",
        "runs/s",
        "p50 ms",
        "p99 ms",
        "shed",
        "shed p99 ms",
        "other failures",
        "statuses",
        "target",
    ):
        table.add_column(col, justify="right")
    table.add_row(
        "F1",
        str(out["users"]),
        f"{f1['runs_per_s']:.0f}",
        f"{f1['p50_ms']:.1f}",
        f"{f1['p99_ms']:.1f}",
        str(f1["shed"]),
        "-",
        str(f1["failures"]),
        json.dumps(f1["statuses"]),
        "ok" if f1["failures"] == 0 and f1["p99_ms"] <= 500 else "MISS (p99 <= 500, 0 5xx)",
    )
    ok2 = (
        f2["failures"] == 0
        and (f2["shed"] == 0 or f2["shed_p99_ms"] < 50)
        and f2["p99_ms"] <= 2 * f1["p99_ms"]
    )
    table.add_row(
        "F2",
        str(2 * out["users"]),
        f"{f2['runs_per_s']:.0f}",
        f"{f2['p50_ms']:.1f}",
        f"{f2['p99_ms']:.1f}",
        str(f2["shed"]),
        f"{f2['shed_p99_ms']:.1f}",
        str(f2["failures"]),
        json.dumps(f2["statuses"]),
        "ok" if ok2 else "MISS (shed < 50 ms, admitted p99 <= 2x F1)",
    )
    console.print(table)
    console.print(
        f"recovery to 1.2x F1's p50 after the overload: {out['recovery_s']:.1f} s "
        f"(target <= 10 s); load average {os.getloadavg()[0]:.2f}; 2 cores shared by "
        "the load generator and the servers"
    )


if __name__ == "__main__":
    main()
