"""Headline sentiment: VADER with our crypto lexicon (``crypto_lexicon.tsv``).

VADER (Hutto & Gilbert 2014, "VADER: A Parsimonious Rule-based Model for Sentiment Analysis
of Social Media Text", ICWSM) scores a text's compound polarity in [-1, 1] from a lexicon of
word valences plus rules (negation, boosters, capitals, "but"). Its lexicon is general
purpose; ours adds market words (rally, surge, hack, exploit, ban, liquidation, delisting)
and phrases (all-time high, ETF approval), matched case-insensitively with spaces or hyphens
and scored as one token. The lexicon is read once from the package, on first use.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

LEXICON_FILE = "crypto_lexicon.tsv"


def _token(term: str) -> str:
    return "zz" + re.sub(r"[^a-z0-9]", "", term.lower())


def load_lexicon() -> dict[str, float]:
    """Our terms and valences (-4..4) from the packaged TSV, comments skipped."""
    text = resources.files("conclave.news").joinpath(LEXICON_FILE).read_text(encoding="utf-8")
    out: dict[str, float] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        term, _, value = line.partition("\t")
        weight = float(value)
        if not -4.0 <= weight <= 4.0:
            raise ValueError(f"{LEXICON_FILE}:{lineno}: valence {weight} outside [-4, 4]")
        out[term.strip().lower()] = weight
    return out


class CryptoSentiment:
    """VADER compound polarity with the crypto lexicon applied; pure after construction."""

    def __init__(self, lexicon: dict[str, float] | None = None) -> None:
        terms = load_lexicon() if lexicon is None else lexicon
        self._vader = SentimentIntensityAnalyzer()
        phrases = {t: w for t, w in terms.items() if not re.fullmatch(r"[a-z0-9]+", t)}
        words = {t: w for t, w in terms.items() if t not in phrases}
        self._vader.lexicon.update(words)
        self._vader.lexicon.update({_token(t): w for t, w in phrases.items()})
        self._phrases: list[tuple[re.Pattern[str], str]] = []
        for term in sorted(phrases, key=len, reverse=True):
            parts = [re.escape(p) for p in re.split(r"[\s-]+", term) if p]
            pattern = re.compile(r"\b" + r"[\s-]+".join(parts) + r"\b", re.IGNORECASE)
            self._phrases.append((pattern, _token(term)))

    def prepare(self, text: str) -> str:
        """The text with our phrases replaced by their single lexicon tokens."""
        for pattern, token in self._phrases:
            text = pattern.sub(token, text)
        return text

    def compound(self, text: str) -> float:
        """VADER compound polarity of ``text`` in [-1, 1] (0: neutral or unknown words)."""
        return float(self._vader.polarity_scores(self.prepare(text))["compound"])


@lru_cache(maxsize=1)
def default_scorer() -> CryptoSentiment:
    """The shared scorer with the packaged lexicon (built once)."""
    return CryptoSentiment()


@lru_cache(maxsize=65536)
def headline_polarity(title: str) -> float:
    """Cached compound polarity of one headline with the default scorer."""
    return default_scorer().compound(title)
