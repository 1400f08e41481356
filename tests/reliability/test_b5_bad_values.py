"""RELIABILITY B5: NaN/inf/negative prices, high < low and negative volume are rejected (the
nautilus invariants); volume 0 is allowed and the volume agent goes neutral.

Pass figure of the row: **0 agent outputs with NaN; ``score`` in [-1, 1] and ``confidence``
in [0, 100] for 100 % of outputs.** The real pipeline (gateway validation, nine agents) runs
over a source whose every window carries corrupted rows of each kind, for 100 seeded runs
over four timeframes: every one of the 900 outputs is counted, and every window the gateway
hands the agents is checked to hold no row that breaks an invariant. The pure rejection rule
itself is the 10,000-example property in ``tests/market/test_validation.py``.
"""

from __future__ import annotations

import math

import numpy as np

from conclave.agents import REGISTRY
from conclave.market.candles import Candles
from conclave.market.gateway import MarketGateway
from conclave.market.validation import reject_invalid_rows
from conclave.pipeline import Pipeline
from conclave.timeframes import Timeframe, iso_ms
from tests.agents.helpers import make_input, random_candles

AS_OF = 1_699_920_000_000 + 60_000  # a minute after a day boundary: every bar here closed
RUNS = 100
TIMEFRAMES = ("5m", "1h", "4h", "1d")
#: Each corruption writes one bad value into a row (column, value); "high<low" halves the
#: high below the low, "zero bar" sets all four prices to 0 (no other invariant sees it).
CORRUPTIONS: tuple[tuple[str, float] | str, ...] = (
    ("open", math.nan), ("high", math.inf), ("low", -math.inf), ("close", math.nan),
    ("close", -5.0), ("open", 0.0), ("volume", math.nan), ("volume", -1.0), "high<low",
    "zero bar",
)  # fmt: skip


class CorruptSource:
    """A random walk for any request whose windows carry 2-10 % corrupted rows, every kind
    present, and 5 % rows with volume 0 (valid); the same request gives the same window."""

    name = "corrupt"
    simulated = True

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.corrupted = 0

    async def get_candles(
        self, symbol: str, timeframe: Timeframe | str, limit: int, end: int | None = None
    ) -> Candles:
        tf = Timeframe.parse(timeframe)
        last_open = tf.floor(AS_OF if end is None else end) - tf.ms
        rng = np.random.default_rng([self.seed, tf.ms, limit])
        walk = random_candles(int(rng.integers(2**31)), limit)
        cols = {k: np.array(v, copy=True) for k, v in walk.columns().items()}
        cols["open_time"] = last_open - tf.ms * np.arange(limit - 1, -1, -1, dtype=np.int64)
        cols["volume"][rng.random(limit) < 0.05] = 0.0
        # the newest 3 bars stay clean: without them the window would be stale (B4), not bad
        bad = rng.choice(limit - 3, size=max(len(CORRUPTIONS), limit // 12), replace=False)
        for i, row in enumerate(bad):
            corruption = CORRUPTIONS[i % len(CORRUPTIONS)]
            if corruption == "high<low":
                cols["high"][row] = cols["low"][row] * 0.5
            elif corruption == "zero bar":
                for price in ("open", "high", "low", "close"):
                    cols[price][row] = 0.0
            else:
                assert isinstance(corruption, tuple)
                cols[corruption[0]][row] = corruption[1]
        self.corrupted += len(bad)
        return Candles.from_arrays(symbol, tf, cols["open_time"], cols["open"], cols["high"],
                                   cols["low"], cols["close"], cols["volume"])  # fmt: skip

    async def aclose(self) -> None:
        return None


def broken_rows(c: Candles) -> int:
    """Rows breaking an invariant, checked here rather than by the code under test: every
    value finite, prices above 0, low <= open, close <= high, volume >= 0."""
    o, h, lo, cl, v = c.open, c.high, c.low, c.close, c.volume
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(np.stack([o, h, lo, cl, v])).all(axis=0)
        ok &= (o > 0) & (h > 0) & (lo > 0) & (cl > 0) & (v >= 0)
        ok &= (lo <= np.minimum(o, cl)) & (h >= np.maximum(o, cl))
    return int(np.count_nonzero(~ok))


def in_range(score: float | None, confidence: float | None) -> bool:
    """Both present, score in [-1, 1] and confidence in [0, 100] (NaN is in no range)."""
    if score is None or confidence is None:
        return False
    return -1.0 <= score <= 1.0 and 0.0 <= confidence <= 100.0


async def test_b5_no_agent_output_is_nan_or_out_of_range_over_800_outputs() -> None:
    """B5 (pass figure: 0 agent outputs with NaN; score in [-1, 1], confidence in [0, 100]
    for 100 % of outputs): 100 runs (seeds 0-99, in turn on 5m, 1h, 4h, 1d) over windows
    with corrupted rows of every kind: the 800 outputs (eight agents a run; news-sentiment,
    without a news source, answers ``no_data`` and no value) are counted, 0 NaN, 0 out of
    range, 0 failed steps; every window given to the agents holds no invalid row and its
    report names the rejected ones."""
    outputs, bad_outputs, failed_steps = 0, 0, []
    silent = "news-sentiment"  # no news source here: no_data, no value
    for run_no in range(RUNS):
        source = CorruptSource(seed=run_no)
        tf = TIMEFRAMES[run_no % len(TIMEFRAMES)]
        async with Pipeline(MarketGateway(source)) as pipe:
            limit, higher = pipe.plan(tf)
            snap = await pipe.gateway.snapshot("BTCUSDT", tf, higher=higher, limit=limit,
                                               higher_limit=pipe.higher_limit(tf),
                                               as_of_ms=AS_OF)  # fmt: skip
            for name, window in snap.candles.items():
                assert broken_rows(window) == 0, (run_no, name)
            assert snap.reports[tf].rejected, run_no  # the bad rows were there, and removed
            run = await pipe.run(None, "BTCUSDT", tf, as_of_ms=AS_OF, now_iso=iso_ms(AS_OF))
        assert source.corrupted > 0
        for step in run.steps.values():
            if (step.agent, step.status) == (silent, "no_data"):
                continue
            if step.status != "ok":
                failed_steps.append(f"run {run_no} {step.agent}: {step.status} {step.error}")
                continue
            outputs += 1
            bad_outputs += 0 if in_range(step.score, step.confidence) else 1
    assert failed_steps == []
    assert (outputs, bad_outputs) == (RUNS * (len(REGISTRY) - 1), 0)


def test_b5_volume_zero_is_valid_and_the_volume_agent_goes_neutral() -> None:
    """B5: bars with volume 0 are valid (none rejected); over a 600-bar walk whose volume is
    all 0, order-flow (the agent reading volume) answers ok with score 0 and confidence 0,
    and every other agent answers in range."""
    walk = random_candles(3, 600)
    cols = dict(walk.columns())
    cols["volume"] = np.zeros(600)
    if cols.get("taker_buy_volume") is not None:
        cols["taker_buy_volume"] = np.zeros(600)
    candles = walk.with_columns(cols)
    assert broken_rows(candles) == 0
    _, rejected = reject_invalid_rows(candles)
    assert rejected == ()
    for name, cls in REGISTRY.items():
        out = cls().run(make_input(candles), now_iso=iso_ms(AS_OF))
        assert in_range(out.score, out.confidence), name
        if name == "order-flow":
            assert (out.status, out.score, out.confidence) == ("ok", 0.0, 0.0)
