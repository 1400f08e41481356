"""The backtest engine: the live agents, decision, paper execution and risk rules over history.

Three phases, each the live code's own arithmetic:

1. **Agents, vectorized.** Every analysis agent's `Agent.series` runs ONCE over the whole
   history (the same classes and parameters the live pipeline runs; their per-bar values
   depend only on a bounded trailing window, so the value at bar t is what the live step
   computes at t). Higher timeframes are built the way the live gateway builds them for
   this source (resampled from the base, or read from the source), and news is every
   headline up to the end (each bar reads only those published by its close).
2. **The decision, vectorized.** `conclave.pipeline.decision.decide`'s formula over arrays:
   which agents are usable at each bar (the live step would be ok), conviction, confidence,
   action and strength before the risk manager's verdict.
3. **The account, bar by bar.** Only the path-dependent part runs in a loop, in the order the
   live scheduler and `conclave.accounts.service.AccountService.process_run` use: the risk
   manager's verdict from the equity recorded up to the previous bar (as the live account
   reader gives it), then the pending order filled at this bar's OPEN
   (`conclave.accounts.paper`), equity recorded at this bar's close, the account's halt /
   resume transition (`conclave.accounts.risk`), and the new order from this bar's decision
   (protections: cooldown, stop-loss streak guard).

Gaps in the history are reported (`BacktestResult.gaps`), never filled: a bar's order fills
at the next bar that exists, as in live trading.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from conclave.accounts import paper
from conclave.accounts.config import AccountConfig
from conclave.accounts.paper import Bar, Position
from conclave.accounts.risk import (
    Protections,
    after_trade,
    drawdown_and_loss,
    level_of,
    recovered,
    start_of_day,
)
from conclave.agents.base import AccountState, Agent, AgentInput, Headline
from conclave.backtest.result import (
    BLOCKED,
    BUY,
    HOLD,
    NONE,
    SELL,
    AgentSeries,
    BacktestResult,
    Fill,
    Gap,
)
from conclave.errors import InvalidRequestError
from conclave.market.candles import Candles
from conclave.market.gateway import MarketGateway, ResamplePolicy
from conclave.market.resample import closed_index_at, resample
from conclave.market.sources.base import MAX_LIMIT, CandleSource
from conclave.market.validation import find_gaps, stale_before, validate
from conclave.news.sources import NewsSource
from conclave.pipeline.context import InputPlan, fetch_plan, higher_limits
from conclave.pipeline.decision import (
    ANALYSIS_AGENTS,
    DIRECTIONAL_AGENTS,
    RISK_AGENT,
    SIZING_AGENT,
    DecisionConfig,
)
from conclave.timeframes import DAY_MS, Timeframe

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]
#: ``progress(phase, done, total)``: called as the phases advance (for a progress bar).
Progress = Callable[[str, int, int], None]
#: Default period for a live source (exchange, simulator) when no start is given.
DEFAULT_DAYS = 365
#: How many loop iterations between two progress calls.
PROGRESS_EVERY = 5_000
_STATUS_ACTIVE, _STATUS_HALTED = 0, 1


@dataclass(frozen=True, slots=True)
class BacktestSettings:
    """Money, costs, the account's terms and the decision's weights for one backtest.

    ``fee_rate`` and ``slippage`` are fractions (0.001 = 0.1 %) as in `conclave.accounts`.
    ``resample`` is the gateway policy the live runs use for this source (see
    `conclave.market.gateway.MarketGateway`).
    """

    starting_balance: float = 10_000.0
    fee_rate: float = 0.001
    slippage: float = 0.0005
    account: AccountConfig = field(default_factory=AccountConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    resample: ResamplePolicy = "auto"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.starting_balance) and self.starting_balance > 0):
            raise InvalidRequestError("the starting balance must be above 0", field="balance")
        for name, value in (("fee", self.fee_rate), ("slippage", self.slippage)):
            if not (math.isfinite(value) and 0.0 <= value < 0.1):
                raise InvalidRequestError(f"{name} must lie in [0, 0.1), got {value}", field=name)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "startingBalance": self.starting_balance,
            "feeRate": self.fee_rate,
            "slippage": self.slippage,
            "account": self.account.to_json(),
            "decision": self.decision.model_dump(mode="json"),
            "resample": self.resample,
        }


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
        from conclave.agents.news_sentiment import base_asset

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


# -- phase 1: the agents -------------------------------------------------------------------


def fresh_mask(history: History) -> B:
    """Bars at whose close the live gateway would find every timeframe fresh.

    The bar itself is always the newest base bar; a higher timeframe is stale when its
    newest closed bar opened more than 2 bars + 5 min before (`validation.check_fresh`), as
    at the start of a history, or after a gap. There the live run has no signal at all.
    """
    close = history.candles.close_time
    ok = np.ones(len(close), dtype=bool)
    for name, hc in history.higher.items():
        htf = Timeframe.parse(name)
        if len(hc) == 0:
            return np.zeros(len(close), dtype=bool)
        idx = closed_index_at(hc, close)
        newest = np.where(idx >= 0, hc.open_time[np.maximum(idx, 0)], np.iinfo(np.int64).min)
        ok &= (idx >= 0) & (newest >= stale_before(htf, close))
    return ok


def agent_series(
    history: History,
    agents: Mapping[str, Agent],
    progress: Progress | None = None,
    *,
    fresh: B | None = None,
) -> dict[str, AgentSeries]:
    """Every analysis agent's series over the whole history, with where it is usable.

    An agent is usable at a bar when its window is long enough (``min_bars``), its series
    succeeded, and the data is fresh there (`fresh_mask`; else the live run fails every
    step with ``stale_data``); pass ``fresh`` when it is already known.
    """
    n = len(history.candles)
    idx = np.arange(n)
    if fresh is None:
        fresh = fresh_mask(history)
    out: dict[str, AgentSeries] = {}
    names = [a for a in agents if a != RISK_AGENT]
    for k, name in enumerate(names):
        agent = agents[name]
        t0 = time.perf_counter()
        res = agent.series(history.input_for(agent))
        took = time.perf_counter() - t0
        need = agent.min_bars(history.timeframe)
        usable = (idx + 1 >= need) & fresh if res.status == "ok" else np.zeros(n, dtype=bool)
        if name == SIZING_AGENT:
            mult = res.columns.get("size_multiplier")
            if mult is None:
                usable = np.zeros(n, dtype=bool)
            else:
                usable = usable & np.isfinite(mult) & (mult >= 0.0) & (mult <= 1.0)
        score = np.where(usable, res.score, 0.0)
        conf = np.where(usable, res.confidence, 0.0)
        out[name] = AgentSeries(
            name, score, conf, usable, res.status, res.reason, need, took,
            columns={k_: np.asarray(v) for k_, v in res.columns.items()},
        )  # fmt: skip
        if progress is not None:
            progress("agents", k + 1, len(names))
    return out


# -- phase 2: the decision before the risk verdict -------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class PreDecision:
    """`decide`'s arithmetic at every bar before the risk manager's verdict.

    ``made`` is false where no decision is made (quorum not met, or no directional weight).
    ``action`` holds BUY/SELL/HOLD codes where made, NONE elsewhere.
    """

    made: B
    conviction: F64
    confidence: F64
    action: npt.NDArray[np.int8]
    strength: F64
    vol_mult: F64


def pre_decide(series: Mapping[str, AgentSeries], config: DecisionConfig, n: int) -> PreDecision:
    """The decision's formula over arrays (`conclave.pipeline.decision` module docstring)."""
    zeros = np.zeros(n)
    never = np.zeros(n, dtype=bool)
    healthy = np.zeros(n, dtype=np.int64)
    for a in ANALYSIS_AGENTS:
        s = series.get(a)
        healthy += s.usable if s is not None else never
    total_w = zeros.copy()
    for a in DIRECTIONAL_AGENTS:
        s = series.get(a)
        if s is not None:
            total_w += np.where(s.usable, config.weight(a), 0.0)
    made = (healthy >= config.quorum) & (total_w > 0)
    safe_w = np.where(total_w > 0, total_w, 1.0)
    parts: list[F64] = []
    wconf = zeros.copy()
    for a in DIRECTIONAL_AGENTS:
        s = series.get(a)
        if s is None:
            continue
        w = config.weight(a)
        parts.append(np.where(s.usable, w * (s.confidence / 100.0) * s.score / safe_w, 0.0))
        wconf += np.where(s.usable, w * s.confidence, 0.0)
    stack = np.stack(parts) if parts else np.zeros((1, n))
    conviction = stack.sum(axis=0)
    spread = np.abs(stack).sum(axis=0)
    mean_conf = wconf / safe_w
    agreement = np.where(spread > 0, np.abs(conviction) / np.where(spread > 0, spread, 1.0), 0.0)
    confidence = np.minimum(100.0, mean_conf * agreement)
    action = np.full(n, HOLD, dtype=np.int8)
    action[conviction >= config.buy_threshold] = BUY
    action[conviction <= -config.sell_threshold] = SELL
    strength = np.where(
        action != HOLD, np.minimum(1.0, np.abs(conviction) / config.strong_threshold), 0.0
    )
    vol = series.get(SIZING_AGENT)
    if vol is not None and "size_multiplier" in vol.columns:
        vol_mult = np.where(vol.usable, vol.columns["size_multiplier"],
                            config.volatility_fallback)  # fmt: skip
    else:
        vol_mult = np.full(n, config.volatility_fallback)
    action[~made] = NONE
    nan = np.full(n, np.nan)
    return PreDecision(
        made,
        np.where(made, conviction, nan),
        np.where(made, confidence, nan),
        action,
        np.where(made, strength, 0.0),
        vol_mult,
    )


