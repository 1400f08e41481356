"""RELIABILITY B2: 0-10 % duplicated rows in shuffled order come out strictly ascending and
unique, each set of duplicates merged first/max/min/last.

Pass figure of the row: **output equals ``sorted(dedup(input))``; 0 failures** over 10,000
hypothesis examples. The duplicates here are *revisions*, not copies: each repeats an open
time with values of its own (as an exchange revising a bar would send), so the merge rule
is exercised on every example, and the expected output is built independently of
`sort_and_merge_duplicates`: rows grouped by open time in input order, then open of the
first, high max, low min, close/volume/taker-buy/trades of the last.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conclave.market.candles import Candles
from conclave.market.validation import sort_and_merge_duplicates, validate
from conclave.timeframes import HOUR_MS, Timeframe

H1 = Timeframe.parse("1h")
T0 = 1_600_000_000_000 // HOUR_MS * HOUR_MS
EXAMPLES = 10_000


def _bars(rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
    """``n`` valid bars (low <= open, close <= high) with volumes and trade counts."""
    p = rng.uniform(1.0, 1e5, (n, 3))
    lo, hi = p.min(axis=1), p.max(axis=1)
    volume = rng.uniform(0.0, 1e4, n)
    volume[rng.random(n) < 0.1] = 0.0  # a bar without trades is valid data too
    trades = rng.integers(0, 10_000, n)
    return [{"open": float(p[i, 1]), "high": float(hi[i]), "low": float(lo[i]),
             "close": float(p[i, 2]), "volume": float(volume[i]),
             "taker_buy_volume": float(volume[i] / 2), "trades": int(trades[i])}
            for i in range(n)]  # fmt: skip


def _bar(low: float, high: float, close: float) -> dict[str, Any]:
    """One bar opening at ``high``."""
    return {"open": high, "high": high, "low": low, "close": close, "volume": 1.0,
            "taker_buy_volume": 0.5, "trades": 1}  # fmt: skip


def _candles(times: list[int], bars: list[dict[str, Any]]) -> Candles:
    col = {k: [b[k] for b in bars] for k in bars[0]}
    return Candles.from_arrays(
        "BTCUSDT",
        H1,
        times,
        col["open"],
        col["high"],
        col["low"],
        col["close"],
        col["volume"],
        taker_buy_volume=col["taker_buy_volume"],
        trades=col["trades"],
    )


def sorted_dedup(times: list[int], bars: list[dict[str, Any]]) -> Candles:
    """The reference: group by open time in input order, merge first/max/min/last, sort."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for t, bar in zip(times, bars, strict=True):
        groups.setdefault(t, []).append(bar)
    out_times = sorted(groups)
    merged = []
    for t in out_times:
        g = groups[t]
        merged.append({"open": g[0]["open"], "high": max(b["high"] for b in g),
                       "low": min(b["low"] for b in g), "close": g[-1]["close"],
                       "volume": g[-1]["volume"], "taker_buy_volume": g[-1]["taker_buy_volume"],
                       "trades": g[-1]["trades"]})  # fmt: skip
    return _candles(out_times, merged)


@st.composite
def messy_series(draw: st.DrawFn) -> tuple[list[int], list[dict[str, Any]], int]:
    """Unique bars, plus revisions of 0-10 % of them, shuffled; and how many revisions.

    Hypothesis draws the sizes and a seed; numpy draws the values from it (drawing each
    float through hypothesis made 10,000 examples take minutes)."""
    n = draw(st.integers(1, 80))
    k = draw(st.integers(0, n // 10))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    bars = _bars(rng, n + k)
    times = [T0 + i * HOUR_MS for i in range(n)]
    times += [times[int(i)] for i in rng.integers(0, n, k)]
    # mostly shuffled; sometimes in order with each revision right after its bar (overlapping
    # pages): sorted input holding duplicates must be merged too
    order = rng.permutation(n + k) if draw(st.booleans()) else np.argsort(times, kind="stable")
    return [times[i] for i in order], [bars[i] for i in order], k


def test_b2_shuffled_revisions_come_out_as_sorted_dedup_input() -> None:
    """B2 (pass figure: output equals sorted(dedup(input)); 0 failures): over 10,000
    hypothesis examples of 1-80 bars with 0-10 % revised duplicates, shuffled, the output
    equals the independently built reference column by column, open times strictly
    ascending, and the count of merged rows is the number of revisions; 0 failures."""
    checked: list[int] = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
    @given(messy_series())
    def one(case: tuple[list[int], list[dict[str, Any]], int]) -> None:
        times, bars, revisions = case
        out, merged = sort_and_merge_duplicates(_candles(times, bars))
        expected = sorted_dedup(times, bars)
        assert merged == revisions
        assert np.all(np.diff(out.open_time) > 0)
        assert out.equals(expected)
        checked.append(revisions)

    one()
    assert len(checked) >= EXAMPLES
    with_revisions = sum(1 for k in checked if k > 0)
    print(f"B2: {len(checked)} examples, {with_revisions} with revisions, 0 failures")
    assert with_revisions >= EXAMPLES // 4  # series of 10+ bars: 4 in 10 examples


def test_b2_validate_merges_before_anything_else() -> None:
    """B2 through `validate` (the gateway's path): a revision with a lower low and a later
    close, sent before the original, is merged into one bar; the report counts it."""
    times = [T0 + HOUR_MS, T0, T0 + HOUR_MS]
    bars = [_bar(50.0, 52.0, 51.0), _bar(40.0, 45.0, 44.0), _bar(49.0, 53.0, 50.0)]
    out, report = validate(_candles(times, bars), T0 + 3 * HOUR_MS)
    assert report.duplicates_merged == 1
    assert out.equals(sorted_dedup(times, bars))
    assert (out.open[1], out.high[1], out.low[1], out.close[1]) == (52.0, 53.0, 49.0, 50.0)
