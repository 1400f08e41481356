"""What an agent reads: the data it declares it `Needs`, and the `AgentInput` a run hands it.

An input holds closed candles of the run's timeframe and, as declared, closed bars of higher
timeframes, the headlines published so far and the account's state (`AccountState`, with the
account's own risk levels in `AccountRisk`). Everything an agent sees arrives here: it reads
no clock and does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from conclave.market.candles import Candles
from conclave.news.headline import Headline
from conclave.slots import slot_setters
from conclave.timeframes import BINANCE_INTERVALS, Timeframe

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Needs:
    """What an agent needs: bars, higher timeframes (multiples of the run's), news, account.

    ``min_bars`` is the trailing window every per-bar value depends on (fewer bars give
    ``insufficient_data``); ``lookback`` is how many bars the caller should fetch (at least
    ``min_bars``). ``higher`` lists multiples of the run's timeframe, mapped by
    `higher_timeframes` to the nearest exchange interval the run's timeframe tiles.
    ``higher_in_lookback`` declares that the higher bars read all lie within the time span
    of the ``lookback`` window (as when they are resampled from it), so a caller may send
    only those (`conclave.pipeline.context.InputPlan`); False (default): send them whole.
    """

    min_bars: int
    lookback: int
    higher: tuple[int, ...] = ()
    news: bool = False
    account: bool = False
    higher_in_lookback: bool = False

    def higher_timeframes(self, timeframe: Timeframe | str) -> tuple[str, ...]:
        """Concrete higher timeframes for a run on ``timeframe`` (1h with (4, 24): 4h, 1d)."""
        return _higher_timeframes(self.higher, str(timeframe))


@lru_cache(maxsize=256)
def _higher_timeframes(multiples: tuple[int, ...], timeframe: str) -> tuple[str, ...]:
    base = Timeframe.parse(timeframe)
    out: list[str] = []
    for mult in multiples:
        for name in BINANCE_INTERVALS:
            cand = Timeframe.parse(name)
            if cand.ms >= mult * base.ms and base.divides(cand) and name not in out:
                out.append(name)
                break
    return tuple(out)


@dataclass(frozen=True, slots=True)
class AccountRisk:
    """An account's own risk levels, overriding the risk-manager agent's parameters.

    Limits are fractions (warn, reduce, halt) as in `RiskManagerParams`; a non-empty
    ``blocked_reason`` (account paused or halted, streak guard) makes the level ``halt``.
    """

    drawdown_limits: tuple[float, float, float]
    daily_loss_limits: tuple[float, float, float]
    max_exposure: float
    warn_multiplier: float
    reduce_multiplier: float
    blocked_reason: str = ""


@dataclass(frozen=True, slots=True, eq=False)
class AccountState:
    """An account's state as of a run: equity history, open exposure, and whether it was read.

    ``equity_time_ms``/``equity`` are the equity curve (quote currency, ascending times).
    ``start_of_day_equity`` overrides the equity at 00:00 UTC of the last point's day.
    ``readable`` is false when the account is named but its state could not be read;
    ``error`` then says why. ``account_id`` None means no account was named. ``risk``,
    when given, carries the account's own risk levels (else the agent's parameters apply).
    """

    account_id: str | None
    equity_time_ms: I64 = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    equity: F64 = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    open_exposure: float = 0.0
    start_of_day_equity: float | None = None
    readable: bool = True
    error: str = ""
    risk: AccountRisk | None = None

    @classmethod
    def fresh(cls) -> AccountState:
        """No account named: assessed as a fresh account with no drawdown."""
        return cls(account_id=None)

    @classmethod
    def unreadable(cls, account_id: str, error: str) -> AccountState:
        """A named account whose state could not be read (not tradable)."""
        return cls(account_id=account_id, readable=False, error=error)


@dataclass(frozen=True, slots=True, eq=False, init=False)
class AgentInput:
    """Everything an agent sees: closed candles of the run's timeframe and its extras.

    ``candles`` holds closed bars only; ``higher`` maps timeframe names to closed higher
    bars (agents that need them resample ``candles`` when absent). ``news`` None means no
    news source is configured; ``account`` None means no account was named.
    """

    symbol: str
    timeframe: str
    as_of_ms: int
    candles: Candles
    higher: Mapping[str, Candles] = field(default_factory=dict)
    news: Sequence[Headline] | None = None
    account: AccountState | None = None

    def __init__(
        self,
        symbol: str,
        timeframe: str,
        as_of_ms: int,
        candles: Candles,
        higher: Mapping[str, Candles] | None = None,
        news: Sequence[Headline] | None = None,
        account: AccountState | None = None,
    ) -> None:
        # nine inputs a pipeline run: the slots written through their descriptors, as
        # `conclave.agents.outputs` does, in about half the generated ``__init__``'s time
        _in_symbol(self, symbol)
        _in_timeframe(self, timeframe)
        _in_as_of_ms(self, as_of_ms)
        _in_candles(self, candles)
        _in_higher(self, {} if higher is None else higher)
        _in_news(self, news)
        _in_account(self, account)

    def window(self, stop: int, length: int) -> AgentInput:
        """The same input cut to the ``length`` bars ending before index ``stop``."""
        start = max(0, stop - length)
        whole = stop >= len(self.candles) or stop <= 0
        return AgentInput(
            self.symbol,
            self.timeframe,
            self.as_of_ms if whole else int(self.candles.close_time[stop - 1]),
            self.candles.take(slice(start, stop)),
            self.higher,
            self.news,
            self.account,
        )


(_in_symbol, _in_timeframe, _in_as_of_ms, _in_candles, _in_higher, _in_news, _in_account) = (
    slot_setters(AgentInput)
)
