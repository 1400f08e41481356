"""pattern-recognition: TA-Lib candlestick patterns and chart patterns from swing points.

Method: candlestick patterns are TA-Lib's (Nison 1991, *Japanese Candlestick Charting
Techniques*): ``CANDLES`` below, each +100 (bullish) or -100 (bearish) on the bar that
completes it. Chart patterns are `chart_patterns.detect` (Bulkowski 2005): double top and
bottom, head and shoulders and its inverse, ascending, descending and symmetric triangles,
and support/resistance breakouts, each reported on the bar that confirms it (a close beyond
its key level) and never changed afterwards.

Score: every confirmation adds ``direction * weight`` (``candle_weight`` for a candlestick,
``chart_weight`` for a chart pattern) and fades by ``decay`` per bar, for at most
``horizon`` bars; the score is that sum clipped to [-1, 1]. Confidence: ``100 * min(1,
decayed weight of all signals) * agreement`` where agreement is ``|signed| / total``. No
pattern: score 0, confidence 0. The payload lists every pattern confirmed in the last
``horizon`` bars with its kind, direction, start and end bar times and key levels.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import Field

from conclave.agents import chart_last as cl
from conclave.agents import chart_patterns as cp
from conclave.agents import indicators as ind
from conclave.agents.base import Agent
from conclave.agents.indicators.talib_numpy import abstract, talib
from conclave.agents.inputs import F64, AgentInput, Needs
from conclave.agents.outputs import SeriesOutput
from conclave.agents.params import AgentParams
from conclave.agents.scoring import finish, finish1, fnum, iso_time
from conclave.market.candles import Candles

#: TA-Lib candlestick functions used, with the name reported.
CANDLES: dict[str, str] = {
    "CDLENGULFING": "engulfing",
    "CDLHAMMER": "hammer",
    "CDLINVERTEDHAMMER": "inverted_hammer",
    "CDLHANGINGMAN": "hanging_man",
    "CDLSHOOTINGSTAR": "shooting_star",
    "CDLMORNINGSTAR": "morning_star",
    "CDLEVENINGSTAR": "evening_star",
    "CDLPIERCING": "piercing",
    "CDLDARKCLOUDCOVER": "dark_cloud_cover",
    "CDL3WHITESOLDIERS": "three_white_soldiers",
    "CDL3BLACKCROWS": "three_black_crows",
    "CDLHARAMI": "harami",
}
# TA-Lib's own functions, without the package's wrapper (it only converts pandas or polars
# series, and costs a few microseconds a call: a tenth of the live step, twelve calls a run)
_FUNCS = [getattr(getattr(talib, fn), "__wrapped__", getattr(talib, fn)) for fn in CANDLES]
_LABELS = list(CANDLES.values())
#: Bars a candlestick reads: the bar completing it and TA-Lib's lookback before it.
CANDLE_BARS = 1 + max(int(abstract.Function(fn).lookback) for fn in CANDLES)  # type: ignore[attr-defined]


class PatternRecognitionParams(AgentParams):
    swing_k: int = Field(3, ge=1)
    window: int = Field(120, ge=20)
    tolerance: float = Field(0.02, gt=0.0, lt=0.5)
    min_height: float = Field(0.02, ge=0.0, lt=1.0)
    head_margin: float = Field(0.02, ge=0.0, lt=1.0)
    breakout_bars: int = Field(30, ge=1)
    candle_weight: float = Field(0.25, ge=0.0, le=1.0)
    chart_weight: float = Field(0.6, ge=0.0, le=1.0)
    decay: float = Field(0.85, gt=0.0, lt=1.0)
    horizon: int = Field(20, ge=1)
    candlesticks: bool = True


def window_bars(p: PatternRecognitionParams) -> int:
    """Bars a value reads: the ``horizon`` bars whose signals it sums, the oldest reading
    back to its earliest swing in ``window`` (known from the ``swing_k`` bars before it)
    or to the first bar of its longest candlestick."""
    signal = max(p.window + p.swing_k, CANDLE_BARS if p.candlesticks else 1)
    return signal + p.horizon - 1


class PatternRecognition(Agent):
    """Confirmed candlestick and chart patterns (see module docstring)."""

    name: ClassVar[str] = "pattern-recognition"
    version: ClassVar[str] = "1.0.0"
    description: ClassVar[str] = "TA-Lib candlestick patterns and swing-point chart patterns"
    needs: ClassVar[Needs] = Needs(
        min_bars=window_bars(PatternRecognitionParams()),
        lookback=window_bars(PatternRecognitionParams()),
    )
    Params: ClassVar[type[AgentParams]] = PatternRecognitionParams
    params: PatternRecognitionParams

    def min_bars(self, timeframe: str) -> int:
        return window_bars(self.params)

    def compute(self, data: AgentInput) -> SeriesOutput:
        p = self.params
        cd = data.candles
        n = len(cd)
        h, lo, c = cd.high, cd.low, cd.close
        settings = cp.Settings(
            p.swing_k, p.window, p.tolerance, p.min_height, p.head_margin, p.breakout_bars
        )
        charts = cp.detect(h, lo, c, settings)
        # one row per signal source: a chart kind (direction x weight where confirmed) or a
        # candlestick (TA-Lib's sign x weight); summed per bar, so start-independent
        # (rows added in order per bar; only nonzero entries: adding +0.0 changes nothing)
        both = np.zeros((2, n))
        total, size = both
        first = max(0, n - p.horizon)
        found = self._candle_raw(cd) if p.candlesticks else []
        sig = np.zeros((len(charts) + len(found), n - first))
        for i in range(sig.shape[0]):
            if i < len(charts):
                d = charts[i]
                at = np.flatnonzero(d.events)
                vals = d.direction[at] * p.chart_weight
            else:
                raw = found[i - len(charts)]
                at = np.flatnonzero(raw != 0)
                vals = np.sign(raw[at]) * p.candle_weight
            total[at] += vals
            size[at] += np.abs(vals)
            keep = at >= first
            sig[i, at[keep] - first] = vals[keep]
        s_dec, w_dec = ind.exp_window_sum(both, p.decay, p.horizon)
        with np.errstate(invalid="ignore", divide="ignore"):
            agree = np.where(w_dec > 0, np.abs(s_dec) / np.where(w_dec > 0, w_dec, 1.0), 0.0)
        conf = 100.0 * np.minimum(1.0, w_dec) * agree
        conf[np.isnan(w_dec)] = np.nan
        score, conf = finish(s_dec, conf, self.min_bars(data.timeframe) - 1)

        events = [
            cl.Event(
                r, t, float(d.direction[t]), int(d.start[t]), {k: v[t] for k, v in d.levels.items()}
            )
            for r, d in enumerate(charts)
            for t in (np.flatnonzero(d.events[first:]) + first).tolist()
        ]
        raw_tail = np.zeros((len(found), n - first))
        for j, raw in enumerate(found):
            np.sign(raw[first:], out=raw_tail[j])
        return SeriesOutput(score, conf, self._evidence(cd, first, sig, events, raw_tail))

    def compute_last(self, data: AgentInput) -> SeriesOutput:
        # chart patterns of the last ``horizon`` bars only (`chart_last.detect_last`), then
        # the same per-bar sums (rows in order from 0.0, zeros skipped: adding +-0.0 to a
        # sum that starts at +0.0 changes nothing) and the same decayed window as `compute`,
        # on plain floats (`indicators.exp_window_last`)
        p = self.params
        cd = data.candles
        n = len(cd)
        hz = p.horizon
        first = n - hz
        settings = self._settings()
        events = cl.detect_last(cd.high, cd.low, cd.close, settings, first)
        nk = len(cl.KINDS)
        # (row, bar - first) -> signed weight; a chart event's direction, a candle's sign
        chart: dict[tuple[int, int], tuple[float, cl.Event]] = {}
        for e in events:
            chart[(e.row, e.t - first)] = (e.direction * p.chart_weight, e)
        found: list[tuple[int, int, float]] = []  # (row, bar - first, value), row order
        for (r, j), (v, _) in sorted(chart.items()):
            found.append((r, j, v))
        signs: dict[tuple[int, int], float] = {}
        if p.candlesticks:
            for r, j, sg in self._candle_tail(cd, first):
                signs[(r, j)] = sg
                found.append((nk + r, j, sg * p.candle_weight))
        total = [0.0] * hz
        size = [0.0] * hz
        for _, j, v in found:
            total[j] += v
            size[j] += abs(v)
        s_dec = ind.exp_window_last(total, p.decay)
        w_dec = ind.exp_window_last(size, p.decay)
        agree = abs(s_dec) / w_dec if w_dec > 0 else 0.0
        score, conf = finish1(s_dec, 100.0 * min(1.0, w_dec) * agree)
        labels = _LABELS
        items: list[tuple[int, int, str, bool, cl.Event | None]] = []
        for r, j, v in found:
            if v == 0:  # as `np.nonzero` on the rows: a zero weight lists nothing
                continue
            if r < nk:
                e = chart[(r, j)][1]
                items.append((r, j + first, cl.KINDS[r], e.direction > 0, e))
            else:
                items.append((r, j + first, labels[r - nk], signs[(r - nk, j)] > 0, None))
        return SeriesOutput(score, conf, self._evidence_items(cd, items))

    def _settings(self) -> cp.Settings:
        """The chart settings of the (frozen) parameters, built once per parameter object."""
        p = self.params
        got: tuple[AgentParams, cp.Settings] | None = self.__dict__.get("_chart_settings")
        if got is None or got[0] is not p:
            settings = cp.Settings(
                p.swing_k, p.window, p.tolerance, p.min_height, p.head_margin, p.breakout_bars
            )
            got = (p, settings)
            self.__dict__["_chart_settings"] = got
        return got[1]

    def _candle_tail(self, cd: Candles, first: int) -> list[tuple[int, int, float]]:
        """(row, bar - first, sign) of TA-Lib's nonzero candlestick outputs from ``first``."""
        fh = [
            np.ascontiguousarray(x, dtype=np.float64) for x in (cd.open, cd.high, cd.low, cd.close)
        ]
        # one array of the twelve outputs, then the bars from ``first`` of each row
        whole = np.concatenate([fn(*fh) for fn in _FUNCS]).reshape(len(_FUNCS), -1)
        tails = whole[:, first:]
        rows, bars = np.nonzero(tails)  # row-major: rows in `CANDLES` order
        vals = tails[rows, bars].tolist()
        return [
            (r, j, 1.0 if v > 0 else -1.0)
            for r, j, v in zip(rows.tolist(), bars.tolist(), vals, strict=True)
        ]

    def _candle_raw(self, cd: Candles) -> list[npt.NDArray[np.int32]]:
        """TA-Lib's candlestick outputs as they come (+-100 and such), in `CANDLES` order."""
        fh = [
            np.ascontiguousarray(x, dtype=np.float64) for x in (cd.open, cd.high, cd.low, cd.close)
        ]
        return [np.asarray(fn(*fh), dtype=np.int32) for fn in _FUNCS]

    def _evidence(
        self, cd: Candles, first: int, sig: F64, events: list[cl.Event], raw: F64
    ) -> dict[str, Any]:
        """Every signal of the bars from ``first`` (``sig``'s columns), by end time and kind."""
        at = {(e.row, e.t): e for e in events}
        nk = len(cl.KINDS)
        items: list[tuple[int, int, str, bool, cl.Event | None]] = []
        rows_at, bars_at = np.nonzero(sig)
        for r, j in zip(rows_at.tolist(), bars_at.tolist(), strict=True):
            t = j + first
            if r < nk:
                e = at[(r, t)]
                items.append((r, t, cl.KINDS[r], e.direction > 0, e))
            else:
                items.append((r, t, _LABELS[r - nk], bool(raw[r - nk, j] > 0), None))
        return self._evidence_items(cd, items)

    def _evidence_items(
        self, cd: Candles, items: list[tuple[int, int, str, bool, cl.Event | None]]
    ) -> dict[str, Any]:
        """The payload of the signals ``(row, bar, kind, bullish, chart event or None)``."""
        found: list[dict[str, Any]] = []
        for _, t, kind, bull, e in items:
            end = iso_time(int(cd.open_time[t]))
            if e is not None:
                found.append(
                    {
                        "kind": kind,
                        "type": "chart",
                        "direction": "bullish" if bull else "bearish",
                        "start": iso_time(int(cd.open_time[e.start])),
                        "end": end,
                        "levels": {k: fnum(v) for k, v in e.levels.items()},
                    }
                )
            else:
                found.append(
                    {
                        "kind": kind,
                        "type": "candlestick",
                        "direction": "bullish" if bull else "bearish",
                        "start": end,
                        "end": end,
                        "levels": {"close": float(cd.close[t])},
                    }
                )
        found.sort(key=lambda x: (x["end"], x["kind"]))
        return {"patterns": found, "count": len(found)}
