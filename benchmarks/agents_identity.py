"""Prove a speed-up of the agents changed no output bit: this checkout against a baseline tree.

Runs the nine agents in two child processes, one importing the baseline tree
(``PYTHONPATH=SRC``) and one this checkout's ``src``, on the same inputs, and compares
every output field with exact equality (floats by their bits: -0.0 is not 0.0):

- live: `Agent.run` on the input a pipeline run gives each agent (its own lookback of the
  run's bars as views, the higher bars closed by then, headlines and an account for the
  two agents that read them) at every bar of the last ``--bars`` bars of the BTC 1h file,
  at ``--sample`` bars drawn across its whole history, at the last ``--bars`` bars of the
  ETH 4h file and of a seeded random walk with flat stretches, zero volumes and a taker
  column (the edge cases); compared: score, confidence, status, reason and payload;
- series: `Agent.series` over each whole market (the backtester's path): score,
  confidence, every per-bar column, status, reason and the last bar's evidence.

Prints, per agent and path, the records compared, those not identical and the largest
absolute difference of the scores, confidences and payload numbers; exit status 1 when any
record differs (2 when the data is missing).

    mkdir -p /tmp/base && git archive HEAD | tar -x -C /tmp/base
    .venv/bin/python benchmarks/agents_identity.py --baseline /tmp/base/src [--bars 2000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import shlex
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
CANDLES = ROOT.parent / "shared/data/candles"
FILES = {
    "BTCUSDT 1h": ("binance_BTCUSDT_1h_20170817-20221011.csv", "BTCUSDT", "1h"),
    "ETHUSDT 4h": ("binance_ETHUSDT_4h_20170817-20221011.csv", "ETHUSDT", "4h"),
}
NOW_ISO = "2025-01-01T00:00:00.000Z"
HOUR = 3_600_000
HIGHER_BARS = 600  # higher bars handed over (more than any agent reads)
console = Console(width=120)

Record = tuple[Any, ...]


# -- the child: compute every record with whichever `conclave` is on the path ------------


def _view(candles: Any, start: int, stop: int) -> Any:
    """Bars ``start:stop`` as views (as the pipeline's context cuts them)."""
    return replace(candles, **{k: v[start:stop] for k, v in candles.columns().items()})


def _random_walk(seed: int, n: int) -> Any:
    """A 1h random walk with flat stretches, zero volumes and a taker-buy column."""
    from conclave.market.candles import Candles

    rng = np.random.default_rng(seed)
    steps = rng.normal(0.0, 0.01, n)
    steps[rng.random(n) < 0.08] = 0.0  # flat bars
    for start in rng.integers(0, n - 40, 6).tolist():  # long flat stretches
        steps[start : start + int(rng.integers(5, 40))] = 0.0
    close = 100.0 * np.exp(np.cumsum(steps))
    open_ = np.r_[close[0], close[:-1]]
    wick = np.abs(rng.normal(0.0, 0.004, n)) * (steps != 0)
    high = np.maximum(open_, close) * (1 + wick)
    low = np.minimum(open_, close) * (1 - wick)
    volume = rng.gamma(2.0, 50.0, n)
    volume[rng.random(n) < 0.05] = 0.0
    taker = volume * rng.uniform(0.2, 0.8, n)
    t = 1_600_000_000_000 // HOUR * HOUR + HOUR * np.arange(n, dtype=np.int64)
    return Candles.from_arrays("BTCUSDT", "1h", t, open_, high, low, close, volume, taker)


def _extras(name: str, as_of: int) -> dict[str, Any]:
    """Headlines and an account for the two agents that read them (fixed, relative to as_of)."""
    from conclave.agents import AccountState
    from conclave.news.headline import Headline

    if name == "news-sentiment":
        return {"news": [
            Headline(as_of - 30 * HOUR, "Bitcoin rallies to an all-time high", assets=("BTC",)),
            Headline(as_of - 9 * HOUR, "Exchange hacked, bitcoin stolen", assets=("BTC",)),
            Headline(as_of - 2 * HOUR, "ETF approval lifts crypto markets", assets=()),
        ]}  # fmt: skip
    if name == "risk-manager":
        t = as_of - HOUR * np.arange(400, 0, -7, dtype=np.int64)
        eq = 10_000 * (1 + 0.1 * np.sin(np.arange(t.shape[0]) / 9.0 + as_of / 7e9))
        return {"account": AccountState("acct-1", t, eq, open_exposure=5_000.0)}
    return {}


def _markets(args: argparse.Namespace) -> dict[str, tuple[Any, list[int]]]:
    """Each market's bars and the bars at which the live runs are made."""
    from conclave.market.sources.file_formats import read_candles

    rng = np.random.default_rng(20_260_101)
    out: dict[str, tuple[Any, list[int]]] = {}
    for label, (file, symbol, tf) in FILES.items():
        c = read_candles(CANDLES / file, symbol=symbol, timeframe=tf)
        n = len(c)
        ts = set(range(max(0, n - args.bars), n))
        if label == "BTCUSDT 1h":
            ts.update(rng.integers(0, n, args.sample).tolist())
        out[label] = (c, sorted(ts))
    walk = _random_walk(7, max(args.bars, 700) + 600)
    out["random walk 1h"] = (walk, list(range(len(walk) - args.bars, len(walk))))
    return out


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, allow_nan=True)


