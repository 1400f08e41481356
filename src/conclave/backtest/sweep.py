"""Parameter sweeps: many configurations over one history, the agents computed once.

`run_sweep` computes every agent's series once (`signals.agent_series`); each configuration
then redoes only what depends on it, compiled: its decision (`sweep_kernel.decide`), the
account loop (`fast_kernel.kernel`, the engine's) and the figures of `metrics.performance`
(`sweep_kernel.figures`), on ``workers`` threads. A configuration the compiled loop cannot
compute exactly (see `fast_kernel`) runs through the engine instead (`engine.run_backtest`
on the same series). tests/backtest/test_sweep.py holds every figure equal (to 1e-9) to a
plain `run_backtest` with the configuration's settings.

`rank` orders the rows by one of `METRICS`, best first (the highest; the lowest for max
drawdown); a row without that figure (a Sharpe with no trade) ranks last; ties go to the
lower max drawdown, then to the lower configuration number (`TIE_BREAK`). `spread` says
how the figure spreads over the configurations. The best row is in-sample (`IN_SAMPLE`).
"""

from __future__ import annotations

import difflib
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from conclave.agents import Agent
from conclave.backtest.engine import run_backtest
from conclave.backtest.fast_loop import kernel_buffers, kernel_terms
from conclave.backtest.history import History
from conclave.backtest.metrics import (
    Headline,
    Performance,
    bars_per_year,
    buy_and_hold_curve,
    cagr,
    headline,
    performance,
    years_between,
)
from conclave.backtest.result import AgentSeries, Gap
from conclave.backtest.settings import Progress
from conclave.backtest.signals import agent_series, fresh_mask
from conclave.backtest.sweep_space import SweepConfig
from conclave.errors import InvalidRequestError
from conclave.market.validation import find_gaps
from conclave.pipeline.decision import (
    ANALYSIS_AGENTS,
    DIRECTIONAL_AGENTS,
    RISK_AGENT,
    SIZING_AGENT,
)


@dataclass(frozen=True, slots=True)
class Metric:
    """A figure a sweep ranks by: its `Performance` field, its label, which way is better."""

    field: str
    label: str
    higher_is_better: bool = True


#: What ``--rank-by`` accepts. Sharpe is the default: it scores return per unit of risk,
#: so a configuration does not rank first merely by holding more of a coin that rose.
METRICS: Mapping[str, Metric] = {
    "sharpe": Metric("sharpe", "Sharpe"),
    "sortino": Metric("sortino", "Sortino"),
    "total-return": Metric("total_return", "total return"),
    "cagr": Metric("cagr", "CAGR"),
    "excess": Metric("excess", "excess return over buy and hold"),
    "max-drawdown": Metric("max_drawdown", "max drawdown", higher_is_better=False),
    "win-rate": Metric("win_rate", "win rate"),
}
DEFAULT_METRIC = "sharpe"
TIE_BREAK = "equal values: the lower max drawdown first, then the lower configuration number"
IN_SAMPLE = (
    "In-sample: the best row was picked out of {n:,} configurations on the very bars it is"
    " scored on, so its figures overstate what it would do next. Treat it as a candidate:"
    " check it on a period the sweep did not see (--from/--to) before trusting it."
)


@dataclass(frozen=True, slots=True)
class SweepRow:
    """One configuration's figures; ``compiled`` is false where the engine ran it."""

    config: SweepConfig
    performance: Performance
    compiled: bool = True


@dataclass(frozen=True, slots=True)
class SweepResult:
    """Every configuration's figures (in number order) over one history's period."""

    symbol: str
    timeframe: str
    source: str
    simulated: bool
    open_time: npt.NDArray[np.int64]
    close_time: npt.NDArray[np.int64]
    gaps: tuple[Gap, ...]
    warmup_bars: int
    resampled: tuple[str, ...]
    rows: tuple[SweepRow, ...]
    workers: int
    timings: Mapping[str, float]

    @property
    def bars(self) -> int:
        """Bars in the period."""
        return int(self.open_time.shape[0])


