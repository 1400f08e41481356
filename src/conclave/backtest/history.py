"""What the backtest reads, point-in-time per bar: base candles, higher timeframes, news.

`load_history` reads the period's bars plus the agents' warm-up (the longest lookback).
Higher timeframes are built the way the live gateway builds them for this source (resampled
from the base, or read from the source), and news is every headline up to the end (each bar
reads only those published by its close). Gaps in the history are kept, never filled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from conclave.agents import Agent, AgentInput
from conclave.errors import InvalidRequestError
from conclave.market.candles import Candles
from conclave.market.gateway import MarketGateway, ResamplePolicy
from conclave.market.resample import resample
from conclave.market.sources.base import MAX_LIMIT, CandleSource
from conclave.market.validation import validate
from conclave.news.headline import Headline, base_asset
from conclave.news.sources import NewsSource
from conclave.pipeline.context import InputPlan, fetch_plan, higher_limits
from conclave.timeframes import DAY_MS, Timeframe

#: Default period for a live source (exchange, simulator) when no start is given.
DEFAULT_DAYS = 365


@dataclass(frozen=True, slots=True, eq=False)
class History:
    """What the backtest reads, point-in-time per bar: base candles, higher ones, news.

    ``candles`` holds ``start`` warm-up bars before the period (they feed the agents'
    windows; no trading there). ``higher`` maps higher timeframe names to their whole
    history; ``resampled`` names those built from the base (as the live gateway would).
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

    @property
    def period(self) -> Candles:
        """The bars of the period (no warm-up)."""
        return self.candles.take(slice(self.start, None))

    def input_for(self, agent: Agent) -> AgentInput:
        """``agent``'s input over the whole history (only what it declares)."""
        plan = InputPlan.of(agent, self.timeframe)
        higher = {h: self.higher[h] for h in plan.higher if h in self.higher}
        return AgentInput(
            symbol=self.symbol,
            timeframe=self.timeframe,
            as_of_ms=int(self.candles.close_time[-1]),
            candles=self.candles,
            higher=higher,
            news=self.news if plan.news else None,
            account=None,
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
    the end for a live source). Raises `InvalidRequestError` when the period holds no bar.
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
        raise InvalidRequestError(f"{source.name} has no {symbol} {tf} bars", field="symbol")
    as_of = int(raw.close_time[-1]) if end is None else end
    candles, _ = validate(raw, as_of, require_fresh=False)
    first_in = 0 if start_ms is None else int(np.searchsorted(candles.open_time, start_ms))
    if first_in >= len(candles):
        raise InvalidRequestError(
            f"no {symbol} {tf} bar from {start_ms} ms to {as_of} ms in {source.name}", field="from"
        )
    cut = max(0, first_in - warm)
    candles = candles.take(slice(cut, None))
    start = first_in - cut

    higher, resampled = await _higher(source, candles, agents, tf, resample_policy)
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
    )


async def _higher(
    source: CandleSource,
    candles: Candles,
    agents: Mapping[str, Agent],
    tf: Timeframe,
    policy: ResamplePolicy,
) -> tuple[dict[str, Candles], frozenset[str]]:
    """Each higher timeframe the agents read, built as the live gateway builds it."""
    limit, names = fetch_plan(agents.values(), tf.name)
    if not names:
        return {}, frozenset()
    wanted = higher_limits([InputPlan.of(agent, tf.name) for agent in agents.values()])
    gateway = MarketGateway(source, resample=policy)
    higher_tfs = [Timeframe.parse(h) for h in names]
    _, planned = gateway.resample_plan(tf, higher_tfs, limit, limit if wanted is None else wanted)
    out: dict[str, Candles] = {}
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
        out[name], _ = validate(got, end, require_fresh=False) if len(got) else (got, None)
    return out, frozenset(t.name for t in planned)
