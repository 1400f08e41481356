"""What the backtest reads, point-in-time per bar: base candles, higher timeframes, news.

`load_history` reads the period's bars plus the agents' warm-up (the longest lookback).
Higher timeframes are built the way the live gateway builds them for this source (resampled
from the base, or read from the source), and news is every headline up to the end (each bar
reads only those published by its close). What validation removed on the way (rows
rejected by reason, duplicates merged, the open bar dropped) is kept on
`History.validation` for the report.

Gaps stay in the bars the backtest trades on (``History.candles``: an order fills at the
next bar that exists). The agents read every series filled as the live pipeline fills its
windows (RELIABILITY.md B3, `conclave.market.validation.fill_gaps`): a missing bar is a flat
bar at the previous close with volume 0, higher timeframes filled through the newest bar
closed at each base bar. `History.series` runs an agent over the filled base and gives its
values at the traded bars, so each equals the live step's at that bar's close.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from conclave.agents import Agent, AgentInput, SeriesOutput
from conclave.errors import InsufficientDataError, InvalidCandlesError
from conclave.market.candles import Candles
from conclave.market.gateway import MarketGateway, ResamplePolicy
from conclave.market.resample import resample
from conclave.market.sources.base import MAX_LIMIT, CandleSource
from conclave.market.validation import ValidationReport, fill_gaps, last_closed_open, validate
from conclave.news.headline import Headline, base_asset
from conclave.news.sources import NewsSource
from conclave.pipeline.context import InputPlan, fetch_plan, higher_limits
from conclave.timeframes import DAY_MS, Timeframe, iso_ms

#: Default period for a live source (exchange, simulator) when no start is given.
DEFAULT_DAYS = 365


@dataclass(frozen=True, slots=True)
class SeriesValidation:
    """What validation did to one timeframe's rows as read: rows rejected by reason (the
    first invariant each broke), rows merged into another with the same open time, and
    bars dropped because they had not closed (B1, B2, B4 of RELIABILITY.md)."""

    timeframe: str
    rows_read: int
    rows_kept: int
    rejected: Mapping[str, int] = field(default_factory=dict)
    duplicates_merged: int = 0
    dropped_unclosed: int = 0

    @property
    def rejected_rows(self) -> int:
        """Rows rejected, all reasons together."""
        return sum(self.rejected.values())

    @classmethod
    def of(
        cls, raw: Candles, report: ValidationReport, kept: Candles, since_ms: int | None = None
    ) -> SeriesValidation:
        """The counts of ``report`` (from validating ``raw`` into ``kept``) over the rows
        opened at or after ``since_ms`` (ms UTC; None: every row read)."""
        t = raw.open_time if since_ms is None else raw.open_time[raw.open_time >= since_ms]
        kept_t = kept.open_time if since_ms is None else kept.open_time[kept.open_time >= since_ms]
        reasons = Counter(
            r.reason for r in report.rejected if since_ms is None or r.open_time_ms >= since_ms
        )
        return cls(
            timeframe=raw.timeframe.name,
            rows_read=len(t),
            rows_kept=len(kept_t),
            rejected=dict(reasons.most_common()),
            duplicates_merged=len(t) - len(np.unique(t)),
            dropped_unclosed=report.dropped_unclosed,
        )

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form (camelCase keys)."""
        return {
            "timeframe": self.timeframe,
            "rowsRead": self.rows_read,
            "rowsKept": self.rows_kept,
            "rejectedRows": self.rejected_rows,
            "rejected": dict(self.rejected),
            "duplicatesMerged": self.duplicates_merged,
            "droppedUnclosed": self.dropped_unclosed,
        }


@dataclass(frozen=True, slots=True)
class HistoryValidation:
    """Validation of the history's base rows (from the first warm-up bar on) and of each
    higher timeframe read from the source; ``resampled`` names those built from the base's
    validated bars instead (nothing of theirs to reject)."""

    base: SeriesValidation
    higher: tuple[SeriesValidation, ...] = ()
    resampled: tuple[str, ...] = ()

    @property
    def series(self) -> tuple[SeriesValidation, ...]:
        """The base, then each higher timeframe read."""
        return (self.base, *self.higher)

    def to_json(self) -> dict[str, Any]:
        """Totals over every timeframe read, then the base and each higher one."""
        rejected: Counter[str] = Counter()
        for s in self.series:
            rejected.update(s.rejected)
        return {
            "rejectedRows": sum(rejected.values()),
            "rejected": dict(rejected.most_common()),
            "duplicatesMerged": sum(s.duplicates_merged for s in self.series),
            "droppedUnclosed": sum(s.dropped_unclosed for s in self.series),
            "base": self.base.to_json(),
            "higher": [s.to_json() for s in self.higher],
            "resampled": list(self.resampled),
        }