@dataclass(frozen=True, slots=True)
class _Inputs:
    """What every configuration reads: the period's bars and the agents' series over it."""

    opens: npt.NDArray[np.float64]
    closes: npt.NDArray[np.float64]
    t_open: npt.NDArray[np.int64]
    t_close: npt.NDArray[np.int64]
    agents: tuple[str, ...]  # the directional agents present, registry order
    score: npt.NDArray[np.float64]  # (agents, bars)
    conf: npt.NDArray[np.float64]
    usable: npt.NDArray[np.bool_]
    healthy: npt.NDArray[np.int64]
    vol_col: npt.NDArray[np.float64]
    vol_ok: npt.NDArray[np.bool_]

    @classmethod
    def of(cls, history: History, series: Mapping[str, AgentSeries]) -> _Inputs:
        s = history.start
        period = history.period

        def arr(x: npt.ArrayLike, dtype: type) -> npt.NDArray[Any]:
            # contiguous and writable: the signatures `fast_loop` compiles the kernel for
            return np.require(x, dtype=dtype, requirements=["C", "W"])

        n = len(period)
        names = tuple(a for a in DIRECTIONAL_AGENTS if a in series)
        healthy = np.zeros(n, dtype=np.int64)
        for a in ANALYSIS_AGENTS:
            if a in series:
                healthy += series[a].usable[s:]
        vol = series.get(SIZING_AGENT)
        has_vol = vol is not None and "size_multiplier" in vol.columns
        return cls(
            arr(period.open, np.float64), arr(period.close, np.float64),
            arr(period.open_time, np.int64), arr(period.close_time, np.int64), names,
            arr(np.array([series[a].score[s:] for a in names]).reshape(len(names), n),
                np.float64),
            arr(np.array([series[a].confidence[s:] for a in names]).reshape(len(names), n),
                np.float64),
            arr(np.array([series[a].usable[s:] for a in names]).reshape(len(names), n),
                np.bool_),
            healthy,
            arr(vol.columns["size_multiplier"][s:] if vol is not None and has_vol
                else np.zeros(n), np.float64),
            arr(vol.usable[s:] if vol is not None and has_vol else np.zeros(n, dtype=bool),
                np.bool_),
        )  # fmt: skip


