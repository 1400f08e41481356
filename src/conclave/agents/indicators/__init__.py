"""Indicators: our own bounded-window helpers, and thin typed TA-Lib wrappers.

Agents use ``from conclave.agents import indicators as ind`` and ``ind.rsi(...)``; this
package re-exports the public functions of its modules:

- `windows`: the doubling-block window reductions everything below is built on;
- `rolling`: rolling sum, mean, max, min, standard deviation, percent rank, range queries;
- `smoothing`: the exponential filter and Wilder's average, cut to a trailing window;
- `wilder`: RSI and ATR (Wilder 1978);
- `swings`: swing highs and lows, confirmed ``k`` bars later;
- `mean_reversion`: a rolling augmented Dickey-Fuller test on log prices, the half-life;
- `ta`: TA-Lib over the whole input (references and candlestick functions).

Every helper returns a full-length float64 array, NaN where its trailing window is not yet
complete. The bounded-window helpers make the value at bar t a function of the bars of a
fixed trailing window only, computed by the same tree of elementwise operations wherever the
array starts, so a window cut from a longer history gives bit-identical values (TA-Lib's
running sums and recursive seeds depend on where the input starts). Long windows reduce in
O(log w) vector passes by doubling blocks (a sparse-table scheme). No transcendental ufuncs
(exp, log, tanh) are used in per-bar paths: their SIMD and scalar code paths may differ in
the last bit depending on an element's position in the array.

Wilder averages (RSI, ATR) are TA-Lib's, seeded at the start of a trailing window: the value
at t equals TA-Lib's result on just the last ``window`` bars (Wilder 1978, *New Concepts in
Technical Trading Systems*). Tests check each helper against TA-Lib or an independent
reference on the real candles to within 1e-9 (relative).
"""

from __future__ import annotations

from conclave.agents.indicators.mean_reversion import (
    MACKINNON_2010_TAU_C,
    adf,
    adf_critical,
    adf_last,
    half_life,
    log_prices,
)
from conclave.agents.indicators.rolling import (
    diff,
    percent_rank,
    percent_rank_last,
    percent_rank_ref,
    range_max,
    range_min,
    rolling_max,
    rolling_mean,
    rolling_min,
    rolling_std,
    rolling_sum,
)
from conclave.agents.indicators.smoothing import exp_window_last, exp_window_sum, wilder_window
from conclave.agents.indicators.swings import swing_points
from conclave.agents.indicators.ta import (
    ta_atr,
    ta_candle,
    ta_ema,
    ta_obv,
    ta_rsi,
    ta_sma,
    ta_stddev,
)
from conclave.agents.indicators.wilder import atr, rsi, rsi1, rsi_averages, true_range
from conclave.agents.indicators.windows import (
    F64,
    I64,
    Combine,
    pairwise_floats,
    pairwise_rows,
    sum_at,
    sums_last,
    window_sum,
)

# the reduction's internals, for the fast-path tests (tests/agents/test_fast_paths.py)
from conclave.agents.indicators.windows import _add as _add
from conclave.agents.indicators.windows import _max as _max
from conclave.agents.indicators.windows import _min as _min
from conclave.agents.indicators.windows import _pad as _pad
from conclave.agents.indicators.windows import _reduce as _reduce

__all__ = [
    "F64",
    "I64",
    "MACKINNON_2010_TAU_C",
    "Combine",
    "adf",
    "adf_critical",
    "adf_last",
    "atr",
    "diff",
    "exp_window_last",
    "exp_window_sum",
    "half_life",
    "log_prices",
    "pairwise_floats",
    "pairwise_rows",
    "percent_rank",
    "percent_rank_last",
    "percent_rank_ref",
    "range_max",
    "range_min",
    "rolling_max",
    "rolling_mean",
    "rolling_min",
    "rolling_std",
    "rolling_sum",
    "rsi",
    "rsi1",
    "rsi_averages",
    "sum_at",
    "sums_last",
    "swing_points",
    "ta_atr",
    "ta_candle",
    "ta_ema",
    "ta_obv",
    "ta_rsi",
    "ta_sma",
    "ta_stddev",
    "true_range",
    "wilder_window",
    "window_sum",
]