def rejected_text(rejected: Mapping[str, int]) -> str:
    """``high below low 2, price not positive 1`` (``-`` when nothing was rejected)."""
    return ", ".join(f"{reason} {n:,}" for reason, n in rejected.items()) or "-"


@dataclass(frozen=True, slots=True, eq=False)
class History:
    """What the backtest reads, point-in-time per bar: base candles, higher ones, news.

    ``candles`` holds ``start`` warm-up bars before the period (they feed the agents'
    windows; no trading there). ``higher`` maps higher timeframe names to their whole
    history; ``resampled`` names those built from the base (as the live gateway would).
    ``validation`` counts what validation removed while loading (None: built by hand).

    Derived (B3): ``grid`` is ``candles`` with every missing bar filled flat, ``on_grid``
    the index in it of each bar of ``candles``, ``filled_higher`` each higher timeframe
    filled through the newest bar closed at the last base bar's close. The agents read
    these (`input_for`, `series`); gaps in ``candles`` and ``higher`` stay as read.
    """

    symbol: str
    timeframe: str
    candles: Candles
    start: int
    higher: Mapping[str, Candles]
    resampled: frozenset[str]
    news: tuple[Headline, ...] | None
    source: str
    simulated: bool
    validation: HistoryValidation | None = None
    grid: Candles = field(init=False)
    on_grid: npt.NDArray[np.int64] = field(init=False)
    filled_higher: Mapping[str, Candles] = field(init=False)

    def __post_init__(self) -> None:
        grid, made = fill_gaps(self.candles)
        end = int(self.candles.close_time[-1]) if len(self.candles) else None
        higher: dict[str, Candles] = {}
        for name, hc in self.higher.items():
            through = None if end is None else last_closed_open(hc.timeframe, end)
            higher[name] = fill_gaps(hc, through_open_ms=through)[0]
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "on_grid", np.flatnonzero(~made).astype(np.int64))
        object.__setattr__(self, "filled_higher", MappingProxyType(higher))

    @property
    def period(self) -> Candles:
        """The bars of the period (no warm-up)."""
        return self.candles.take(slice(self.start, None))

    @property
    def bars_seen(self) -> npt.NDArray[np.int64]:
        """For each bar of ``candles``, the filled bars from the history's first one to it:
        what a live window starting there holds (an agent's ``min_bars`` counts these)."""
        return self.on_grid + 1

    def input_for(self, agent: Agent) -> AgentInput:
        """``agent``'s input over the whole history, filled (only what it declares); its
        series has one value per bar of ``grid`` (`series` gives them per bar of ``candles``)."""
        plan = InputPlan.of(agent, self.timeframe)
        higher = {h: self.filled_higher[h] for h in plan.higher if h in self.filled_higher}
        return AgentInput(
            symbol=self.symbol,
            timeframe=self.timeframe,
            as_of_ms=int(self.grid.close_time[-1]),
            candles=self.grid,
            higher=higher,
            news=self.news if plan.news else None,
            account=None,
        )

    def series(self, agent: Agent) -> SeriesOutput:
        """``agent``'s series over the filled history, one value per bar of ``candles``."""
        out = agent.series(self.input_for(agent))
        if len(self.grid) == len(self.candles):
            return out
        at = self.on_grid
        columns = {k: v[at] for k, v in out.columns.items()}
        return SeriesOutput(
            out.score[at], out.confidence[at], out.evidence, out.status, out.reason, columns
        )


