"""A news headline, and the asset a trading pair's headlines are about.

Sources (`conclave.news.sources`) return `Headline` values filtered by asset; the asset of a
pair symbol is its base asset (`base_asset`: ``BTCUSDT`` -> ``BTC``), the name headlines
are tagged with.
"""

from __future__ import annotations

from dataclasses import dataclass

_QUOTES = ("USDT", "BUSD", "USDC", "FDUSD", "TUSD", "USD", "EUR", "GBP", "BTC", "ETH", "BNB")


@dataclass(frozen=True, slots=True)
class Headline:
    """One news headline; ``published_ms`` is when it became public (ms UTC).

    ``assets`` lists the base assets it is about (``("BTC",)``); empty means the agent
    decides from the title.
    """

    published_ms: int
    title: str
    source: str = ""
    url: str = ""
    assets: tuple[str, ...] = ()


def base_asset(symbol: str) -> str:
    """The base asset of a pair symbol: ``BTCUSDT`` -> ``BTC`` (``-PERP`` suffixes dropped)."""
    s = symbol.upper().split("-")[0].replace("/", "").replace("_", "")
    for q in _QUOTES:
        if s.endswith(q) and len(s) > len(q):
            return s[: -len(q)]
    return s
