"""Dump every agent's values on the shared candle files, or compare two dumps bit for bit.

    python scripts/agent_values.py dump OUT.npz [--data ../shared/data] [--live 25]
    python scripts/agent_values.py compare BEFORE.npz AFTER.npz

``dump`` loads each candle file of ``DATA/candles`` as the backtester does (higher timeframes
and, for BTC, the dated headlines), then records for each agent of the registry:

- the series pass over the whole history (`Agent.series`): score, confidence and every per-bar
  column, plus the last bar's evidence as canonical JSON;
- the live path (`Agent.run`) at ``--live`` seeded bars: score, confidence, status and the
  evidence as canonical JSON.

``compare`` checks that both dumps hold the same keys and that every array is equal bit for bit
(NaN equal to NaN, -0.0 distinct from 0.0); it prints how many values it compared and exits 1
on any difference. Refactors that must not change what the agents say run ``dump`` at the
commit before and after, then ``compare``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

NEWS_FILE = "news/btc_price_moving_news_2010-2022.csv"
NOW_ISO = "2000-01-01T00:00:00.000Z"  # the live path's timestamp; fixed so it compares


def _history(path: Path, data: Path, agents: dict[str, Any]) -> Any:
    from conclave.backtest.history import load_history
    from conclave.market.sources.files import FileSource, parse_file_name
    from conclave.news.sources import FileNewsSource

    source = FileSource(path)
    name = parse_file_name(path.name)
    if name is None or name.timeframe is None:
        raise SystemExit(f"{path.name}: no symbol and timeframe in the file name")
    symbol, timeframe = name.symbol, name.timeframe.name
    news = FileNewsSource(data / NEWS_FILE) if symbol.startswith("BTC") else None
    return asyncio.run(
        load_history(
            source, symbol, timeframe, agents, start_ms=None, end_ms=None, now_ms=0,
            news_source=news,
        )
    )  # fmt: skip


def _json(value: Any) -> np.ndarray[Any, Any]:
    return np.asarray(json.dumps(value, sort_keys=True, default=repr))


def dump(out: Path, data: Path, live: int) -> int:
    from conclave.agents import REGISTRY

    agents = {name: cls() for name, cls in REGISTRY.items()}
    analysis = {n: a for n, a in agents.items() if n != "risk-manager"}
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    files = sorted((data / "candles").glob("*.csv"))
    for k, path in enumerate(files):
        history = _history(path, data, agents)
        n = len(history.candles)
        rng = np.random.default_rng(k)
        stops = np.unique(rng.integers(1, n + 1, size=min(live, n)))
        for name, agent in analysis.items():
            key = f"{path.stem}/{name}"
            full = history.input_for(agent)
            res = agent.series(full)
            arrays[f"{key}/series/score"] = np.asarray(res.score)
            arrays[f"{key}/series/confidence"] = np.asarray(res.confidence)
            arrays[f"{key}/series/status"] = np.asarray(f"{res.status}:{res.reason}")
            arrays[f"{key}/series/evidence"] = _json(res.evidence)
            for col, values in res.columns.items():
                arrays[f"{key}/series/col/{col}"] = np.asarray(values)
            scores, confs, evid = [], [], []
            for stop in stops:
                got = agent.run(full.window(int(stop), n), now_iso=NOW_ISO)
                scores.append(got.score)
                confs.append(got.confidence)
                evid.append(json.dumps([got.status, got.reason, got.payload], sort_keys=True))
            arrays[f"{key}/live/stops"] = stops
            arrays[f"{key}/live/score"] = np.asarray(scores)
            arrays[f"{key}/live/confidence"] = np.asarray(confs)
            arrays[f"{key}/live/evidence"] = np.asarray(evid)
        print(f"[{k + 1}/{len(files)}] {path.name}: {n} bars", file=sys.stderr)
    np.savez_compressed(out, **arrays)
    print(f"{len(arrays)} arrays from {len(files)} files -> {out}")
    return 0


def _same(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind == "f":  # bit for bit: NaN payloads and signed zeros count
        return bool(np.array_equal(a.view(np.uint8), b.view(np.uint8)))
    return bool(np.array_equal(a, b))


def compare(before: Path, after: Path) -> int:
    a, b = np.load(before), np.load(after)
    keys_a, keys_b = set(a.files), set(b.files)
    bad = [f"only in {before.name}: {k}" for k in sorted(keys_a - keys_b)]
    bad += [f"only in {after.name}: {k}" for k in sorted(keys_b - keys_a)]
    values = 0
    for key in sorted(keys_a & keys_b):
        x, y = a[key], b[key]
        values += x.size
        if not _same(x, y):
            bad.append(f"differs: {key}")
    print(f"compared {len(keys_a & keys_b)} arrays, {values:,} values")
    for line in bad[:50]:
        print(line)
    print("identical" if not bad else f"{len(bad)} differences")
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("out", type=Path)
    d.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data")
    d.add_argument("--live", type=int, default=25)
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.cmd == "dump":
        return dump(args.out, args.data, args.live)
    return compare(args.before, args.after)


if __name__ == "__main__":
    raise SystemExit(main())