def child(args: argparse.Namespace) -> None:
    """Compute every live and series record; pickle them to ``args.dump``."""
    from conclave.agents import REGISTRY, AgentInput
    from conclave.market.resample import resample

    agents = {name: cls() for name, cls in REGISTRY.items()}
    live: dict[tuple[str, int, str], Record] = {}
    series: dict[tuple[str, str], dict[str, Any]] = {}
    took = 0.0
    for label, (c, ts) in _markets(args).items():
        tf = c.timeframe.name
        close = c.close_time
        higher_tfs = sorted({h for a in agents.values() for h in a.needs.higher_timeframes(tf)})
        higher = {h: resample(c, h) for h in higher_tfs}
        for t in ts:
            as_of = int(close[t])
            for name, agent in agents.items():
                keep = agent.lookback(tf)
                hi: dict[str, Any] = {}
                for h in agent.needs.higher_timeframes(tf):
                    hc = higher[h]
                    stop = int(np.searchsorted(hc.close_time, as_of, side="right"))
                    hi[h] = _view(hc, max(0, stop - HIGHER_BARS), stop)
                data = AgentInput(c.symbol, tf, as_of, _view(c, max(0, t + 1 - keep), t + 1),
                                  hi, **_extras(name, as_of))  # fmt: skip
                t0 = time.perf_counter()
                res = agent.run(data, now_iso=NOW_ISO)
                took += time.perf_counter() - t0
                live[(label, t, name)] = (res.score, res.confidence, res.status, res.reason,
                                          _canon(res.payload), res.payload)  # fmt: skip
        as_of = int(close[-1])
        for name, agent in agents.items():
            hi = {h: higher[h] for h in agent.needs.higher_timeframes(tf)}
            out = agent.series(AgentInput(c.symbol, tf, as_of, c, hi, **_extras(name, as_of)))
            series[(label, name)] = {
                "score": out.score, "confidence": out.confidence,
                **{f"column {k}": np.asarray(v) for k, v in sorted(out.columns.items())},
                "status": f"{out.status}: {out.reason}", "evidence": _canon(out.evidence),
            }  # fmt: skip
    import conclave

    with open(args.dump, "wb") as fh:
        pickle.dump({"live": live, "series": series, "run_s": took,
                     "package": str(Path(conclave.__file__).parent)}, fh)  # fmt: skip


# -- the parent: run both trees, compare --------------------------------------------------


def _bits(x: Any) -> bytes:
    return np.float64(x).tobytes() if isinstance(x, float) else repr(x).encode()


