"""Wall time of the command line as a person starts it: help, ``data show``, ``run``.

Each command is the installed ``conclave`` script, started as its own process in an empty
temporary directory (no ``.env``; ``DATABASE_URL``, ``REDIS_URL`` and ``CONCLAVE_*`` left
out, so the embedded defaults apply), ``--runs`` times after one warm-up. It prints the
median, min and max wall time against the targets of issue 16 item 6, and the median CPU
time of the process (user + sys): on a loaded machine wall time grows, CPU time much less.

- ``conclave --help``: under 0.3 s;
- ``conclave data show --source sim --symbol BTCUSDT --timeframe 1h``: under 0.6 s;
- ``conclave run`` on the file source (``../shared/data/candles``, BTCUSDT 1h as of
  2022-10-11T11:00): under 1 s; skipped, with a line saying so, when the data is absent.

``--baseline REV`` measures the tree of git revision REV too (``git archive`` into a temporary
directory, the same script run with ``PYTHONPATH`` there; the repository is left as it is),
alternating with this checkout run by run, so both columns come from one sitting; the
table then adds the ratios of this checkout's median wall and CPU times to the baseline's.
``--imports`` also prints, per command and tree, the packages that take longest to import
(``python -X importtime``, one run, self time summed per top-level package).

    .venv/bin/python benchmarks/cli.py [--runs 15] [--baseline HEAD] [--imports]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
CANDLES = ROOT.parent / "shared/data/candles"
SCRIPT = Path(sys.executable).parent / "conclave"
console = Console(width=120)


@dataclass(frozen=True, slots=True)
class Case:
    """One command line and the wall time it should stay under."""

    name: str
    args: tuple[str, ...]
    target_s: float


SERIES = ("--symbol", "BTCUSDT", "--timeframe", "1h")
CASES = (
    Case("conclave --help", ("--help",), 0.3),
    Case("data show --source sim", ("data", "show", "--source", "sim", *SERIES), 0.6),
    Case(
        "run, file source",
        ("run", *SERIES, "--source", f"file:{CANDLES}", "--as-of", "2022-10-11T11:00"),
        1.0,
    ),
)


def child_env(tree: Path) -> dict[str, str]:
    """This environment without the settings a developer may have set, importing ``tree``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CONCLAVE_") and k not in ("DATABASE_URL", "REDIS_URL")}  # fmt: skip
    env["PYTHONPATH"] = str(tree / "src")
    return env


def timed(args: tuple[str, ...], tree: Path, cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one ``conclave ARGS`` process; exits if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([str(SCRIPT), *args], cwd=cwd, env=child_env(tree), timeout=120,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"conclave {' '.join(args)} exited {done.returncode}:\n"
                         f"{done.stderr.decode(errors='replace')[-2000:]}")  # fmt: skip
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def import_profile(args: tuple[str, ...], tree: Path, cwd: Path, top: int = 12) -> str:
    """The ``top`` packages by import time (self time summed per top-level package)."""
    cmd = [sys.executable, "-X", "importtime", str(SCRIPT), *args]
    done = subprocess.run(cmd, cwd=cwd, env=child_env(tree), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=120)  # fmt: skip
    per: collections.Counter[str] = collections.Counter()
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+\d+ \| \s*(\S+)", line)
        if m:
            parts = m.group(2).split(".")
            per[".".join(parts[:2]) if parts[0] == "conclave" else parts[0]] += int(m.group(1))
    total = sum(per.values()) / 1000
    shown = ", ".join(f"{name} {us / 1000:.0f}" for name, us in per.most_common(top))
    return f"{total:.0f} ms in all; {shown}"


def tree_of(rev: str, folder: Path) -> Path:
    """The files of git revision ``rev`` under ``folder``."""
    out = folder / "baseline"
    out.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True,
                             capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs of each command")
    parser.add_argument("--baseline", help="a git revision measured beside the working tree")
    parser.add_argument("--imports", action="store_true", help="print the import breakdown")
    args = parser.parse_args()
    cases = list(CASES)
    if not CANDLES.is_dir():
        console.print(f"skipped 'run, file source': no candles at {CANDLES}")
        cases = cases[:2]
    load0 = os.getloadavg()
    times: dict[tuple[str, str], list[tuple[float, float]]] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"now": ROOT}
        if args.baseline:
            trees = {args.baseline: tree_of(args.baseline, Path(tmp)), "now": ROOT}
        cwd = Path(tmp) / "cwd"
        cwd.mkdir()
        for case in cases:
            for tree in trees.values():  # warm-up: bytecode written, files in the page cache
                timed(case.args, tree, cwd)
            for _ in range(args.runs):
                for label, tree in trees.items():  # alternating: both see the same load
                    times[(case.name, label)].append(timed(case.args, tree, cwd))
        profiles = {}
        if args.imports:
            profiles = {(c.name, label): import_profile(c.args, tree, cwd)
                        for c in cases for label, tree in trees.items()}  # fmt: skip
    report(cases, list(trees), times, args.runs)
    for (name, label), text in profiles.items():
        console.print(f"imports, {name}, {label}: {text}", highlight=False, soft_wrap=True)
    before, after = (" ".join(f"{v:.2f}" for v in load) for load in (load0, os.getloadavg()))
    console.print(f"load average (1, 5, 15 min) before: {before}; after: {after}")
    console.print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}", highlight=False)


def report(
    cases: list[Case],
    labels: list[str],
    times: dict[tuple[str, str], list[tuple[float, float]]],
    runs: int,
) -> None:
    """The table; with a baseline, the ratios of this tree's medians to the baseline's."""
    table = Table(title=f"conclave commands, wall time in s ({runs} runs each after a warm-up)")
    cols = ["command", "tree", "median", "min", "max", "CPU median", "target"]
    if len(labels) > 1:
        cols.insert(-1, "now / base (wall, CPU)")
    for col in cols:
        table.add_column(col, justify="left" if col in ("command", "tree") else "right")
    for case in cases:
        medians = {}
        for label in labels:
            walls = [w for w, _ in times[(case.name, label)]]
            cpus = [c for _, c in times[(case.name, label)]]
            med = statistics.median(walls)
            medians[label] = (med, statistics.median(cpus))
            verdict = f"< {case.target_s}: {'ok' if med < case.target_s else 'MISS'}"
            figures = (med, min(walls), max(walls), statistics.median(cpus))
            row = [case.name, label, *(f"{v:.3f}" for v in figures)]
            if len(labels) > 1:
                base = medians[labels[0]]
                ratio = f"{med / base[0]:.2f}, {medians[label][1] / base[1]:.2f}"
                row.append(ratio if label == "now" else "")
            table.add_row(*row, verdict if label == "now" else "")
    console.print(table)


if __name__ == "__main__":
    main()
