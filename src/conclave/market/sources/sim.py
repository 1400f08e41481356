"""The sim source: a deterministic, seeded synthetic market for offline use (labelled simulated).

Every symbol gets a daily price path from `ORIGIN_MS` (2017-01-01 UTC) driven by a seeded
Markov chain of regimes (`REGIMES`: trending up, trending down, ranging with mean
reversion, volatile). Inside each day a one-minute log-price path runs as a Brownian bridge
from the day's open to its close, with wicks, an intraday rhythm, volume that rises with
the size of the move and the regime, taker-buy volume leaning with the bar's direction and
a trade count. Each day is drawn from its own Philox counter, so any day can be made
alone and a bar never depends on the window asked for. Every timeframe is the minute
series aggregated with `resample` (at or above 1h via cached hourly bars), and volumes are
multiples of a power-of-two lot, so sums are exact: 4h is exactly 1h aggregated, 1d
exactly 4h aggregated. The source never reads the clock: ``now_ms`` is injected.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from conclave.errors import InvalidRequestError
from conclave.market.candles import Candles
from conclave.market.resample import aggregate_columns, resample
from conclave.market.sources.base import check_limit, check_symbol
from conclave.timeframes import DAY_MS, HOUR_MS, MINUTE_MS, Timeframe

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
_Block = dict[str, npt.NDArray[Any]]
_HOUR: Final = Timeframe.parse("1h")

ORIGIN_MS: Final = 1_483_228_800_000  # 2017-01-01 00:00 UTC; no bars exist before it
#: The simulated market ends here (2071-10-05): later bars would cost a whole path to reach
HORIZON_MS: Final = ORIGIN_MS + 20_000 * DAY_MS
REGIMES: Final = ("trend_up", "trend_down", "ranging", "volatile")
_MINUTES: Final = 1440
_CHUNK_DAYS: Final = 512
_BATCH_DAYS: Final = 16
_MEAN_DAYS: Final = np.array([30.0, 24.0, 28.0, 10.0])  # mean regime duration
_NEXT: Final = np.array(  # regime transition probabilities (rows: from)
    [[0.0, 0.25, 0.5, 0.25], [0.3, 0.0, 0.45, 0.25], [0.35, 0.3, 0.0, 0.35], [0.3, 0.3, 0.4, 0.0]]
).cumsum(axis=1)
#: Rough early-2017 USD prices of a few well-known coins, so the sim looks familiar.
_KNOWN_PRICES: Final = {"BTC": 1000.0, "ETH": 8.0, "BNB": 0.1, "LTC": 4.5, "XRP": 0.0065,
                        "ADA": 0.03, "DOGE": 0.0002, "SOL": 1.0, "LINK": 0.2}  # fmt: skip
_USD_QUOTES: Final = {"USDT", "USD", "USDC", "BUSD", "FDUSD"}
_VOL_FACTOR: Final = np.array([0.8, 0.9, 0.6, 1.9])
_ACTIVITY: Final = np.array([1.1, 1.25, 0.75, 1.9])
_MINUTE_OF_DAY = np.arange(_MINUTES)
_SEASON = 1 + 0.3 * np.cos(2 * np.pi * (_MINUTE_OF_DAY / _MINUTES - 14.5 / 24))
_SEASON_SIGMA = _SEASON / np.sqrt(np.sum(_SEASON**2))  # the day's variance, spread by hour
_SEASON_VOLUME = _SEASON**1.5


def _digest(*parts: object) -> npt.NDArray[np.uint64]:
    raw = hashlib.blake2b(repr(parts).encode(), digest_size=16).digest()
    return np.frombuffer(raw, dtype=np.uint64).copy()


def _rng(key: npt.NDArray[np.uint64], stream: int, index: int) -> np.random.Generator:
    """An independent generator for (stream, index): Philox is counter-based."""
    counter = np.array([0, 0, index, stream], dtype=np.uint64)
    return np.random.Generator(np.random.Philox(key=key, counter=counter))


@dataclass(frozen=True, slots=True)
class _Profile:
    """Per-symbol constants derived from a hash of the symbol alone."""

    log_price0: float
    vol: float  # daily log-return sd in an ordinary regime
    turnover: float  # quote currency per minute
    lot: float  # volume quantum, a power of two: sums of volumes are exact
    trade_quote: float  # average trade size in quote currency

    @classmethod
    def of(cls, symbol: str) -> _Profile:
        u = _digest("profile", symbol).astype(np.float64) / 2.0**64
        u2 = _digest("profile2", symbol).astype(np.float64) / 2.0**64
        log_price0 = float(np.log(10.0) * (-1.5 + 5.5 * u[0]))
        for base, price in _KNOWN_PRICES.items():
            if symbol.startswith(base) and symbol[len(base) :] in _USD_QUOTES:
                log_price0 = float(np.log(price) + 0.2 * (u[0] - 0.5))
        turnover = float(10 ** (3.5 + 2 * u[1]))
        lot = float(2.0 ** (np.floor(np.log2(turnover / np.exp(log_price0))) - 20))
        return cls(log_price0, 0.025 + 0.03 * u2[0], turnover, lot, float(10 ** (2 + u2[1])))


class _Spine:
    """One symbol's daily regimes, opens and closes (log), grown in fixed chunks in order."""

    def __init__(self, seed: int, symbol: str, profile: _Profile) -> None:
        self.key = _digest("sim", seed, symbol)
        self.profile = profile
        self._chain = _rng(self.key, 1, 0)
        self._segments: list[tuple[int, int, float]] = []  # (start day, regime, strength)
        self._next = (0, 2, 1.0)
        self.regime = np.zeros(0, dtype=np.int8)
        self.log_close = np.zeros(0)
        self.vol = np.zeros(0)
        self.activity = np.zeros(0)

    @property
    def log_open(self) -> F64:
        opens: F64 = np.r_[self.profile.log_price0, self.log_close[:-1]]
        return opens

    def ensure(self, days: int) -> None:
        """Grow the spine to cover day indices below ``days``."""
        while len(self.log_close) < days:
            self._grow()

    def _grow(self) -> None:
        c0 = len(self.log_close)
        c1 = c0 + _CHUNK_DAYS
        while self._next[0] < c1:
            start, state, _ = self._next
            self._segments.append(self._next)
            u = self._chain.random(3)  # always three draws per segment: prefix-stable
            days = 1 + int(min(np.log1p(-u[0]) / np.log1p(-1 / _MEAN_DAYS[state]), 90))
            nxt = int(np.searchsorted(_NEXT[state], u[2], side="right"))
            self._next = (start + days, min(nxt, 3), 0.6 + 0.8 * u[1])
        rng = _rng(self.key, 2, c0 // _CHUNK_DAYS)
        eps, act = rng.standard_normal((2, _CHUNK_DAYS))
        p = self.profile
        x = self.log_close[-1] if c0 else p.log_price0
        regime = np.zeros(_CHUNK_DAYS, dtype=np.int8)
        vol = np.zeros(_CHUNK_DAYS)
        ret = np.zeros(_CHUNK_DAYS)
        starts = [s for s, _, _ in self._segments] + [self._next[0]]
        for k, (start, reg, strength) in enumerate(self._segments):
            a, b = max(start, c0) - c0, min(starts[k + 1], c1) - c0
            if a >= b:
                continue
            sd = p.vol * _VOL_FACTOR[reg] * (strength if reg == 3 else 1.0)
            pull = -0.004 * (x - p.log_price0)  # keeps decades of prices plausible
            e = eps[a:b] * sd
            if reg == 2:  # ranging: AR(1) deviation from the level where the piece began
                phi = 0.85 ** np.arange(1, b - a + 1)
                dev = phi * np.cumsum(e / phi)
                r = np.diff(np.r_[0.0, dev]) + pull
            else:
                drift = {0: 0.22, 1: -0.22}.get(reg, 0.0) * p.vol * strength
                r = e + drift + pull
            regime[a:b], vol[a:b], ret[a:b] = reg, sd, r
            x += float(np.sum(r))
        base = self.log_close[-1] if c0 else p.log_price0
        closes = base + np.cumsum(ret)
        activity = _ACTIVITY[regime] * (0.7 + 0.6 * np.abs(ret) / vol) * np.exp(0.25 * act)
        self.regime = np.r_[self.regime, regime]
        self.log_close = np.r_[self.log_close, closes]
        self.vol = np.r_[self.vol, vol]
        self.activity = np.r_[self.activity, activity]


def _minute_days(spine: _Spine, days: I64) -> _Block:
    """Minute bars of the given day indices (each day from its own random stream)."""
    p = spine.profile
    z = np.empty((5, len(days), _MINUTES), dtype=np.float32)
    for j, d in enumerate(days.tolist()):
        z[:, j, :] = _rng(spine.key, 3, d).standard_normal((5, _MINUTES), dtype=np.float32)
    o_log, c_log = spine.log_open[days][:, None], spine.log_close[days][:, None]
    sigma = spine.vol[days][:, None] * _SEASON_SIGMA[None, :]
    w = np.cumsum(sigma * z[0], axis=1)
    v = np.cumsum(sigma**2, axis=1)
    frac = v / v[:, -1:]
    path = o_log + (c_log - o_log) * frac + (w - frac * w[:, -1:])
    x = np.concatenate([o_log, path[:, :-1], c_log], axis=1)  # exact day open and close
    price = np.exp(x)
    op, cl = price[:, :-1], price[:, 1:]
    high = np.maximum(op, cl) * np.exp(0.6 * sigma * np.abs(z[1]))
    low = np.minimum(op, cl) * np.exp(-0.6 * sigma * np.abs(z[2]))
    move = np.abs(np.diff(x, axis=1)) / sigma
    base_volume = p.turnover / np.exp(o_log) * spine.activity[days][:, None]
    raw = base_volume * _SEASON_VOLUME * (0.3 + move) * np.exp(0.5 * z[3] - 0.125)
    volume = np.maximum(np.round(raw / p.lot), 1.0) * p.lot
    lean = np.tanh(np.diff(x, axis=1) / sigma)
    share = np.clip(0.5 + 0.22 * lean + 0.07 * z[4], 0.03, 0.97)
    taker = np.round(volume / p.lot * share) * p.lot
    # bigger bars carry bigger trades on average: reuse the volume noise, damped
    trades = np.maximum(np.round(volume * op / p.trade_quote * np.exp(-0.2 * z[3])), 1)
    open_time = ORIGIN_MS + days[:, None] * DAY_MS + _MINUTE_OF_DAY[None, :] * MINUTE_MS
    cols = {"open": op, "high": high, "low": low, "close": cl, "volume": volume,
            "taker_buy_volume": taker, "trades": trades.astype(np.int64)}  # fmt: skip
    out: _Block = {name: col.reshape(-1) for name, col in cols.items()}
    out["open_time"] = open_time.reshape(-1).astype(np.int64)
    return out


class _LRU(OrderedDict[Any, _Block]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def hit(self, key: Any) -> _Block | None:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: Any, value: _Block) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class SimSource:
    """A seeded synthetic market; every candle it returns is labelled ``simulated``."""

    simulated = True

    def __init__(self, seed: int = 7, *, now_ms: Callable[[], int], max_days: int = 16384) -> None:
        """Serve the market of ``seed``; ``now_ms`` (ms UTC) is asked only when end is None."""
        self.seed = seed
        self.name = f"sim:{seed}"
        self._now_ms = now_ms
        self._spines: OrderedDict[str, _Spine] = OrderedDict()
        self._hours = _LRU(max_days)
        self._minutes = _LRU(64)

    def _spine(self, symbol: str, days: int) -> _Spine:
        spine = self._spines.get(symbol)
        if spine is None:
            spine = self._spines[symbol] = _Spine(self.seed, symbol, _Profile.of(symbol))
            while len(self._spines) > 256:
                self._spines.popitem(last=False)
        spine.ensure(days)
        return spine

    def _blocks(self, symbol: str, days: I64, hourly: bool) -> _Block:
        cache = self._hours if hourly else self._minutes
        found = {d: b for d in days.tolist() if (b := cache.hit((symbol, d))) is not None}
        missing = np.array([d for d in days.tolist() if d not in found], dtype=np.int64)
        spine = self._spine(symbol, int(days.max()) + 1)
        # small batches keep the temporaries in cache instead of faulting in fresh pages
        for i in range(0, len(missing), _BATCH_DAYS):
            batch = missing[i : i + _BATCH_DAYS]
            block = _minute_days(spine, batch)
            per_day = _MINUTES
            if hourly:
                block = aggregate_columns(block.pop("open_time"), block, _HOUR)
                per_day = 24
            for j, d in enumerate(batch.tolist()):
                found[d] = {n: c[j * per_day : (j + 1) * per_day] for n, c in block.items()}
                cache.put((symbol, d), found[d])
        parts = [found[d] for d in days.tolist()]
        return {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}

    def candles(
        self, symbol: str, timeframe: Timeframe | str, first_open_ms: int, last_open_ms: int
    ) -> Candles:
        """Every bar opening from ``first_open_ms`` to ``last_open_ms`` (ms UTC, inclusive)."""
        check_symbol(symbol)
        tf = Timeframe.parse(timeframe)
        if tf.ms < MINUTE_MS:
            raise InvalidRequestError(
                f"the sim source's finest timeframe is 1m, not {tf}", field="timeframe"
            )
        if last_open_ms >= HORIZON_MS:
            raise InvalidRequestError(
                f"the simulated market ends at {HORIZON_MS} ms (2071-10-05), asked for bars"
                f" up to {last_open_ms} ms",
                field="end",
            )
        first = max(tf.floor(first_open_ms), tf.floor(ORIGIN_MS))
        stop = tf.add(tf.floor(last_open_ms))
        if stop <= ORIGIN_MS or first > last_open_ms:
            z: list[float] = []
            return Candles.from_arrays(
                symbol, tf, z, z, z, z, z, z, z, z, source=self.name, simulated=True
            )
        d0 = max((first - ORIGIN_MS) // DAY_MS, 0)
        d1 = (stop - 1 - ORIGIN_MS) // DAY_MS
        hourly = tf.ms >= HOUR_MS
        b = self._blocks(symbol, np.arange(d0, d1 + 1, dtype=np.int64), hourly)
        base = Candles.from_arrays(
            symbol, "1h" if hourly else "1m", b["open_time"], b["open"], b["high"], b["low"],
            b["close"], b["volume"], b["taker_buy_volume"], b["trades"],
            source=self.name, simulated=True,
        )  # fmt: skip
        out = base if base.timeframe == tf else resample(base, tf)
        keep = (out.open_time >= first) & (out.open_time <= last_open_ms)
        return out.take(keep)

    def regime_codes(self, symbol: str, times_ms: Any) -> npt.NDArray[np.int8]:
        """Index into `REGIMES` of the day holding each instant (ms UTC); -1 before the origin."""
        t = np.asarray(times_ms, dtype=np.int64)
        day = (t - ORIGIN_MS) // DAY_MS
        spine = self._spine(check_symbol(symbol), int(day.max(initial=0)) + 1)
        codes: npt.NDArray[np.int8] = np.where(
            day >= 0, spine.regime[np.maximum(day, 0)], -1
        ).astype(np.int8)
        return codes

    async def get_candles(
        self, symbol: str, timeframe: Timeframe | str, limit: int, end: int | None = None
    ) -> Candles:
        """The newest ``limit`` bars closed by ``end`` (ms UTC; None: the injected now).

        Only closed bars are returned: the bar still open at ``end`` is left out.
        """
        check_limit(limit)
        check_symbol(symbol)
        tf = Timeframe.parse(timeframe)
        end_ms = self._now_ms() if end is None else end
        last = tf.add(tf.floor(end_ms), -1)
        first = tf.add(last, -(limit - 1))
        return self.candles(symbol, tf, first, last).tail(limit)

    async def aclose(self) -> None:
        """Forget cached days."""
        self._hours.clear()
        self._minutes.clear()
        self._spines.clear()