def default_workers() -> int:
    """Threads a sweep uses by default: the machine's cores, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


def run_sweep(
    history: History,
    agents: Mapping[str, Agent],
    configs: Sequence[SweepConfig],
    *,
    progress: Progress | None = None,
    workers: int | None = None,
) -> SweepResult:
    """Every configuration of ``configs`` over ``history``'s period, the agents once.

    ``progress`` hears the agents (phase ``agents``) and the configurations done (phase
    ``sweep``); ``workers`` threads run the configurations (default `default_workers`;
    the figures do not depend on it). Raises `ValueError` without the risk manager among
    ``agents`` (the engine then trades nothing; the command line always runs it).
    """
    from conclave.backtest import fast_kernel as fk  # numba loads here, not at import
    from conclave.backtest import sweep_kernel as sk

    if RISK_AGENT not in agents:  # the engine's result would trade nothing (RELIABILITY C5)
        raise ValueError("a sweep runs with the risk manager: without it nothing is tradable")
    workers = workers or default_workers()
    t0 = time.perf_counter()
    series = agent_series(history, agents, progress, fresh=fresh_mask(history))
    t1 = time.perf_counter()
    x = _Inputs.of(history, series)
    n, k = x.t_open.shape[0], len(configs)
    per_year = bars_per_year(history.timeframe)
    bar_ms = history.period.timeframe.ms
    weights = np.array([[c.settings.decision.weight(a) for a in x.agents] for c in configs],
                       dtype=np.float64).reshape(k, len(x.agents))  # fmt: skip
    thresholds = np.array([[d.buy_threshold, d.sell_threshold, d.strong_threshold,
                            d.volatility_fallback]
                           for d in (c.settings.decision for c in configs)],
                          dtype=np.float64).reshape(k, 4)  # fmt: skip
    terms = [kernel_terms(c.settings, bar_ms) for c in configs]
    figs = np.full((k, len(sk.FIGURES)), np.nan)
    done = np.zeros(k, dtype=bool)
    local = threading.local()
    if k:  # numba loads (or compiles) the three kernels here, so the rate below is theirs
        _warm_up(x, weights[0], thresholds[0], terms[0], per_year)
    t1b = time.perf_counter()

    def one(j: int) -> None:
        if not hasattr(local, "buffers"):
            local.buffers = kernel_buffers(n)
            local.decided = (np.empty(n, np.int8), np.empty(n), np.empty(n), np.empty((4, n)))
        out_f, out_i, fills_f, fills_i = local.buffers
        act, strength, vol_mult, scratch = local.decided
        cfg = configs[j].settings
        sk.decide(x.score, x.conf, x.usable, x.healthy, x.vol_col, x.vol_ok, weights[j],
                  thresholds[j], cfg.decision.quorum, act, strength, vol_mult, scratch)  # fmt: skip
        bars, nf = fk.kernel(x.opens, x.closes, x.t_open, x.t_close, act, strength, vol_mult,
                             *terms[j], out_f, out_i, fills_f, fills_i)  # fmt: skip
        if bars == n:
            sk.figures(out_f[0], out_f[2], out_f[3], fills_f, fills_i, nf, x.t_open,
                       cfg.starting_balance, per_year, figs[j])  # fmt: skip
            done[j] = True

    def chunk(lo: int, hi: int) -> int:
        for j in range(lo, hi):
            one(j)
        return hi - lo

    size = max(1, min(25, k // (workers * 4) or 1))
    finished = 0
    if progress is not None:
        progress("sweep", 0, k)
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(chunk, lo, min(k, lo + size)) for lo in range(0, k, size)]
        try:
            for future in as_completed(futures):
                finished += future.result()
                if progress is not None:
                    progress("sweep", finished, k)
        finally:
            for future in futures:
                future.cancel()
    t2 = time.perf_counter()
    years = years_between(int(x.t_open[0]), int(x.t_close[-1])) if n else 0.0
    holds: dict[tuple[float, float, float], Headline] = {}
    rows = []
    for j, c in enumerate(configs):
        s = c.settings
        key = (s.starting_balance, s.fee_rate, s.slippage)
        if key not in holds:
            curve = buy_and_hold_curve(float(x.opens[0]), x.closes, *key) if n else x.closes
            holds[key] = headline(curve, s.starting_balance, years=years, per_year=per_year)
        if done[j]:
            perf = _performance(figs[j], holds[key], s.starting_balance, n, years, per_year)
            rows.append(SweepRow(c, perf))
        else:  # the compiled loop could not: the engine, on the same series
            result = run_backtest(history, agents, s, series=series)
            rows.append(SweepRow(c, performance(result), compiled=False))
    t3 = time.perf_counter()
    period = history.period
    return SweepResult(
        symbol=history.symbol, timeframe=history.timeframe, source=history.source,
        simulated=history.simulated, open_time=period.open_time, close_time=period.close_time,
        gaps=tuple(Gap(g.after_open_ms, g.before_open_ms, g.missing_bars)
                   for g in find_gaps(period).gaps),
        warmup_bars=history.start, resampled=tuple(sorted(history.resampled)),
        rows=tuple(rows), workers=workers,
        timings={"agents_s": t1 - t0, "numba_load_s": t1b - t1, "configurations_s": t2 - t1b,
                 "figures_s": t3 - t2, "total_s": t3 - t0},
    )  # fmt: skip


def _warm_up(
    x: _Inputs,
    weights: npt.NDArray[np.float64],
    thresholds: npt.NDArray[np.float64],
    terms: tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]],
    per_year: float,
) -> None:
    """Call each kernel once on the first two bars (the same types: numba loads them)."""
    from conclave.backtest import fast_kernel as fk
    from conclave.backtest import sweep_kernel as sk

    m = min(2, x.t_open.shape[0])

    def cut(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return np.ascontiguousarray(a[..., :m])

    act, strength, vol_mult = np.empty(m, np.int8), np.empty(m), np.empty(m)
    sk.decide(cut(x.score), cut(x.conf), cut(x.usable), cut(x.healthy), cut(x.vol_col),
              cut(x.vol_ok), weights, thresholds, 1, act, strength, vol_mult,
              np.empty((4, m)))  # fmt: skip
    out_f, out_i, fills_f, fills_i = kernel_buffers(m)
    _, nf = fk.kernel(cut(x.opens), cut(x.closes), cut(x.t_open), cut(x.t_close), act, strength,
                      vol_mult, *terms, out_f, out_i, fills_f, fills_i)  # fmt: skip
    sk.figures(out_f[0], out_f[2], out_f[3], fills_f, fills_i, nf, cut(x.t_open), 1.0, per_year,
               np.empty(len(sk.FIGURES)))  # fmt: skip


def _none(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _performance(
    f: npt.NDArray[np.float64], bh: Headline, balance: float, n: int, years: float,
    per_year: float,
) -> Performance:  # fmt: skip
    """A `Performance` of the figures `sweep_kernel.figures` wrote (its `FIGURES` order)."""
    total = float(f[0])
    return Performance(
        total_return=total, cagr=cagr(total, years), sharpe=_none(f[1]), sortino=_none(f[2]),
        max_drawdown=float(f[3]), win_rate=_none(f[4]), trades=int(f[5]), buys=int(f[6]),
        sells=int(f[7]), round_trips=int(f[8]), time_in_market=float(f[9]),
        mean_exposure=float(f[10]), fees_paid=float(f[11]), starting_balance=float(balance),
        final_equity=float(f[12]), bars=n, years=years, bars_per_year=per_year,
        buy_and_hold=bh, excess=total - bh.total_return,
    )  # fmt: skip


# -- ranking and spread -------------------------------------------------------------------------


def metric_named(value: str | None) -> str:
    """The `METRICS` key ``value`` names (None: `DEFAULT_METRIC`; ``total_return`` and
    ``Total-Return`` name ``total-return``); an unknown one is an `InvalidRequestError`
    (field ``rank-by``) with the nearest name."""
    name = (value or DEFAULT_METRIC).strip().lower().replace("_", "-")
    if name not in METRICS:
        near = difflib.get_close_matches(name, list(METRICS), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise InvalidRequestError(
            f"unknown figure {value!r}{hint} (one of {', '.join(METRICS)})", field="rank-by"
        )
    return name


def metric_value(row: SweepRow, metric: Metric) -> float | None:
    """``row``'s value of ``metric`` (None where it has none)."""
    value = getattr(row.performance, metric.field)
    return None if value is None else float(value)


