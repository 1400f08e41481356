"""The backtest chart (PNG): equity and drawdown of the strategy and of buy-and-hold.

`plot_png` draws the equity of the strategy and of buy-and-hold (same starting balance) over
their drawdowns (percent), gaps shaded; lines are downsampled by `minmax_indices`, which
keeps each bucket's extremes so that a one-bar crash still shows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from conclave.backtest.metrics import buy_and_hold_equity, drawdown
from conclave.backtest.result import F64, BacktestResult

#: Points per plotted line at most (each bucket keeps its min and max).
MAX_PLOT_POINTS = 4000
FIGSIZE = (12.0, 7.0)  # inches
DPI = 100


def minmax_indices(y: F64, max_points: int = MAX_PLOT_POINTS) -> npt.NDArray[np.int64]:
    """Sorted indices of at most ~``max_points`` points of ``y`` that keep each bucket's
    minimum and maximum (and the first and last point): all of them when ``y`` is short."""
    n = int(y.size)
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    k = -(-n // max(1, max_points // 2))  # bucket length
    nb = -(-n // k)
    padded = np.concatenate([y, np.full(nb * k - n, y[-1])]).reshape(nb, k)
    base = np.arange(nb, dtype=np.int64) * k
    lo = base + np.nanargmin(np.where(np.isnan(padded), np.inf, padded), axis=1)
    hi = base + np.nanargmax(np.where(np.isnan(padded), -np.inf, padded), axis=1)
    idx = np.concatenate([lo, hi, np.array([0, n - 1], dtype=np.int64)])
    out: npt.NDArray[np.int64] = np.unique(np.minimum(idx, n - 1))
    return out


def chart_title(result: BacktestResult) -> str:
    """Symbol · timeframe · source, and SIMULATED when the source is."""
    text = f"{result.symbol} · {result.timeframe} · {result.source}"
    return text + " · SIMULATED" if result.simulated else text


def plot_png(result: BacktestResult, path: str | Path) -> Path:
    """Write the chart to ``path`` (PNG, 1200 x 700 px): equity of the strategy and of
    buy-and-hold above, their drawdowns (%) below, sharing the date axis; gaps shaded.
    Lines are downsampled to about `MAX_PLOT_POINTS` points (min and max per bucket)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    from matplotlib.figure import Figure

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax_eq, ax_dd = fig.subplots(2, 1, sharex=True, height_ratios=(3.0, 1.3))
    fig.suptitle(chart_title(result), fontsize=13)

    n = len(result)
    if n:
        times = np.asarray(result.open_time, dtype=np.int64).astype("datetime64[ms]")
        x = mdates.date2num(times)  # type: ignore[no-untyped-call]
        equity = np.asarray(result.equity, dtype=np.float64)
        bh = buy_and_hold_equity(result)
        start = result.starting_balance
        lines = (
            (ax_eq, equity, "strategy", "#1f5fa8"),
            (ax_eq, bh, "buy & hold", "#9a9a9a"),
            (ax_dd, -100.0 * drawdown(equity, start), "strategy", "#1f5fa8"),
            (ax_dd, -100.0 * drawdown(bh, start), "buy & hold", "#9a9a9a"),
        )
        for ax, y, label, color in lines:
            i = minmax_indices(y)
            width = 1.2 if label == "strategy" else 1.0
            ax.plot(x[i], y[i], label=label, color=color, linewidth=width)
            if ax is ax_dd:
                ax.fill_between(x[i], y[i], 0.0, color=color, alpha=0.15, linewidth=0)
        ax_eq.axhline(start, color="#444444", linewidth=0.6, linestyle=":")
        if result.gaps:
            t0 = np.array([g.after_open_ms for g in result.gaps], dtype=np.int64)
            t1 = np.array([g.before_open_ms for g in result.gaps], dtype=np.int64)
            g0 = mdates.date2num(t0.astype("datetime64[ms]"))  # type: ignore[no-untyped-call]
            g1 = mdates.date2num(t1.astype("datetime64[ms]"))  # type: ignore[no-untyped-call]
            # at least 0.2% of the axis wide, so that a short gap in a long run shows
            width = np.maximum(g1 - g0, 0.002 * float(x[-1] - x[0]))
            spans = list(zip(g0.tolist(), width.tolist(), strict=True))
            for k, ax in enumerate((ax_eq, ax_dd)):
                ax.broken_barh(
                    spans,
                    (0.0, 1.0),
                    transform=ax.get_xaxis_transform(),
                    color="#e07b39",
                    alpha=0.25,
                    label="gap" if k == 0 else None,
                )
        locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
        ax_dd.xaxis.set_major_locator(locator)
        ax_dd.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    ax_eq.set_ylabel("equity (quote)")
    ax_dd.set_ylabel("drawdown (%)")
    ax_eq.grid(True, alpha=0.3)
    ax_dd.grid(True, alpha=0.3)
    if n:
        ax_eq.legend(loc="upper left", frameon=False)
    fig.savefig(p, format="png", dpi=DPI)
    return p