# -- phase 3: the account, bar by bar --------------------------------------------------------


class EquityCurve:
    """Equity recorded at each bar's close; peak and start-of-day answered incrementally.

    The peak is kept as points arrive, and `conclave.accounts.risk.start_of_day` is asked
    once per day (points only ever arrive later than every query so far).
    """

    __slots__ = ("_day", "_sod", "peak", "times", "values")

    def __init__(self) -> None:
        self.times: list[int] = []
        self.values: list[float] = []
        self.peak = -math.inf
        self._day = -1
        self._sod: float | None = None

    def append(self, t_ms: int, equity: float) -> None:
        self.times.append(t_ms)
        self.values.append(equity)
        if equity > self.peak:
            self.peak = equity
        if t_ms <= self._day:  # a point exactly at 00:00 is that day's start
            self._day = -1

    def start_of_day(self, t_ms: int) -> float | None:
        """Equity at 00:00 UTC of ``t_ms``'s day: last point at or before it, else the day's
        first point up to ``t_ms``."""
        day = t_ms - t_ms % DAY_MS
        if day == self._day and self._sod is not None:
            return self._sod
        sod = start_of_day(self.times, self.values, t_ms)
        self._day, self._sod = day, sod
        return sod


def agent_verdict(
    curve: EquityCurve,
    as_of_ms: int,
    exposure: float,
    cfg: AccountConfig,
    blocked: bool,
) -> int:
    """The risk-manager agent's level (0 ok .. 3 halt) for a run at ``as_of_ms``.

    The agent's own arithmetic (`conclave.agents.risk_manager`) on the state the live
    account reader gives it: the equity recorded so far (all at or before ``as_of_ms``), the
    start-of-day equity of ``as_of_ms``'s day, the open exposure at the last marks.
    """
    if not curve.values:
        return 3 if blocked else 0
    eq = curve.values[-1]
    peak = curve.peak
    dd = 1.0 - eq / peak if peak > 0 else 0.0
    dd = min(max(dd, 0.0), 1.0)
    sod = curve.start_of_day(as_of_ms)
    loss = 1.0 - eq / sod if sod is not None and sod > 0 else 0.0
    loss = min(max(loss, 0.0), 1.0)
    return 3 if blocked else level_of(dd, loss, eq, exposure, cfg)


