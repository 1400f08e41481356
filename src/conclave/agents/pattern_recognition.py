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
import talib
from pydantic import Field

from conclave.agents import chart_last as cl
from conclave.agents import chart_patterns as cp
from conclave.agents import indicators as ind
from conclave.agents.base import (
    F64,
    Agent,
    AgentInput,
    AgentParams,
    Needs,
    SeriesOutput,
    iso_ms,
)
from conclave.agents.scoring import finish, finish1, fnum
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


class PatternRecognition(Agent):
    """Confirmed candlestick and chart patterns (see module docstring)."""

    name: ClassVar[str] = "pattern-recognition"
    version: ClassVar[str] = "1.0.0"
    description: ClassVar[str] = "TA-Lib candlestick patterns and swing-point chart patterns"
    needs: ClassVar[Needs] = Needs(min_bars=163, lookback=163)
    Params: ClassVar[type[AgentParams]] = PatternRecognitionParams
    params: PatternRecognitionParams

    def min_bars(self, timeframe: str) -> int:
        p = self.params
        return max(p.window + p.swing_k, p.breakout_bars + 1) + p.horizon + 10

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
        # chart patterns of the last ``horizon`` bars only (`chart_last.detect_last`),
        # then the same rows, sums and decayed window as `compute` on those bars
        p = self.params
        cd = data.candles
        n = len(cd)
        first = n - p.horizon
        settings = cp.Settings(
            p.swing_k, p.window, p.tolerance, p.min_height, p.head_margin, p.breakout_bars
        )
        events = cl.detect_last(cd.high, cd.low, cd.close, settings, first)
        nk = len(cl.KINDS)
        sig = np.zeros((nk + (len(CANDLES) if p.candlesticks else 0), p.horizon))
        for e in events:
            sig[e.row, e.t - first] = e.direction * p.chart_weight
        raw_tail = np.zeros((0, p.horizon))
        if p.candlesticks:
            raw_tail = self._candles(cd)[:, first:]
            sig[nk:] = raw_tail * p.candle_weight
        both = np.stack([sig.sum(axis=0), np.abs(sig).sum(axis=0)])
        dec = ind.exp_window_sum(both, p.decay, p.horizon)
        s_dec, w_dec = float(dec[0, -1]), float(dec[1, -1])
        agree = abs(s_dec) / w_dec if w_dec > 0 else 0.0
        score, conf = finish1(s_dec, 100.0 * min(1.0, w_dec) * agree)
        return SeriesOutput(score, conf, self._evidence(cd, first, sig, events, raw_tail))

    def _candles(self, cd: Candles) -> F64:
        """TA-Lib's candlestick signs (rows in `CANDLES` order) over all of ``cd``."""
        return np.asarray(self._candle_signs(cd), dtype=np.float64)

    def _candle_signs(self, cd: Candles) -> npt.NDArray[np.int32]:
        """`_candles` as TA-Lib's integers: -1, 0 or +1 per row and bar."""
        out = np.empty((len(CANDLES), len(cd)), dtype=np.int32)
        for i, raw in enumerate(self._candle_raw(cd)):
            np.sign(raw, out=out[i])
        return out

    def _candle_raw(self, cd: Candles) -> list[npt.NDArray[np.int32]]:
        """TA-Lib's candlestick outputs as they come (+-100 and such), in `CANDLES` order."""
        fh = [
            np.ascontiguousarray(x, dtype=np.float64) for x in (cd.open, cd.high, cd.low, cd.close)
        ]
        return [np.asarray(getattr(talib, fn)(*fh), dtype=np.int32) for fn in CANDLES]

    def _evidence(
        self, cd: Candles, first: int, sig: F64, events: list[cl.Event], raw: F64
    ) -> dict[str, Any]:
        """Every signal of the bars from ``first`` (``sig``'s columns), by end time and kind."""
        at = {(e.row, e.t): e for e in events}
        labels = list(CANDLES.values())
        nk = len(cl.KINDS)
        found: list[dict[str, Any]] = []
        rows_at, bars_at = np.nonzero(sig)
        for r, j in zip(rows_at.tolist(), bars_at.tolist(), strict=True):
            t = j + first
            if r < nk:
                e = at[(r, t)]
                found.append(
                    {
                        "kind": cl.KINDS[r],
                        "type": "chart",
                        "direction": "bullish" if e.direction > 0 else "bearish",
                        "start": iso_ms(int(cd.open_time[e.start])),
                        "end": iso_ms(int(cd.open_time[t])),
                        "levels": {k: fnum(v) for k, v in e.levels.items()},
                    }
                )
            else:
                found.append(
                    {
                        "kind": labels[r - nk],
                        "type": "candlestick",
                        "direction": "bullish" if raw[r - nk, j] > 0 else "bearish",
                        "start": iso_ms(int(cd.open_time[t])),
                        "end": iso_ms(int(cd.open_time[t])),
                        "levels": {"close": float(cd.close[t])},
                    }
                )
        found.sort(key=lambda x: (x["end"], x["kind"]))
        return {"patterns": found, "count": len(found)}
