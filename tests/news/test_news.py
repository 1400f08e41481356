"""News: the file source, the crypto-lexicon scorer and the news-sentiment agent's as_of cut."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conclave.agents import REGISTRY
from conclave.errors import ConfigurationError
from conclave.news.headline import Headline, base_asset
from conclave.news.sentiment import CryptoSentiment, headline_polarity, load_lexicon
from conclave.news.sources import FileNewsSource, parse_time_ms
from tests.agents.helpers import candles_from_close, make_input

DAY = 86_400_000
NEWS_FILE = "news/btc_price_moving_news_2010-2022.csv"
NEGATIVE = (
    "North Korean Hackers Stole Nearly $400M in Bitcoin",
    "China Bans BTC Payments",
    "MtGox Goes Dark",
    "Terra Luna UST blockchain halted",
    "Hacker Steals Customer Data From Circle",
    "China Crackdown on BTC Trading and Mining",
)
POSITIVE = (
    "El Salvador adopts BTC as Legal Tender",
    "Tesla buys BTC",
    "Central African Republic to Adopt Bitcoin As Legal Tender",
    "Panama’s National Assembly Approves Bill for Bitcoin Use",
)


@pytest.fixture(scope="module")
def source(shared_data: Path) -> FileNewsSource:
    return FileNewsSource(shared_data / NEWS_FILE, assets=("BTC",))


@pytest.mark.shared_data
def test_file_source_reads_dated_headlines_at_midnight_utc(source: FileNewsSource) -> None:
    """The CSV's event date is taken as published at 00:00 UTC; only items up to as_of come back."""
    everything = source.headlines("BTC", 2**62)
    assert len(everything) >= 120
    pizza = everything[0]
    assert pizza.title == "Bitcoin Pizza Day"
    assert pizza.published_ms == parse_time_ms("2010-05-22")
    assert pizza.published_ms % DAY == 0
    cut = parse_time_ms("2021-05-19")
    upto = source.headlines("BTC", cut)
    assert upto
    assert all(h.published_ms <= cut for h in upto)
    assert upto[-1].title == "China Bans BTC Payments"
    assert source.headlines("ETH", 2**62) == []


@pytest.mark.shared_data
@pytest.mark.parametrize("title", NEGATIVE)
def test_unambiguous_negative_headlines(title: str, source: FileNewsSource) -> None:
    """Hacks, bans, collapses and halts in the real data set score negative."""
    assert title in {h.title for h in source.headlines("BTC", 2**62)}
    assert headline_polarity(title) < -0.2


@pytest.mark.shared_data
@pytest.mark.parametrize("title", POSITIVE)
def test_unambiguous_positive_headlines(title: str, source: FileNewsSource) -> None:
    """Adoption and approval in the real data set score positive."""
    assert title in {h.title for h in source.headlines("BTC", 2**62)}
    assert headline_polarity(title) > 0.2


def test_crypto_lexicon_phrases() -> None:
    """Our phrases count as single terms; plain VADER would miss them."""
    s = CryptoSentiment()
    assert s.compound("Bitcoin hits all-time high after ETF approval") > 0.5
    assert s.compound("Exchange delisting follows exploit and mass liquidation") < -0.5
    assert s.compound("Bitcoin price") == 0.0
    lex = load_lexicon()
    assert all(-4 <= v <= 4 for v in lex.values())
    assert "all-time high" in lex


def test_sources_parse_json_and_reject_missing_files(tmp_path: Path) -> None:
    """A JSON list of objects is read with ISO times; a missing file is a configuration error."""
    f = tmp_path / "n.json"
    f.write_text(json.dumps([
        {"published": "2024-01-10T12:00:00Z", "title": "SEC approves ETF", "assets": ["BTC"]},
        {"published_ms": 1_704_931_200_000, "headline": "Ether rallies", "assets": "ETH"},
    ]))  # fmt: skip
    src = FileNewsSource(f)
    assert [h.title for h in src.headlines("BTC", 2**62)] == ["SEC approves ETF"]
    assert [h.title for h in src.headlines(None, 2**62)][1] == "Ether rallies"
    with pytest.raises(ConfigurationError):
        FileNewsSource(tmp_path / "absent.csv").headlines("BTC", 0)


def test_base_asset() -> None:
    """Pair symbols map to their base asset."""
    assert [base_asset(s) for s in ("BTCUSDT", "ETHBTC", "XRPUSDT-PERP", "BTC/USD")] == [
        "BTC", "ETH", "XRP", "BTC"
    ]  # fmt: skip