def account_risk(
    curve: EquityCurve, exposure: float, cfg: AccountConfig
) -> tuple[float, float, int, float | None]:
    """`conclave.accounts.risk.assess` at the curve's last point: drawdown, loss today,
    level, and the start-of-day equity it used."""
    now = curve.values[-1]
    sod = curve.start_of_day(curve.times[-1])
    dd, loss = drawdown_and_loss(now, curve.peak, sod)
    return dd, loss, level_of(dd, loss, now, exposure, cfg), sod


@dataclass(slots=True)
class _Pending:
    side: Literal["BUY", "SELL"]
    notional: float
    decision_open_ms: int
    reason: str


@dataclass(frozen=True, slots=True, eq=False)
class AccountTrace:
    """The account's state after each bar of the period (what the next run's reader sees)."""

    equity: F64
    cash: F64
    qty: F64
    exposure_abs: F64
    halted: B
    paused_until_ms: I64  # -1: none
    risk_level: npt.NDArray[np.int8]
    allowed: B
    size_multiplier: F64
    action: npt.NDArray[np.int8]
    fills: tuple[Fill, ...]


def simulate(
    period: Candles, pre: PreDecision, settings: BacktestSettings, progress: Progress | None = None
) -> AccountTrace:
    """Run the account over ``period`` (``pre`` cut to it): verdict, fill, record, order.

    The account's risk uses `conclave.accounts.risk`'s own functions; the risk manager's
    level is reused from the account's when both read the same start of day (see below).
    tests/backtest/test_engine.py replays the result through the real `AccountService` and
    the risk-manager agent bar by bar.
    """
    cfg = settings.account
    fee_rate, slip = settings.fee_rate, settings.slippage
    bar_ms = period.timeframe.ms
    n = len(period)
    opens = period.open.tolist()
    closes = period.close.tolist()
    t_open = period.open_time.tolist()
    t_close = period.close_time.tolist()
    act = pre.action.tolist()
    strength = pre.strength.tolist()
    volm = pre.vol_mult.tolist()

    equity_out: list[float] = []
    cash_out: list[float] = []
    qty_out: list[float] = []
    expo_out: list[float] = []
    halted_out: list[bool] = []
    paused_out: list[int] = []
    level_out: list[int] = []
    size_out: list[float] = []
    action_out: list[int] = []
    fills: list[Fill] = []

    curve = EquityCurve()
    append_point = curve.append
    cash = settings.starting_balance
    pos = Position()
    qty = 0.0
    mark = 0.0  # the position's last mark (price)
    status = _STATUS_ACTIVE
    prot = Protections()
    paused_until = -1
    pending: _Pending | None = None
    multipliers = (1.0, cfg.warn_multiplier, cfg.reduce_multiplier, 0.0)

    # the risk manager's level at the next run equals the account's at this close when both
    # read the same start-of-day equity and the peak and that equity are positive (the same
    # formula; `agent_verdict` otherwise): one assessment per bar instead of two
    reuse_day, reuse_level = -1, 0
    sod_day, sod = -1, 0.0
    peak = -math.inf
    for i in range(n):
        # 1. the run at bar i: the risk manager on the state recorded so far
        as_of = t_close[i]
        day = as_of - as_of % DAY_MS
        blocked = status != _STATUS_ACTIVE or as_of < paused_until
        if day == reuse_day:
            lv = 3 if blocked else reuse_level
        else:
            lv = agent_verdict(curve, as_of, abs(qty * mark), cfg, blocked)
        a = act[i]
        size = 0.0
        if a != NONE:
            if lv == 3:
                a = HOLD
            elif a != HOLD:
                size = strength[i] * volm[i] * multipliers[lv]
        level_out.append(lv)
        action_out.append(a)
        size_out.append(size)

        # 2. settle the order of the previous decision at this bar's open
        if pending is not None:
            o = pending
            pending = None
            fbar = Bar(t_open[i], as_of, opens[i], closes[i])
            fill = paper.fill_at_open(o.side, o.notional, fbar, slippage=slip,
                                      fee_rate=fee_rate, cash=cash, position=pos)  # fmt: skip
            if fill is not None:
                pos, delta, pnl = paper.apply_fill(pos, fill)
                qty = pos.qty
                cash += delta
                mark = opens[i]
                pnl_or_none = pnl if o.side == "SELL" else None
                fills.append(Fill(t_open[i], o.decision_open_ms, o.side, fill.qty, fill.price,
                                  fill.fee, pnl_or_none, o.reason))  # fmt: skip
                if o.side == "SELL":
                    prot = after_trade(prot, pnl, t_open[i], bar_ms, cfg)[0]
                    paused_until = -1 if prot.paused_until_ms is None else prot.paused_until_ms

        # 3. record equity at this bar's close; halt or resume (`account_risk`, inline)
        if qty > 0:
            mark = closes[i]
        held = qty * mark
        equity = cash + held
        append_point(as_of, equity)
        if equity > peak:
            peak = equity
        if day != sod_day or as_of == day:  # a point at exactly 00:00 starts its day
            got = curve.start_of_day(as_of)
            sod_day, sod = day, (got if got is not None else 0.0)
        dd, loss = drawdown_and_loss(equity, peak, sod)
        level = level_of(dd, loss, equity, abs(held), cfg)
        if status == _STATUS_ACTIVE:
            if level == 3:
                status = _STATUS_HALTED
        elif recovered(dd, loss, cfg):
            status = _STATUS_ACTIVE
        if peak > 0 and sod > 0:
            reuse_day, reuse_level = day, level
        else:
            reuse_day = -1

        # 4. this bar's decision becomes an order (filled at the next bar's open)
        if size > 0 and status == _STATUS_ACTIVE:  # size > 0: a BUY or a SELL
            side: Literal["BUY", "SELL"] = "BUY" if a == BUY else "SELL"
            if not prot.blocks(side, as_of):
                notional, why = paper.order_notional(
                    side,
                    equity=equity,
                    size_multiplier=size,
                    max_position_fraction=cfg.max_position_fraction,
                    min_order_notional=cfg.min_order_notional,
                    position_value=qty * closes[i],
                )
                if notional > 0:
                    pending = _Pending(side, notional, t_open[i], why)

        equity_out.append(equity)
        cash_out.append(cash)
        qty_out.append(qty)
        expo_out.append(abs(held))
        halted_out.append(status == _STATUS_HALTED)
        paused_out.append(paused_until)
        if progress is not None and (i + 1) % PROGRESS_EVERY == 0:
            progress("account", i + 1, n)
    if progress is not None:
        progress("account", n, n)
    levels = np.asarray(level_out, dtype=np.int8)
    return AccountTrace(
        np.asarray(equity_out), np.asarray(cash_out), np.asarray(qty_out), np.asarray(expo_out),
        np.asarray(halted_out, dtype=bool), np.asarray(paused_out, dtype=np.int64), levels,
        levels < 3, np.asarray(size_out), np.asarray(action_out, dtype=np.int8), tuple(fills),
    )  # fmt: skip