def rank(rows: Sequence[SweepRow], metric: Metric) -> list[int]:
    """Indices of ``rows``, best first by ``metric`` (see the module docstring)."""
    values = np.array([np.nan if (v := metric_value(r, metric)) is None else v for r in rows])
    key = -values if metric.higher_is_better else values
    missing = np.isnan(key)
    drawdowns = np.array([r.performance.max_drawdown for r in rows])
    numbers = np.array([r.config.number for r in rows])
    order = np.lexsort((numbers, drawdowns, np.where(missing, 0.0, key), missing))
    return [int(i) for i in order]


def _beats(value: float | None, other: float | None, metric: Metric) -> bool:
    if value is None or other is None:
        return False
    return value > other if metric.higher_is_better else value < other


def buy_and_hold_value(row: SweepRow, metric: Metric) -> float | None:
    """Buy-and-hold's value of ``metric`` over the row's bars and costs (None: it has
    none, as for the win rate; 0 for the excess over itself)."""
    if metric.field == "excess":
        return 0.0
    value = getattr(row.performance.buy_and_hold, metric.field, None)
    return None if value is None else float(value)


def spread(rows: Sequence[SweepRow], metric: Metric) -> dict[str, Any]:
    """How ``metric`` spreads over the configurations: count with a value, min, quartiles
    (linear interpolation), max, mean, buy-and-hold's value where it is one for all, and
    how many configurations beat buy-and-hold on ``metric`` and on total return."""
    values = [v for r in rows if (v := metric_value(r, metric)) is not None]
    arr = np.array(values, dtype=np.float64)
    holds = {buy_and_hold_value(r, metric) for r in rows}
    q = np.percentile(arr, [0, 25, 50, 75, 100]).tolist() if arr.size else [None] * 5
    beat = sum(_beats(metric_value(r, metric), buy_and_hold_value(r, metric), metric) for r in rows)
    return {
        "metric": metric.field,
        "configurations": len(rows),
        "withValue": int(arr.size),
        "min": q[0],
        "q1": q[1],
        "median": q[2],
        "q3": q[3],
        "max": q[4],
        "mean": float(arr.mean()) if arr.size else None,
        "buyAndHold": next(iter(holds)) if len(holds) == 1 else None,
        "beatBuyAndHold": None if holds == {None} else beat,
        "beatBuyAndHoldTotalReturn": sum(r.performance.excess > 0 for r in rows),
    }