def _agent_run(news: list[Headline] | None, n: int = 48):  # type: ignore[no-untyped-def]
    c = candles_from_close(np.full(n, 100.0))
    return REGISTRY["news-sentiment"]().run(make_input(c, news=news), now_iso="x"), c


def test_no_source_means_confidence_zero_and_why() -> None:
    """Without a news source the agent has no data: status no_data, confidence 0, and why."""
    res, _ = _agent_run(None)
    assert (res.score, res.confidence) == (0.0, 0.0)
    assert res.status == "no_data"
    assert "no news source" in res.reason


def test_as_of_cut_and_decay() -> None:
    """Only headlines published at or before the last close count; older ones weigh less."""
    c = candles_from_close(np.full(48, 100.0))
    end = int(c.close_time[-1])
    good = Headline(end - 2 * 3_600_000, "Bitcoin surges to an all-time high", assets=("BTC",))
    future = Headline(end + 1, "Bitcoin exchange hacked, funds stolen", assets=("BTC",))
    res, _ = _agent_run([good, future])
    assert res.score > 0.5
    assert res.payload["count"] == 1
    assert all(h["title"] != future.title for h in res.payload["headlines"])
    at_close = Headline(end, "Bitcoin exchange hacked, funds stolen", assets=("BTC",))
    both, _ = _agent_run([good, at_close])
    assert both.payload["count"] == 2
    assert both.score < res.score
    old = Headline(end - 60 * 3_600_000, "Bitcoin surges to an all-time high", assets=("BTC",))
    fresh_w = res.payload["headlines"][0]["weight"]
    old_res, _ = _agent_run([old])
    assert old_res.payload["headlines"][0]["weight"] < fresh_w
    assert old_res.confidence < res.confidence


@pytest.mark.shared_data
def test_agent_on_the_real_headlines(source: FileNewsSource) -> None:
    """On the day of North Korea's bitcoin theft, the real headlines give a negative view."""
    t0 = parse_time_ms("2022-01-13") + DAY - 24 * 3_600_000
    c = candles_from_close(np.full(24, 40_000.0), t0=t0)
    news = source.headlines("BTC", int(c.close_time[-1]))
    res = REGISTRY["news-sentiment"]().run(make_input(c, news=news), now_iso="x")
    assert res.payload["count"] >= 1
    assert res.score < 0


RSS = """<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0"><channel><title>Loopback Crypto Wire</title>
<item><title>Bitcoin ETF approval sends BTC to an all-time high</title>
<link>http://127.0.0.1/a</link><pubDate>Mon, 10 Jan 2022 14:00:00 GMT</pubDate></item>
<item><title>Exchange hack drains millions in bitcoin</title>
<link>http://127.0.0.1/b</link><pubDate>Wed, 12 Jan 2022 09:30:00 GMT</pubDate></item>
<item><title>No date on this one</title><link>http://127.0.0.1/c</link></item>
</channel></rss>
"""


def test_rss_feed_from_a_file_is_parsed_and_cut_at_as_of(tmp_path: Path) -> None:
    """An RSS file gives dated headlines; items after as_of or without a date never count."""
    from conclave.news.sources import RssNewsSource

    feed = tmp_path / "feed.xml"
    feed.write_text(RSS)
    src = RssNewsSource(str(feed), assets=("BTC",))
    jan_11 = 1_641_859_200_000  # 2022-01-11T00:00:00Z
    items = src.headlines("BTC", jan_11)
    assert [h.title for h in items] == ["Bitcoin ETF approval sends BTC to an all-time high"]
    assert items[0].published_ms == 1_641_823_200_000  # 2022-01-10T14:00:00Z
    assert items[0].source == "Loopback Crypto Wire"
    assert len(src.headlines("BTC", jan_11 + 2 * 86_400_000)) == 2


def test_rss_feed_that_is_not_a_feed_is_a_typed_error(tmp_path: Path) -> None:
    """A file that is not RSS or Atom raises NewsUnavailableError, not a parser exception."""
    from conclave.errors import NewsUnavailableError
    from conclave.news.sources import RssNewsSource

    junk = tmp_path / "feed.xml"
    junk.write_bytes(b"\x00\x01 not xml at all <<<")
    with pytest.raises(NewsUnavailableError):
        RssNewsSource(str(junk)).headlines("BTC", 1_700_000_000_000)
