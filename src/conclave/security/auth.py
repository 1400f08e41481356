"""Deciding a request: which key it presents, whether that key is live, whether its scope suffices.

`KeyAuthenticator.authenticate` answers 200 (go on, with the key's record), 401 (no key, or
a malformed, unknown, revoked or expired one: RELIABILITY E5) or 403 (a live key whose scope
is too low: E6). It reads keys through a `KeyLookup` (the store's `KeyRepo` is one) wrapped
in `CachedKeyLookup`, a per-process cache whose entries live at most ``ttl_s`` seconds
(at most 60): a key revoked in the database stops working on every replica within that
time, without a shared cache or a message bus. Expiry is checked against the clock on every
request, so an expired key fails at once even while cached.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from conclave.security.keys import (
    KeyHasher,
    KeyRecord,
    Scope,
    extract_key,
    parse_key_id,
    required_scope,
)

#: The longest a cached key may be trusted: revocation is effective within this (issue 12).
MAX_CACHE_TTL_S = 60.0


class KeyLookup(Protocol):
    """Where key records come from (the store's `KeyRepo`, a cache in front of it, a fake)."""

    async def find_key(self, key_id: str) -> KeyRecord | None:
        """The record of ``key_id``, or None when no such key exists."""
        ...


class CachedKeyLookup:
    """A `KeyLookup` that remembers each answer (found or not) for ``ttl_s`` seconds.

    Unknown ids are cached too, so a flood of made-up keys costs one query per id per TTL;
    at most ``max_entries`` ids are kept (least recently stored dropped first).
    ``clock`` is monotonic seconds (tests pass a fake).
    """

    def __init__(
        self,
        inner: KeyLookup,
        *,
        ttl_s: float = 30.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < ttl_s <= MAX_CACHE_TTL_S:
            raise ValueError(f"ttl_s must be in (0, {MAX_CACHE_TTL_S:g}] seconds")
        self._inner = inner
        self.ttl_s = ttl_s
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, KeyRecord | None]] = OrderedDict()

    async def find_key(self, key_id: str) -> KeyRecord | None:
        """The cached record while fresh, else the inner lookup's (then cached)."""
        now = self._clock()
        hit = self._entries.get(key_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        record = await self._inner.find_key(key_id)
        self._entries[key_id] = (now + self.ttl_s, record)
        self._entries.move_to_end(key_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return record

    def invalidate(self, key_id: str | None = None) -> None:
        """Forget ``key_id`` (or everything): this process sees a change at once."""
        if key_id is None:
            self._entries.clear()
        else:
            self._entries.pop(key_id, None)


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The verdict on one request: ``status`` 200, 401 or 403 and why (a stable code).

    ``key`` is the presented key's record when one was found (for the rate limiter's
    identity and for logs: log ``key.id``, never the key). ``reason`` is one of ``open``,
    ``ok``, ``missing_key``, ``malformed_key``, ``unknown_key``, ``bad_key``, ``revoked``,
    ``expired``, ``scope``.
    """

    status: Literal[200, 401, 403]
    reason: str
    key: KeyRecord | None = None
    needed: Scope | None = None

    @property
    def allowed(self) -> bool:
        """Whether the request may go on."""
        return self.status == 200

    def message(self) -> str:
        """One line for the JSON error body; names no key."""
        return _MESSAGES.get(self.reason, self.reason)


_MESSAGES = {
    "missing_key": "an API key is required (Authorization: Bearer KEY or X-API-Key: KEY)",
    "malformed_key": "the API key is not valid",
    "unknown_key": "the API key is not valid",
    "bad_key": "the API key is not valid",
    "revoked": "the API key has been revoked",
    "expired": "the API key has expired",
    "scope": "the API key's scope does not allow this request",
}


class KeyAuthenticator:
    """Decide requests against stored keys; one per process, shared by every request.

    ``now_ms`` is the wall clock in ms since the epoch (expiry, revocation); tests pass a
    fake. ``open_health`` and ``open_metrics`` are the settings of the same names.
    """

    def __init__(
        self,
        lookup: KeyLookup,
        hasher: KeyHasher,
        *,
        now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        open_health: bool = False,
        open_metrics: bool = False,
    ) -> None:
        self._lookup = lookup
        self._hasher = hasher
        self._now_ms = now_ms
        self._open_health = open_health
        self._open_metrics = open_metrics

    def needed(self, method: str, path: str) -> Scope | None:
        """The scope ``method path`` needs (None: open), by `required_scope`."""
        return required_scope(method, path, open_health=self._open_health,
                              open_metrics=self._open_metrics)  # fmt: skip

    async def authenticate(
        self, method: str, path: str, authorization: str | None, x_api_key: str | None
    ) -> AuthResult:
        """The verdict on a request with these two header values (None when absent)."""
        needed = self.needed(method, path)
        if needed is None:
            return AuthResult(200, "open")
        presented = extract_key(authorization, x_api_key)
        if presented is None:
            return AuthResult(401, "missing_key", needed=needed)
        key_id = parse_key_id(presented)
        if key_id is None:
            return AuthResult(401, "malformed_key", needed=needed)
        record = await self._lookup.find_key(key_id)
        if record is None:
            return AuthResult(401, "unknown_key", needed=needed)
        if not self._hasher.matches(presented, record.key_hash):
            return AuthResult(401, "bad_key", needed=needed)
        state = record.state(self._now_ms())
        if state != "active":
            return AuthResult(401, state, key=record, needed=needed)
        if not record.scope.covers(needed):
            return AuthResult(403, "scope", key=record, needed=needed)
        return AuthResult(200, "ok", key=record, needed=needed)
