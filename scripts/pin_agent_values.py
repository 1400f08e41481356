"""Pin what the nine agents say on fixed inputs, so a speed-up can prove it changed nothing.

    python scripts/pin_agent_values.py [--data ../shared/data] [--out FILE]
    python scripts/pin_agent_values.py --check   # compare the current code with the file

Generated once by the code BEFORE a performance change (issue 16 item 2), then held by
tests/agents/test_pinned_values.py. The inputs are built the way a live run builds them
(`MarketGateway.snapshot` then `PipelineContext.input_for`, so each agent sees its own
lookback and the higher bars it declares), at fixed "as of" times:

- a simulated market (`SimSource`, seeded): every number is stored in the file (score,
  confidence, status, reason and the payload as canonical JSON; JSON floats round-trip
  exactly, so equality is bit for bit, -0.0 and NaN included);
- real Binance candles from ``DATA/candles`` when present: the same record, but stored as a
  SHA-256 of its canonical JSON (so no value derived from the shared data is committed).

For each market it also pins `Agent.series` over a longer history (score, confidence and
every per-bar column, hashed from their raw bytes, plus the last bar's evidence), the
backtester's path, which shares the indicators with the live one.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests/agents/data/pinned_values.json"  # --out's default
NOW_ISO = "2025-01-01T00:00:00.000Z"
HOUR = 3_600_000
#: the simulated market: seed, symbol, timeframe and the "as of" times of the live runs
SIM_SEED, SIM_SYMBOL, SIM_TF = 11, "BTCUSDT", "1h"
SIM_AS_OF = [1_650_000_000_000 // HOUR * HOUR + k * 997 * HOUR for k in range(6)]
#: real files (under DATA/candles) and their "as of" times, each one minute after a close
REAL = {
    "binance_BTCUSDT_1h_20170817-20221011.csv": ("BTCUSDT", "1h", [
        1_546_300_860_000, 1_577_836_860_000, 1_609_459_260_000, 1_640_995_260_000,
        1_665_486_060_000]),
    "binance_ETHUSDT_4h_20170817-20221011.csv": ("ETHUSDT", "4h", [
        1_577_836_860_000, 1_640_995_260_000]),
}  # fmt: skip
SERIES_BARS = 3000  # the series pass runs over this many bars up to the first "as of"


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, allow_nan=True)


def _sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


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
        eq = 10_000 * (1 + 0.1 * np.sin(np.arange(t.shape[0]) / 9.0))
        return {"account": AccountState("acct-1", t, eq, open_exposure=5_000.0)}
    return {}


async def _contexts(source: Any, symbol: str, tf: str, times: list[int], limit: int) -> list[Any]:
    from conclave.agents import REGISTRY
    from conclave.market.gateway import MarketGateway
    from conclave.pipeline import PipelineContext
    from conclave.pipeline.context import fetch_plan

    agents = [cls() for cls in REGISTRY.values()]
    lookback, higher = fetch_plan(agents, tf)
    gateway = MarketGateway(source, resample="resample")
    out = []
    for as_of in times:
        snap = await gateway.snapshot(symbol, tf, higher=higher, limit=max(limit, lookback),
                                      as_of_ms=as_of, require_fresh=False)  # fmt: skip
        # the windows as the exchange gave them (not filled, B3): the pins hold the agents'
        # arithmetic, whatever the pipeline does with gaps
        out.append(PipelineContext(None, snap.symbol, snap.timeframe, snap.as_of_ms,
                                   dict(snap.candles), source=snap.source,
                                   simulated=snap.simulated))  # fmt: skip
    await gateway.aclose()
    return out


def _live(ctx: Any) -> dict[str, dict[str, Any]]:
    from conclave.agents import REGISTRY

    got: dict[str, dict[str, Any]] = {}
    for name, cls in REGISTRY.items():
        agent = cls()
        data = replace(ctx.input_for(agent), **_extras(name, ctx.as_of_ms))
        res = agent.run(data, now_iso=NOW_ISO)
        got[name] = {"score": res.score, "confidence": res.confidence, "status": res.status,
                     "reason": res.reason, "payload": _canon(res.payload)}  # fmt: skip
    return got


def _series(ctx: Any) -> dict[str, dict[str, Any]]:
    from conclave.agents import REGISTRY, AgentInput

    got: dict[str, dict[str, Any]] = {}
    for name, cls in REGISTRY.items():
        agent = cls()
        higher = {tf: ctx.candles[tf] for tf in agent.needs.higher_timeframes(ctx.timeframe)}
        data = AgentInput(ctx.symbol, ctx.timeframe, ctx.as_of_ms, ctx.base, higher,
                          **_extras(name, ctx.as_of_ms))  # fmt: skip
        out = agent.series(data)
        arrays = {"score": out.score, "confidence": out.confidence,
                  **{f"col/{k}": v for k, v in sorted(out.columns.items())}}  # fmt: skip
        got[name] = {k: _sha(np.ascontiguousarray(v).tobytes()) for k, v in arrays.items()}
        got[name]["evidence"] = _sha(_canon(out.evidence))
        got[name]["status"] = f"{out.status}:{out.reason}"
    return got


def _hashed(live: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {name: _sha(_canon(rec)) for name, rec in live.items()}


def compute(data: Path | None) -> dict[str, Any]:
    """Every pinned record the current code gives (the real part only when ``data`` exists)."""
    from conclave.market.sources.files import FileSource
    from conclave.market.sources.sim import SimSource

    sim = SimSource(SIM_SEED, now_ms=lambda: max(SIM_AS_OF))
    ctxs = asyncio.run(_contexts(sim, SIM_SYMBOL, SIM_TF, SIM_AS_OF, 0))
    long = asyncio.run(_contexts(sim, SIM_SYMBOL, SIM_TF, SIM_AS_OF[:1], SERIES_BARS))[0]
    pinned: dict[str, Any] = {
        "sim": {"live": {str(c.as_of_ms): _live(c) for c in ctxs}, "series": _series(long)},
        "real": {},
    }
    if data is None or not (data / "candles").is_dir():
        return pinned
    for file, (symbol, tf, stamps) in REAL.items():
        src = FileSource(data / "candles" / file)
        ctxs = asyncio.run(_contexts(src, symbol, tf, stamps, 0))
        long = asyncio.run(_contexts(src, symbol, tf, stamps[:1], SERIES_BARS))[0]
        pinned["real"][file] = {
            "live": {str(c.as_of_ms): _hashed(_live(c)) for c in ctxs},
            "series": _series(long),
        }
    return pinned


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="compare with --out, write nothing")
    args = parser.parse_args()
    got = compute(args.data if args.data.is_dir() else None)
    if args.check:
        want = json.loads(args.out.read_text())
        same = _canon(got) == _canon({k: want[k] for k in got})
        print("identical" if same else "DIFFERENT", file=sys.stderr)
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(got, indent=1, sort_keys=True, allow_nan=True) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
