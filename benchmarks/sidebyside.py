"""Run one benchmark against two source trees in one sitting and print them side by side.

A benchmark script that supports ``--json`` (print its figures as one JSON object on the
last line of stdout) and ``--baseline SRC`` calls `side_by_side`: it starts the script as a
child process per tree (``PYTHONPATH=SRC`` for the baseline, this checkout's ``src`` for
now), alternating A, B, A, B for ``rounds`` rounds so drift on a shared machine hits both
alike, then prints each figure's median per tree and the ratio now / baseline, with the
load average before and after and the ``conclave`` package each child imported.

    mkdir -p /tmp/base && git archive <commit> | tar -x -C /tmp/base
    .venv/bin/python benchmarks/backtest.py --baseline /tmp/base/src
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

SRC = Path(__file__).resolve().parents[1] / "src"


def _child(script: Path, args: Sequence[str], src: Path) -> dict[str, float | str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, str(script), *args, "--json"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} (PYTHONPATH={src}) failed:\n{out.stderr[-3000:]}")
    got: dict[str, float | str] = json.loads(out.stdout.strip().splitlines()[-1])
    return got


def side_by_side(
    script: Path,
    args: Sequence[str],
    baseline: Path,
    *,
    rounds: int,
    console: Console,
    higher_is_better: Sequence[str] = (),
) -> None:
    """Run ``script args --json`` ``rounds`` times per tree, alternating; print the table.

    Numeric figures are reported as the median over rounds; ``higher_is_better`` names the
    rates (the ratio column then still reads now / baseline).
    """
    load0 = os.getloadavg()
    runs: dict[str, list[dict[str, float | str]]] = {"baseline": [], "now": []}
    for _ in range(rounds):
        runs["baseline"].append(_child(script, args, baseline))
        runs["now"].append(_child(script, args, SRC))
    load1 = os.getloadavg()
    keys = [k for k, v in runs["now"][0].items() if isinstance(v, int | float)]
    table = Table(title=f"{script.name} {' '.join(args)}: median of {rounds} alternating rounds")
    for col in ("figure", "baseline", "now", "now / baseline"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    for key in keys:
        vals = {
            tree: statistics.median(float(r[key]) for r in rs if key in r)
            for tree, rs in runs.items()
            if any(key in r for r in rs)
        }
        if "now" not in vals:
            continue
        base = vals.get("baseline")
        ratio = f"{vals['now'] / base:.3f}x" if base else ""
        mark = " (rate)" if key in higher_is_better else ""
        table.add_row(
            key + mark, "" if base is None else f"{base:,.4g}", f"{vals['now']:,.4g}", ratio
        )
    console.print(table)
    for tree, rs in runs.items():
        console.print(f"{tree}: imported {rs[0].get('package', '?')}")
    before, after = (" ".join(f"{v:.2f}" for v in load) for load in (load0, load1))
    console.print(f"load average (1, 5, 15 min) before: {before}; after: {after}")
