"""News sources: headlines published at or before ``as_of``, from a file or an RSS feed.

A source does the I/O; agents only receive the `Headline` values it returns. Files are JSON
(a list of objects) or CSV with a header; columns are matched by name: the time from
``published_ms``, ``published``, ``timestamp``, ``datetime`` or ``date`` (a bare date is
the event date, taken as published at 00:00 UTC that day), the title from ``title`` or
``headline``, plus optional ``url``, ``source`` and ``assets`` (``BTC;ETH``). RSS and Atom
feeds are fetched with httpx2 (or read from a file) and parsed with ``feedparser``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from conclave.errors import ConfigurationError, InvalidRequestError, NewsUnavailableError
from conclave.news.headline import Headline

_TIME_KEYS = ("published_ms", "published", "timestamp", "datetime", "date")
_TITLE_KEYS = ("title", "headline")


class NewsSource(Protocol):
    """Headlines about ``asset`` (None: all) published at or before ``as_of_ms``, oldest first."""

    def headlines(self, asset: str | None, as_of_ms: int) -> list[Headline]: ...


def parse_time_ms(value: Any) -> int:
    """Epoch ms from ms/seconds numbers or ISO text; a bare date is 00:00 UTC that day."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        v = int(value)
        return v if v > 10**11 else v * 1000
    text = str(value).strip()
    if text.isdigit():
        return parse_time_ms(int(text))
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"not a time: {text!r}") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _first(row: Mapping[str, Any], keys: Iterable[str]) -> Any:
    for k in keys:
        if k in row and row[k] not in (None, ""):
            return row[k]
    return None


def headline_from_row(row: Mapping[str, Any], default_assets: tuple[str, ...]) -> Headline:
    """One `Headline` from a record with the column names in the module docstring."""
    lowered = {str(k).strip().lower(): v for k, v in row.items()}
    when, title = _first(lowered, _TIME_KEYS), _first(lowered, _TITLE_KEYS)
    if when is None or title is None:
        raise ValueError(f"record without a time or a title: {dict(row)!r}"[:200])
    raw_assets = lowered.get("assets")
    if isinstance(raw_assets, str) and raw_assets.strip():
        assets = tuple(a.strip().upper() for a in raw_assets.replace(",", ";").split(";"))
    elif isinstance(raw_assets, list):
        assets = tuple(str(a).upper() for a in raw_assets)
    else:
        assets = default_assets
    return Headline(
        published_ms=parse_time_ms(when),
        title=str(title).strip(),
        source=str(lowered.get("source") or ""),
        url=str(lowered.get("url") or ""),
        assets=assets,
    )


def filter_headlines(items: Iterable[Headline], asset: str | None, as_of_ms: int) -> list[Headline]:
    """Headlines at or before ``as_of_ms`` about ``asset`` (or untagged), oldest first."""
    want = None if asset is None else asset.upper()
    keep = [
        h
        for h in items
        if h.published_ms <= as_of_ms and (want is None or not h.assets or want in h.assets)
    ]
    return sorted(keep, key=lambda h: (h.published_ms, h.title))


class FileNewsSource:
    """Headlines from a JSON or CSV file, parsed once; ``assets`` tags untagged rows."""

    def __init__(self, path: Path | str, *, assets: tuple[str, ...] = ()) -> None:
        self.path = Path(path)
        self.assets = tuple(a.upper() for a in assets)
        self._items: list[Headline] | None = None

    def _load(self) -> list[Headline]:
        try:
            text = self.path.read_text(encoding="utf-8-sig")
        except FileNotFoundError as exc:
            raise ConfigurationError(
                f"news file not found: {self.path}", reason="file_not_found"
            ) from exc
        try:
            if self.path.suffix.lower() == ".json":
                data = json.loads(text)
                rows = data.get("headlines", data) if isinstance(data, dict) else data
            else:
                rows = list(csv.DictReader(io.StringIO(text)))
            return [headline_from_row(r, self.assets) for r in rows]
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigurationError(f"news file {self.path} is not usable: {exc}") from exc

    def headlines(self, asset: str | None, as_of_ms: int) -> list[Headline]:
        if self._items is None:
            self._items = self._load()
        return filter_headlines(self._items, asset, as_of_ms)


class RssNewsSource:
    """Headlines from an RSS or Atom feed at an ``http(s)://`` URL or in a local file."""

    def __init__(self, url: str, *, assets: tuple[str, ...] = (), timeout_s: float = 5.0) -> None:
        self.url = url
        self.assets = tuple(a.upper() for a in assets)
        self.timeout_s = timeout_s

    def _fetch(self) -> bytes:
        if self.url.startswith(("http://", "https://")):
            import httpx2  # only a feed over HTTP needs it: not imported by every run

            try:
                response = httpx2.get(self.url, timeout=self.timeout_s, follow_redirects=True)
                response.raise_for_status()
            except httpx2.HTTPError as exc:
                raise NewsUnavailableError(f"news feed {self.url} failed: {exc}") from exc
            return response.content
        path = Path(self.url.removeprefix("file://"))
        if not path.is_file():
            raise ConfigurationError(f"news feed file not found: {path}")
        return path.read_bytes()

    def headlines(self, asset: str | None, as_of_ms: int) -> list[Headline]:
        """Headlines about ``asset`` published at or before ``as_of_ms``."""
        import feedparser

        feed = feedparser.parse(self._fetch())
        if feed.bozo and not feed.entries:
            raise NewsUnavailableError(f"news feed {self.url} is not RSS or Atom")
        items: list[Headline] = []
        for entry in feed.entries:
            when = entry.get("published_parsed") or entry.get("updated_parsed")
            if when is None or not entry.get("title"):
                continue
            y, mo, d, hh, mi, ss = (int(x) for x in when[:6])
            ms = int(datetime(y, mo, d, hh, mi, ss, tzinfo=UTC).timestamp() * 1000)
            src = str(feed.feed.get("title", ""))
            items.append(
                Headline(ms, str(entry.title), src, str(entry.get("link", "")), self.assets)
            )
        return filter_headlines(items, asset, as_of_ms)


def open_news_source(spec: str) -> NewsSource:
    """Open ``file:PATH`` (JSON or CSV) or ``rss:URL`` (a feed URL or file)."""
    kind, _, target = spec.partition(":")
    if kind == "file" and target:
        return FileNewsSource(target)
    if kind == "rss" and target:
        return RssNewsSource(target)
    raise InvalidRequestError(
        f"invalid news source {spec!r}: expected file:PATH or rss:URL", field="news"
    )
