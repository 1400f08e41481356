"""The decision's scale on the shared BTC and ETH 1h files (issue 10, items 4 and 5).

For each file, runs the whole backtest with the default `DecisionConfig` (or the weights
given) and prints the distribution of |conviction| over the bars where a decision was made,
the pairwise correlation of the directional agents' scores (`skill.score_correlation`), and
pooled over both files the thresholds the rule gives: buy/sell at the 80th percentile of
|conviction|, strong at the 97th, rounded to two decimals. Nothing here looks at returns.

    .venv/bin/python benchmarks/decision_scale.py [--data ../shared/data/candles]
                                                  [--weights market-structure=1,...]
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from pathlib import Path

import numpy as np

from conclave.agents import REGISTRY
from conclave.backtest.engine import run_backtest
from conclave.backtest.history import load_history
from conclave.backtest.settings import BacktestSettings
from conclave.backtest.skill import score_correlation
from conclave.market.sources.files import FileSource
from conclave.pipeline.decision import DecisionConfig

FILES = {
    "BTCUSDT": "binance_BTCUSDT_1h_20170817-20221011.csv",
    "ETHUSDT": "binance_ETHUSDT_1h_20170817-20221011.csv",
}
PCTS = (50, 75, 80, 90, 95, 97, 99, 100)
BUY_PCT, STRONG_PCT = 80, 97
NOW_MS = 1_700_000_000_000  # after both files' last bar; files are read whole


def _row(label: str, values: np.ndarray) -> str:
    return f"| {label} | " + " | ".join(f"{v:.3f}" for v in values) + " |"


async def main(data: Path, weights: dict[str, float]) -> None:
    agents = {name: REGISTRY[name]() for name in REGISTRY}
    config = DecisionConfig(weights=weights) if weights else DecisionConfig()
    settings = BacktestSettings(decision=config)
    print("weights:", {a: config.weight(a) for a in REGISTRY.directional})
    head = " | ".join("max" if p == 100 else f"p{p}" for p in PCTS)
    table = [f"| abs(conviction) | {head} |", "|---" * (len(PCTS) + 1) + "|"]
    pooled = []
    for symbol, name in FILES.items():
        source = FileSource(data / name)
        try:
            history = await load_history(source, symbol, "1h", agents, start_ms=None,
                                         end_ms=None, now_ms=NOW_MS)  # fmt: skip
        finally:
            await source.aclose()
        result = run_backtest(history, agents, settings)
        made = np.isfinite(result.conviction)
        conviction = np.abs(result.conviction[made])
        pooled.append(conviction)
        table.append(_row(f"{symbol} ({int(made.sum()):,} bars)", np.percentile(conviction, PCTS)))
        corr = score_correlation(result)
        names = list(corr)
        print(f"\n{symbol}: correlation of scores over bars where both are usable")
        print(" " * 20 + "".join(f"{n[:9]:>10s}" for n in names))
        for a in names:
            cells = ("       n/a" if corr[a][b] is None else f"{corr[a][b]:10.2f}" for b in names)
            print(f"{a:>20s}" + "".join(cells))
    both = np.concatenate(pooled)
    table.append(_row(f"both ({both.size:,} bars)", np.percentile(both, PCTS)))
    print("\n" + "\n".join(table))
    buy, strong = np.percentile(both, [BUY_PCT, STRONG_PCT])
    print(f"\nrule: buy/sell at p{BUY_PCT} = {buy:.4f} -> {buy:.2f};"
          f" strong at p{STRONG_PCT} = {strong:.4f} -> {strong:.2f}")  # fmt: skip
    print("\n" + shlex.join([Path(sys.executable).name, *sys.argv]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/candles"))
    parser.add_argument("--weights", default="", help="AGENT=NUMBER,... (default: none)")
    args = parser.parse_args()
    given = dict(kv.split("=", 1) for kv in args.weights.split(",") if kv.strip())
    asyncio.run(main(args.data, {k.strip(): float(v) for k, v in given.items()}))
