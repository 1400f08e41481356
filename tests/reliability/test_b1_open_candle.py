"""B1 at its boundary: a bar closing one millisecond after ``as_of`` is still open.

The hypothesis property in ``tests/market/test_validation.py`` draws ``as_of`` from a range
of 10.8 million milliseconds, so the single value that separates ``<= as_of`` from
``<= as_of + 1`` is practically never drawn. These examples pin it explicitly.
"""

from __future__ import annotations

import numpy as np
import pytest

from conclave.market.candles import Candles
from conclave.market.validation import drop_unclosed
from conclave.timeframes import HOUR_MS, Timeframe

H1 = Timeframe.parse("1h")
T0 = 1_600_000_000_000 // HOUR_MS * HOUR_MS
N = 5


def _series() -> Candles:
    times = [T0 + i * HOUR_MS for i in range(N)]
    price = np.linspace(100.0, 104.0, N)
    return Candles.from_arrays("BTCUSDT", H1, times, price, price + 1, price - 1, price,
                               np.ones(N))  # fmt: skip


@pytest.mark.parametrize(
    ("as_of_after_last_close", "kept"),
    [(-1, N - 1), (0, N), (1, N), (-HOUR_MS, N - 1), (-HOUR_MS - 1, N - 2)],
)
def test_b1_the_open_candle_boundary_to_the_millisecond(
    as_of_after_last_close: int, kept: int
) -> None:
    """B1 (pass figure: 0 outputs contain an open candle): the last bar closes at
    ``close``; at ``as_of = close - 1`` it is still open and dropped, at ``close`` it is
    closed and kept; the same one bar earlier."""
    candles = _series()
    close = int(candles.close_time[-1])
    as_of = close + as_of_after_last_close
    out, dropped = drop_unclosed(candles, as_of)
    assert (len(out), dropped) == (kept, N - kept)
    assert np.all(out.close_time <= as_of)  # no open candle in the output