async def load_history(
    source: CandleSource,
    symbol: str,
    timeframe: str,
    agents: Mapping[str, Agent],
    *,
    start_ms: int | None,
    end_ms: int | None,
    now_ms: int,
    news_source: NewsSource | None = None,
    resample_policy: ResamplePolicy = "auto",
) -> History:
    """Read the period's bars plus the agents' warm-up, the higher timeframes and the news.

    The period holds the bars opened at or after ``start_ms`` and closed at or before
    ``end_ms`` (None: the newest the source has; a file's start, or `DEFAULT_DAYS` before
    the end for a live source). Raises `InsufficientDataError` when the period holds no
    bar, and `InvalidCandlesError` when validation rejects every row read.
    """
    tf = Timeframe.parse(timeframe)
    warm, _ = fetch_plan(agents.values(), tf.name)  # the warm-up: the longest lookback
    is_file = source.name.startswith("file:")
    end = tf.floor(end_ms) if end_ms is not None else (None if is_file else tf.floor(now_ms))
    if end is None:  # a file, read whole
        limit = MAX_LIMIT
    else:
        if start_ms is None and not is_file:
            start_ms = end - DEFAULT_DAYS * DAY_MS
        first = tf.floor(start_ms) if start_ms is not None else end - MAX_LIMIT * tf.ms
        limit = min(MAX_LIMIT, tf.bars_between(first, end) + warm + 1)
    raw = await source.get_candles(symbol, tf, limit, end)
    if len(raw) == 0:
        before = "" if end is None else f" opened before {iso_ms(end)}"
        raise InsufficientDataError(f"{source.name} has no {symbol} {tf} bar{before}")
    as_of = int(raw.close_time[-1]) if end is None else end
    candles, report = validate(raw, as_of, require_fresh=False)
    if len(candles) == 0:
        found = SeriesValidation.of(raw, report, candles)
        raise InvalidCandlesError(
            f"{source.name}: validation rejected every one of the {len(raw):,} {symbol} {tf}"
            f" rows read ({rejected_text(found.rejected)})"
        )
    first_in = 0 if start_ms is None else int(np.searchsorted(candles.open_time, start_ms))
    if first_in >= len(candles):
        raise InsufficientDataError(
            f"no {symbol} {tf} bar from {iso_ms(start_ms or 0)} in {source.name}: its last"
            f" usable bar before {iso_ms(as_of)} opened at {iso_ms(candles.last_open_ms or 0)}"
        )
    cut = max(0, first_in - warm)
    # count what validation removed from the rows the history uses: those after the last
    # bar left out before the warm-up
    since = None if cut == 0 else int(candles.open_time[cut - 1]) + 1
    candles = candles.take(slice(cut, None))
    start = first_in - cut
    base = SeriesValidation.of(raw, report, candles, since)

    higher, resampled, read = await _higher(source, candles, agents, tf, resample_policy)
    news: tuple[Headline, ...] | None = None
    if news_source is not None and any(a.needs.news for a in agents.values()):
        news = tuple(news_source.headlines(base_asset(symbol), int(candles.close_time[-1])))
    return History(
        symbol=symbol,
        timeframe=tf.name,
        candles=candles,
        start=start,
        higher=higher,
        resampled=resampled,
        news=news,
        source=source.name,
        simulated=source.simulated,
        validation=HistoryValidation(base, read, tuple(n for n in higher if n in resampled)),
    )


async def _higher(
    source: CandleSource,
    candles: Candles,
    agents: Mapping[str, Agent],
    tf: Timeframe,
    policy: ResamplePolicy,
) -> tuple[dict[str, Candles], frozenset[str], tuple[SeriesValidation, ...]]:
    """Each higher timeframe the agents read, built as the live gateway builds it, and what
    validation removed from those read from the source."""
    limit, names = fetch_plan(agents.values(), tf.name)
    if not names:
        return {}, frozenset(), ()
    wanted = higher_limits([InputPlan.of(agent, tf.name) for agent in agents.values()])
    gateway = MarketGateway(source, resample=policy)
    higher_tfs = [Timeframe.parse(h) for h in names]
    _, planned = gateway.resample_plan(tf, higher_tfs, limit, limit if wanted is None else wanted)
    out: dict[str, Candles] = {}
    read: list[SeriesValidation] = []
    first, end = int(candles.open_time[0]), int(candles.close_time[-1])
    for name in names:
        htf = Timeframe.parse(name)
        if htf in planned:
            out[name] = resample(candles, htf, trim_leading=True)
            continue
        # read from the source: from a spare bar before the history to its end
        spare = limit if wanted is None else wanted.get(name, limit)
        n = min(MAX_LIMIT, htf.bars_between(htf.floor(first), htf.floor(end)) + spare + 2)
        got = await source.get_candles(candles.symbol, htf, n, htf.floor(end))
        if len(got) == 0:
            out[name] = got
            read.append(SeriesValidation(name, 0, 0))
            continue
        out[name], report = validate(got, end, require_fresh=False)
        read.append(SeriesValidation.of(got, report, out[name]))
    return out, frozenset(t.name for t in planned), tuple(read)