def _numbers(value: Any, path: str = "") -> dict[str, float]:
    """Every number in a payload by its path."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return {}
    if isinstance(value, int | float):
        return {path: float(value)}
    if isinstance(value, dict):
        return {p: v for k, x in value.items() for p, v in _numbers(x, f"{path}.{k}").items()}
    if isinstance(value, list | tuple):
        return {p: v for i, x in enumerate(value) for p, v in _numbers(x, f"{path}[{i}]").items()}
    return {path: math.nan}


def _diff(a: float, b: float) -> float:
    if math.isnan(a) and math.isnan(b):
        return 0.0
    return abs(a - b) if not (math.isnan(a) or math.isnan(b)) else math.inf


def _arr_diff(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf
    both_nan = np.isnan(a) & np.isnan(b)
    d = np.where(both_nan, 0.0, np.abs(a - b))
    return float(np.nan_to_num(d, nan=math.inf).max(initial=0.0))


def compare(base: dict[str, Any], now: dict[str, Any]) -> int:
    """Print the comparison table; return the number of records that differ."""
    table = Table(title="baseline vs now, every output field compared bit for bit")
    for col in ("agent", "path", "records", "not identical", "max |d score|",
                "max |d confidence|", "max |d payload number|"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("agent", "path") else "right")
    rows: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0, 0.0, 0.0, 0.0])
    examples: list[str] = []
    if set(base["live"]) != set(now["live"]) or set(base["series"]) != set(now["series"]):
        console.print("[red]the two runs computed different sets of records[/red]")
        return 1
    for key, b in base["live"].items():
        a = now["live"][key]
        row = rows[(key[2], "live (run)")]
        row[0] += 1
        same = all(_bits(x) == _bits(y) for x, y in zip(a[:5], b[:5], strict=True))
        if not same:
            row[1] += 1
            if len(examples) < 10:
                examples.append(f"live {key}: now {a[:4]} baseline {b[:4]}")
        row[2] = max(row[2], _diff(a[0], b[0]))
        row[3] = max(row[3], _diff(a[1], b[1]))
        na, nb = _numbers(a[5]), _numbers(b[5])
        for p in set(na) | set(nb):
            d = _diff(na[p], nb[p]) if p in na and p in nb else math.inf
            row[4] = max(row[4], d)
    for key, b in base["series"].items():
        a = now["series"][key]
        row = rows[(key[1], "series")]
        row[0] += 1
        same = a.keys() == b.keys() and all(
            np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes()
            if isinstance(b[k], np.ndarray)
            else a[k] == b[k]
            for k in b
        )
        if not same:
            row[1] += 1
            examples.append(f"series {key}: fields differ")
        row[2] = max(row[2], _arr_diff(a["score"], b["score"]))
        row[3] = max(row[3], _arr_diff(a["confidence"], b["confidence"]))
        cols = [k for k in b if k.startswith("column ")]
        d = max((_arr_diff(a.get(k, []), b[k]) for k in cols), default=0.0)
        row[4] = max(row[4], d if a["evidence"] == b["evidence"] else math.inf)
    bad = 0
    for (name, path), (count, diff, ds, dc, dp) in sorted(rows.items()):
        bad += int(diff)
        table.add_row(name, path, f"{int(count):,}", str(int(diff)), f"{ds:g}", f"{dc:g}",
                      f"{dp:g}")  # fmt: skip
    console.print(table)
    for line in examples:
        console.print(line, markup=False)
    return bad


def _run_child(src: Path, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--dump", str(out),
           "--bars", str(args.bars), "--sample", str(args.sample)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} (PYTHONPATH={src}) failed:\n{done.stderr[-3000:]}")
    with open(out, "rb") as fh:
        got: dict[str, Any] = pickle.load(fh)
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, help="the source tree to compare with (its src)")
    ap.add_argument("--bars", type=int, default=2000, help="live runs at the last BARS bars")
    ap.add_argument("--sample", type=int, default=1000, help="more BTC 1h bars, drawn at random")
    ap.add_argument("--dump", type=Path, help=argparse.SUPPRESS)  # the child's output
    args = ap.parse_args()
    if not CANDLES.is_dir():
        print(f"data not found: {CANDLES}", file=sys.stderr)
        return 2
    if args.dump is not None:
        child(args)
        return 0
    if args.baseline is None:
        ap.error("--baseline SRC is required (a source tree, e.g. from git archive)")
    cmd = [".venv/bin/python", "benchmarks/agents_identity.py", *sys.argv[1:]]
    console.print(f"$ {shlex.join(cmd)}", markup=False)
    with tempfile.TemporaryDirectory(prefix="agents_identity_") as tmp:
        base = _run_child(args.baseline.resolve(), args, Path(tmp) / "base.pkl")
        now = _run_child(ROOT / "src", args, Path(tmp) / "now.pkl")
    for tree, got in (("baseline", base), ("now", now)):
        console.print(f"{tree}: imported {got['package']}; Agent.run total {got['run_s']:.2f} s")
    bad = compare(base, now)
    live = len(now["live"])
    verdict = "IDENTICAL" if bad == 0 else f"{bad} records DIFFER"
    console.print(f"{live:,} live records and {len(now['series'])} series: {verdict}")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
