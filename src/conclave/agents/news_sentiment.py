"""news-sentiment: headlines about the base asset, scored by VADER, weighted by recency.

Method: each headline's polarity is VADER's compound score (Hutto & Gilbert 2014) with our
crypto lexicon (`conclave.news.sentiment`). For every bar, the headlines published at or
before its close and at most ``horizon_hours`` earlier count with weight
``0.5 ** (age / half_life_hours)`` (exponential time decay). A headline is about the asset
when it is tagged with it, or untagged and its title names it (``BTC``, ``Bitcoin``) or,
with ``include_general``, crypto in general.

Score: the weighted mean polarity. Confidence: ``100 * min(1, W / full_weight) * mean |p| *
(0.5 + 0.5 * consensus)`` with ``W`` the total weight, ``mean |p|`` the weighted mean absolute
polarity and consensus ``|sum w p| / sum w |p|``. Without a news source (``news`` None) or
without headlines in the horizon the agent has no input to speak from: score 0, confidence
0, status ``no_data`` and the reason says which. The column ``has_data`` (`HAS_DATA`) marks
the bars with at least one headline in the horizon, so the backtester leaves the others out
as the live decision does.
"""

from __future__ import annotations

import re
from typing import ClassVar

import numpy as np
from pydantic import Field

from conclave.agents.base import Agent
from conclave.agents.inputs import AgentInput, Needs
from conclave.agents.outputs import HAS_DATA, SeriesOutput, Status
from conclave.agents.params import AgentParams
from conclave.news.headline import Headline, base_asset
from conclave.news.sentiment import headline_polarity
from conclave.timeframes import iso_ms

HOUR_MS = 3_600_000
NAMES: dict[str, tuple[str, ...]] = {
    "BTC": ("bitcoin", "btc"),
    "ETH": ("ethereum", "ether", "eth"),
    "XRP": ("xrp", "ripple"),
    "LTC": ("litecoin", "ltc"),
    "ADA": ("cardano", "ada"),
    "DOGE": ("dogecoin", "doge"),
    "LINK": ("chainlink", "link"),
}
GENERAL = ("crypto", "cryptocurrency", "cryptocurrencies", "blockchain", "stablecoin", "defi")


class NewsSentimentParams(AgentParams):
    half_life_hours: float = Field(12.0, gt=0.0)
    horizon_hours: float = Field(72.0, gt=0.0)
    full_weight: float = Field(3.0, gt=0.0)
    include_general: bool = True


class NewsSentiment(Agent):
    """Recency-weighted headline sentiment (see module docstring)."""

    name: ClassVar[str] = "news-sentiment"
    version: ClassVar[str] = "1.0.0"
    description: ClassVar[str] = "VADER + crypto lexicon on recent headlines, time-decayed"
    needs: ClassVar[Needs] = Needs(min_bars=1, lookback=1, news=True)
    Params: ClassVar[type[AgentParams]] = NewsSentimentParams
    params: NewsSentimentParams

    def relevant(self, items: list[Headline] | tuple[Headline, ...], asset: str) -> list[Headline]:
        """The headlines about ``asset``, oldest first."""
        words = NAMES.get(asset, (asset.lower(),)) + (
            GENERAL if self.params.include_general else ()
        )
        pattern = re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE)
        keep = [
            h
            for h in items
            if ((asset in h.assets) if h.assets else pattern.search(h.title) is not None)
        ]
        return sorted(keep, key=lambda h: (h.published_ms, h.title))

    def compute(self, data: AgentInput) -> SeriesOutput:
        p = self.params
        n = len(data.candles)
        zeros = np.zeros(n)
        asset = base_asset(data.symbol)
        if data.news is None:
            reason = "no news source configured"
            none = {"asset": asset, "reason": reason}
            return SeriesOutput(zeros, zeros.copy(), none, "no_data", reason,
                                {HAS_DATA: zeros.copy()})  # fmt: skip
        items = self.relevant(list(data.news), asset)
        t_bar = data.candles.close_time
        pub = np.array([h.published_ms for h in items], dtype=np.int64)
        pol = np.array([headline_polarity(h.title) for h in items], dtype=np.float64)
        horizon = int(p.horizon_hours * HOUR_MS)
        lo = np.searchsorted(pub, t_bar - horizon, side="right")
        hi = np.searchsorted(pub, t_bar, side="right")
        count = hi - lo
        bar = np.repeat(np.arange(n), count)
        offs = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
        hl = np.repeat(lo, count) + offs
        ages = ((t_bar[bar] - pub[hl]) / (p.half_life_hours * HOUR_MS)).tolist()
        # Python's pow per pair: the same bits wherever the pair sits (no SIMD code paths)
        w = np.fromiter((0.5**a for a in ages), dtype=np.float64, count=len(ages))
        wsum = np.bincount(bar, weights=w, minlength=n)
        signed = np.bincount(bar, weights=w * pol[hl], minlength=n)
        absw = np.bincount(bar, weights=w * np.abs(pol[hl]), minlength=n)
        has = wsum > 0
        safe = np.where(has, wsum, 1.0)
        score = np.where(has, signed / safe, 0.0)
        consensus = np.where(absw > 0, np.abs(signed) / np.where(absw > 0, absw, 1.0), 0.0)
        conf = (
            100.0 * np.minimum(1.0, wsum / p.full_weight) * (absw / safe) * (0.5 + 0.5 * consensus)
        )
        conf = np.where(has, conf, 0.0)
        score, conf = np.clip(score, -1.0, 1.0), np.clip(conf, 0.0, 100.0)

        used = range(int(lo[-1]), int(hi[-1])) if n else range(0)
        evidence = {
            "asset": asset,
            "headlines": [
                {
                    "title": items[i].title,
                    "published": iso_ms(items[i].published_ms),
                    "polarity": float(pol[i]),
                    "weight": float(0.5 ** ((t_bar[-1] - pub[i]) / (p.half_life_hours * HOUR_MS))),
                    "url": items[i].url,
                }
                for i in used
            ],
            "count": len(used),
        }
        reason = "" if len(used) else f"no headlines about {asset} in the last {p.horizon_hours:g}h"
        if reason:
            evidence["reason"] = reason
        has_data = (count > 0).astype(np.float64)
        status: Status = "no_data" if reason else "ok"
        return SeriesOutput(score, conf, evidence, status, reason, {HAS_DATA: has_data})