# -- the whole backtest ----------------------------------------------------------------------


def run_backtest(
    history: History,
    agents: Mapping[str, Agent],
    settings: BacktestSettings,
    *,
    progress: Progress | None = None,
) -> BacktestResult:
    """Agents, decision and account over ``history``'s period (see the module docstring)."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    fresh = fresh_mask(history)
    series = agent_series(history, agents, progress, fresh=fresh)
    timings["agents_s"] = time.perf_counter() - t0
    n_all = len(history.candles)

    t1 = time.perf_counter()
    pre_all = pre_decide(series, settings.decision, n_all)
    s = history.start
    pre = PreDecision(*(getattr(pre_all, f)[s:] for f in PreDecision.__slots__))
    timings["decision_s"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    period = history.period
    trace = simulate(period, pre, settings, progress)
    timings["account_s"] = time.perf_counter() - t2
    timings["total_s"] = time.perf_counter() - t0

    cut = {name: _cut(a, s) for name, a in series.items()}
    if RISK_AGENT in agents:
        m, ok = len(period), fresh[s:]
        cut[RISK_AGENT] = AgentSeries(RISK_AGENT, np.zeros(m), np.where(ok, 100.0, 0.0), ok)
    action = trace.action
    if RISK_AGENT not in agents:  # never tradable without the risk manager (RELIABILITY C5)
        action = np.where(pre.made, BLOCKED, NONE).astype(np.int8)
    gaps = find_gaps(period)
    equity = trace.equity
    exposure = np.divide(trace.exposure_abs, equity, out=np.zeros_like(equity),
                         where=equity > 0)  # fmt: skip
    return BacktestResult(
        symbol=history.symbol,
        timeframe=history.timeframe,
        source=history.source,
        simulated=history.simulated,
        open_time=period.open_time,
        close_time=period.close_time,
        open=period.open,
        close=period.close,
        agents=cut,
        conviction=pre.conviction,
        confidence=pre.confidence,
        action=action,
        size_multiplier=np.where(action == BLOCKED, 0.0, trace.size_multiplier),
        risk_level=trace.risk_level,
        allowed=trace.allowed,
        equity=equity,
        cash=trace.cash,
        position_qty=trace.qty,
        exposure=exposure,
        fills=trace.fills if RISK_AGENT in agents else (),
        gaps=tuple(Gap(g.after_open_ms, g.before_open_ms, g.missing_bars) for g in gaps.gaps),
        starting_balance=settings.starting_balance,
        fee_rate=settings.fee_rate,
        slippage=settings.slippage,
        settings=settings.to_json()
        | {"agents": list(agents), "warmupBars": s, "resampled": sorted(history.resampled)},
        timings=timings,
        trace=trace,
    )


def _cut(a: AgentSeries, s: int) -> AgentSeries:
    return AgentSeries(
        a.name, a.score[s:], a.confidence[s:], a.usable[s:], a.status, a.reason, a.min_bars,
        a.seconds, columns={k: v[s:] for k, v in a.columns.items()},
    )  # fmt: skip


def account_state_at(
    result: BacktestResult, i: int, account_id: str, cfg: AccountConfig
) -> AccountState:
    """What the live account reader would give a run at bar ``i`` of ``result``'s period.

    The equity recorded at the closes of bars before ``i``, the open exposure at their last
    marks, the start-of-day equity of bar ``i``'s close (`accounts.risk.start_of_day`),
    and the account's levels with the blocking reason (halted, or paused by the
    stop-loss streak guard).
    """
    trace = result.trace
    if trace is None:
        raise ValueError("the result carries no account trace")
    as_of = int(result.close_time[i])
    times = result.close_time[:i]
    equity = trace.equity[:i]
    blocked = ""
    if i > 0 and trace.halted[i - 1]:
        blocked = "account halted"
    elif i > 0 and trace.paused_until_ms[i - 1] > as_of:
        blocked = "stop-loss streak guard"
    return AccountState(
        account_id=account_id,
        equity_time_ms=times,
        equity=equity,
        open_exposure=float(trace.exposure_abs[i - 1]) if i > 0 else 0.0,
        start_of_day_equity=start_of_day(times, equity, as_of) if i > 0 else None,
        risk=cfg.agent_risk(blocked),
    )
