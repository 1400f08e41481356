"""A5 and A6 at the Binance client, against Stub-BX on loopback, with their figures asserted.

A5: the gaps between retries are drawn with full jitter, uniform on [0, min(cap, base *
2^attempt)]. Three unequal gaps (what `tests/market/test_binance.py` checks) are also what
plain exponential backoff gives (0.5, 1, 2 s), so here 17 failing fetches give 51 gaps and
the gaps *at the same attempt* must spread over their window. A6: the elapsed time of a
fetch against a server that stalls is the read timeout, within a stated tolerance.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

import pytest

from conclave.errors import ExchangeTimeoutError, ExchangeUnavailableError
from conclave.market.sources.binance import BinanceSource
from conclave.settings import BinanceSettings
from tests.fakes import FakeBinance, FakeClock, Fault

FETCHES = 17  # x 3 retries = 51 gaps (the issue asks for jitter shown over 50 retries)
BASE_S, CAP_S = 0.5, 4.0
#: A6: how late the give-up may come after the read timeout on a loaded machine (the
#: row allows +-100 ms at 5 s; the timer fires within a few ms on a quiet machine, later
#: with both cores busy). A read timeout x1.6 gives up at the 1.5 s deadline instead.
A6_TOLERANCE_S = 0.2


def _source(stub: FakeBinance, clock: FakeClock | None = None, **overrides: Any) -> BinanceSource:
    settings = BinanceSettings(base_url=stub.base_url, **overrides)
    if clock is None:
        return BinanceSource(settings, rng=random.Random(11))
    return BinanceSource(settings, rng=random.Random(11), sleep=clock.sleep, clock=clock)


async def test_a5_retry_gaps_are_fully_jittered_over_51_retries(stub: FakeBinance) -> None:
    """A5 (pass figure: <= 4 attempts per fetch, gaps jittered, not equal): 17 fetches
    against a standing 503 make 4 attempts each; the 51 gaps lie in their full-jitter
    windows [0, min(4, 0.5 * 2^k)] and spread over them: at each attempt k the 17 gaps
    are all distinct, their spread (max - min) covers at least half the window, and the
    mean of all gaps as a fraction of their window is 0.5 +- 0.15 (uniform; plain or
    "equal" jitter backoff gives 1.0 or 0.75)."""
    stub.rule = lambda path, params: Fault(status=503) if path.endswith("klines") else None
    clock = FakeClock()
    src = _source(stub, clock, retry_base_s=BASE_S, retry_cap_s=CAP_S, deadline_s=1e6)
    per_fetch: list[list[float]] = []
    try:
        for _ in range(FETCHES):
            before = len(clock.sleeps)
            with pytest.raises(ExchangeUnavailableError):
                await src.get_candles("BTCUSDT", "1h", 10)
            per_fetch.append(clock.sleeps[before:])
    finally:
        await src.aclose()
    assert len(stub.requests()) == 4 * FETCHES  # <= 4 attempts per fetch
    assert all(len(gaps) == 3 for gaps in per_fetch)
    fractions = []
    for k in range(3):
        window = min(CAP_S, BASE_S * 2.0**k)
        gaps = [fetch[k] for fetch in per_fetch]
        assert all(0.0 <= g <= window for g in gaps)
        assert len(set(gaps)) == FETCHES
        assert max(gaps) - min(gaps) >= 0.5 * window
        fractions += [g / window for g in gaps]
    assert abs(statistics.fmean(fractions) - 0.5) <= 0.15


async def test_a6_a_stalled_server_costs_exactly_one_read_timeout(stub: FakeBinance) -> None:
    """A6 (pass figure: the fetch ends at the read timeout +- 100 ms): Stub-BX sleeps 15 s;
    with a 1 s read timeout and a 1.5 s deadline (no second attempt fits) the fetch raises
    ExchangeTimeoutError after 1 s, no earlier and at most 200 ms later (stated tolerance
    for a loaded machine), in 1 request."""
    stub.rule = lambda path, params: Fault(delay_s=15.0) if path.endswith("klines") else None
    read_s = 1.0
    src = _source(stub, read_timeout_s=read_s, deadline_s=1.5)
    try:
        started = time.perf_counter()
        with pytest.raises(ExchangeTimeoutError):
            await src.get_candles("BTCUSDT", "1h", 10)
        elapsed = time.perf_counter() - started
    finally:
        await src.aclose()
    assert read_s - 0.005 <= elapsed <= read_s + A6_TOLERANCE_S, elapsed
    assert len(stub.requests()) == 1
