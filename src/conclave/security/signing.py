"""Signed agent calls: the orchestrator signs each call, the agent refuses what it cannot verify.

The signature is HMAC-SHA256 under the shared agent secret (``CONCLAVE_AGENTS__SECRET``) of

    METHOD \\n PATH \\n TIMESTAMP_MS \\n NONCE \\n hex(SHA-256(body))

sent as three headers: ``X-Conclave-Timestamp`` (ms since the epoch), ``X-Conclave-Nonce``
(96 random bits, so two identical calls in the same millisecond still differ) and
``X-Conclave-Signature: v1=<hex>``. Hashing the body first keeps the MAC input small and
fixed in shape; the nonce and timestamp bind the signature to one moment.

`Verifier.verify` refuses (RELIABILITY E8) a call without the headers (``unsigned``), with
unparsable ones (``malformed``), stamped more than ``max_age_s`` (5 s) before or after its
clock (``expired`` / ``future``), whose MAC does not match the method, path, time and body
(``bad_signature``), or whose signature it has already accepted (``replayed``): accepted
signatures are remembered until they would have expired anyway, so an exact replay inside
the window fails too. The replay memory is per process: behind a load balancer a replay
sent to another replica inside the 5 s is caught only by the age check; that bounds it.
Comparisons are constant-time (`hmac.compare_digest`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from pydantic import SecretStr

from conclave.security.secret_rules import require_secret

AGENT_SECRET_SETTING = "CONCLAVE_AGENTS__SECRET"
HEADER_TIMESTAMP = "X-Conclave-Timestamp"
HEADER_NONCE = "X-Conclave-Nonce"
HEADER_SIGNATURE = "X-Conclave-Signature"
#: The same names as ASGI carries them (lower-case bytes), for pure ASGI routes.
RAW_TIMESTAMP = HEADER_TIMESTAMP.lower().encode()
RAW_NONCE = HEADER_NONCE.lower().encode()
RAW_SIGNATURE = HEADER_SIGNATURE.lower().encode()
_VERSION = "v1="
_MAX_NONCE = 64
_Text = str | bytes | None


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _canonical(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return f"{method.upper()}\n{path}\n{timestamp}\n{nonce}\n{digest}".encode()


class _Mac:
    """HMAC-SHA256 under one secret, keyed once: each MAC copies the keyed state (the
    key's two padded blocks are hashed once per process, not once per call)."""

    __slots__ = ("_keyed",)

    def __init__(self, secret: bytes) -> None:
        self._keyed = hmac.new(secret, digestmod=hashlib.sha256)

    def __call__(self, message: bytes) -> str:
        mac = self._keyed.copy()
        mac.update(message)
        return _VERSION + mac.hexdigest()


class Signer:
    """Signs outgoing agent calls; one per orchestrator process.

    Raises `ConfigurationError` naming ``CONCLAVE_AGENTS__SECRET`` for an unset, empty,
    placeholder or short secret. ``now_ms`` is the wall clock (tests pass a fake).
    """

    __slots__ = ("_mac", "_now_ms")

    def __init__(
        self, secret: SecretStr | str | None, *, now_ms: Callable[[], int] = _wall_ms
    ) -> None:
        self._mac = _Mac(require_secret(secret, AGENT_SECRET_SETTING))
        self._now_ms = now_ms

    def __repr__(self) -> str:
        return "Signer(secret=***)"

    def headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        """The three headers that sign ``method path`` with ``body`` now.

        Sign each send: a resent call needs fresh headers, or the agent refuses the resend
        as a replay when the first attempt did reach it.
        """
        timestamp = str(self._now_ms())
        nonce = secrets.token_hex(12)
        signature = self._mac(_canonical(method, path, timestamp, nonce, body))
        return {HEADER_TIMESTAMP: timestamp, HEADER_NONCE: nonce, HEADER_SIGNATURE: signature}


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of `Verifier.verify`: ``ok``, or the reason the call is refused (401)."""

    ok: bool
    reason: str

    @property
    def status(self) -> int:
        """200 for a verified call, 401 for any refusal."""
        return 200 if self.ok else 401


_OK = Verdict(True, "ok")


def _text(value: _Text) -> str | None:
    if value is None:
        return None
    return value.decode("latin-1") if isinstance(value, bytes) else value


class Verifier:
    """Verifies incoming agent calls; one per agent process (it holds the replay memory).

    ``secrets`` are every secret a call may be signed with: the current one first, and
    during a rotation of the agent secret the previous one too. ``max_age_s`` is the
    accepted clock difference either way (``CONCLAVE_AGENTS__SIGNATURE_MAX_AGE_S``, 5 s);
    at most ``replay_capacity`` signatures are remembered (oldest dropped first).
    """

    def __init__(
        self,
        secrets_: Sequence[SecretStr | str],
        *,
        max_age_s: float = 5.0,
        now_ms: Callable[[], int] = _wall_ms,
        replay_capacity: int = 100_000,
    ) -> None:
        if not secrets_:
            raise ValueError("at least one secret is required")
        if max_age_s <= 0:
            raise ValueError("max_age_s must be positive")
        self._macs = tuple(_Mac(require_secret(s, AGENT_SECRET_SETTING)) for s in secrets_)
        self._max_age_ms = round(max_age_s * 1000)
        self._now_ms = now_ms
        self._capacity = replay_capacity
        self._seen: OrderedDict[str, int] = OrderedDict()  # signature -> forget after (ms)

    def __repr__(self) -> str:
        return f"Verifier(secrets=***, max_age_ms={self._max_age_ms})"

    def verify(
        self,
        method: str,
        path: str,
        body: bytes,
        *,
        timestamp: _Text,
        nonce: _Text,
        signature: _Text,
    ) -> Verdict:
        """Check one call given its three signing header values (None when absent)."""
        ts_text, nonce_text, sig = _text(timestamp), _text(nonce), _text(signature)
        if ts_text is None or nonce_text is None or sig is None:
            return Verdict(False, "unsigned")
        if not ts_text.isdigit() or len(ts_text) > 15 or not 0 < len(nonce_text) <= _MAX_NONCE:
            return Verdict(False, "malformed")
        now, stamped = self._now_ms(), int(ts_text)
        if stamped < now - self._max_age_ms:
            return Verdict(False, "expired")
        if stamped > now + self._max_age_ms:
            return Verdict(False, "future")
        message = _canonical(method, path, ts_text, nonce_text, body)
        if not any(hmac.compare_digest(mac(message), sig) for mac in self._macs):
            return Verdict(False, "bad_signature")
        return self._first_use(sig, stamped + self._max_age_ms, now)

    def verify_asgi(
        self, method: str, path: str, body: bytes, headers: Iterable[tuple[bytes, bytes]]
    ) -> Verdict:
        """`verify` with the headers as an ASGI scope carries them (lower-case bytes)."""
        found: dict[bytes, bytes] = {}
        for key, value in headers:
            if key in (RAW_TIMESTAMP, RAW_NONCE, RAW_SIGNATURE):
                found[key] = value
        return self.verify(
            method,
            path,
            body,
            timestamp=found.get(RAW_TIMESTAMP),
            nonce=found.get(RAW_NONCE),
            signature=found.get(RAW_SIGNATURE),
        )

    def _first_use(self, signature: str, forget_after_ms: int, now: int) -> Verdict:
        seen = self._seen
        while seen:  # drop what has expired; entries arrive in roughly time order
            oldest_sig, oldest_until = next(iter(seen.items()))
            if oldest_until >= now and len(seen) < self._capacity:
                break
            del seen[oldest_sig]
        if signature in seen:
            return Verdict(False, "replayed")
        seen[signature] = forget_after_ms
        return _OK
