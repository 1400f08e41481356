"""API keys: how they are made, stored (a keyed hash only), scoped, and what each route needs.

A key reads ``ck_<id>_<secret>``: ``id`` is 16 hex characters (8 random bytes) and names the
stored row, so a lookup is by primary key and never by hash; ``secret`` is 32 random bytes
from `secrets` (43 URL-safe characters). The key is shown once, at creation; the store keeps
only HMAC-SHA256(key hashing secret, key). A keyed hash rather than a slow KDF because the
keys are random (no dictionary to slow down), and a stolen table is useless without the
server-side secret (``CONCLAVE_SECURITY__KEY_SECRET``). Comparison is constant-time
(`hmac.compare_digest`).

Scopes are ordered ``read < run < admin``: `required_scope` maps a request to the least
scope that may make it (None: open to all), and a key covers every scope up to its own.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

from conclave.errors import InvalidRequestError
from conclave.security.secret_rules import require_secret

if TYPE_CHECKING:  # an annotation only: `conclave --help` (which needs `Scope`) skips pydantic
    from pydantic import SecretStr

#: Every key starts with this, so a leaked one is recognisable (secret scanners, logs).
KEY_PREFIX = "ck_"
ID_BYTES = 8
SECRET_BYTES = 32
#: Longest text accepted as a key before any hashing (a key is 63 characters).
MAX_KEY_LENGTH = 128
KEY_SECRET_SETTING = "CONCLAVE_SECURITY__KEY_SECRET"
_KEY_PATTERN = re.compile(r"^ck_([0-9a-f]{16})_([A-Za-z0-9_-]{43,})$")
_MS_PER_DAY = 86_400_000

KeyState = Literal["active", "expired", "revoked"]


class Scope(StrEnum):
    """What a key may do; each scope includes the ones before it."""

    READ = "read"
    RUN = "run"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        """0 for read, 1 for run, 2 for admin."""
        return _RANK[self]

    def covers(self, needed: Scope) -> bool:
        """Whether a key of this scope may make a request that needs ``needed``."""
        return self.rank >= needed.rank


_RANK = {Scope.READ: 0, Scope.RUN: 1, Scope.ADMIN: 2}


class UnknownKeyError(InvalidRequestError):
    """No key has this id (the API answers 404, the CLI exits 2 naming ``ID``)."""

    reason = "unknown_key"

    def __init__(self, key_id: str) -> None:
        super().__init__(f"no API key with id {key_id!r}", field="id")


class KeyNotActiveError(InvalidRequestError):
    """The key is revoked or expired: it cannot be rotated (the API answers 409)."""

    reason = "key_not_active"

    def __init__(self, key_id: str, state: str) -> None:
        super().__init__(f"API key {key_id} is {state}; only an active key rotates", field="id")


@dataclass(frozen=True, slots=True)
class GeneratedKey:
    """A new key: ``key`` is the only copy of the secret and is shown once."""

    id: str
    key: str


def generate_key() -> GeneratedKey:
    """A fresh key: 8 random bytes of id and 32 random bytes of secret, from `secrets`."""
    key_id = secrets.token_hex(ID_BYTES)
    return GeneratedKey(key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(SECRET_BYTES)}")


def parse_key_id(presented: str) -> str | None:
    """The id inside a presented key, or None when it is not shaped like one of ours."""
    if len(presented) > MAX_KEY_LENGTH:
        return None
    found = _KEY_PATTERN.match(presented)
    return None if found is None else found.group(1)


class KeyHasher:
    """HMAC-SHA256 of keys under the server-side key hashing secret.

    Refuses (`ConfigurationError` naming ``CONCLAVE_SECURITY__KEY_SECRET``) a secret that
    is unset, empty, a placeholder or shorter than 32 characters.
    """

    __slots__ = ("_secret",)

    def __init__(self, secret: SecretStr | str | None) -> None:
        self._secret = require_secret(secret, KEY_SECRET_SETTING)

    def __repr__(self) -> str:
        return "KeyHasher(secret=***)"

    def hash(self, key: str) -> str:
        """The stored form of ``key``: 64 lower-case hex characters."""
        return hmac.new(self._secret, key.encode("utf-8"), hashlib.sha256).hexdigest()

    def matches(self, key: str, stored_hash: str) -> bool:
        """Whether ``key`` hashes to ``stored_hash`` (constant-time comparison)."""
        return hmac.compare_digest(self.hash(key), stored_hash)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One stored key: never the key itself. Times are ms since the epoch (UTC)."""

    id: str
    name: str
    scope: Scope
    key_hash: str
    created_ms: int
    expires_ms: int | None = None
    revoked_ms: int | None = None
    #: the id of the key this one replaced (`rotate`), if any
    rotated_from: str | None = None

    def state(self, now_ms: int) -> KeyState:
        """``revoked`` once revoked, ``expired`` from its expiry on, else ``active``."""
        if self.revoked_ms is not None and now_ms >= self.revoked_ms:
            return "revoked"
        if self.expires_ms is not None and now_ms >= self.expires_ms:
            return "expired"
        return "active"

    def public(self, now_ms: int) -> dict[str, object]:
        """What may be shown of the key (``keys list``, the API): never its hash."""
        return {
            "id": self.id,
            "name": self.name,
            "scope": str(self.scope),
            "state": self.state(now_ms),
            "createdMs": self.created_ms,
            "expiresMs": self.expires_ms,
            "revokedMs": self.revoked_ms,
            "rotatedFrom": self.rotated_from,
        }


def new_key(
    name: str,
    scope: Scope,
    hasher: KeyHasher,
    *,
    now_ms: int,
    expires_days: float | None = None,
    rotated_from: str | None = None,
) -> tuple[GeneratedKey, KeyRecord]:
    """A generated key and the record to store for it (expiring ``expires_days`` from now)."""
    if expires_days is not None and not expires_days > 0:
        raise ValueError("expires_days must be positive")
    generated = generate_key()
    expires = None if expires_days is None else now_ms + round(expires_days * _MS_PER_DAY)
    record = KeyRecord(
        id=generated.id,
        name=name,
        scope=scope,
        key_hash=hasher.hash(generated.key),
        created_ms=now_ms,
        expires_ms=expires,
        rotated_from=rotated_from,
    )
    return generated, record


def rotation(
    old: KeyRecord, hasher: KeyHasher, *, now_ms: int, overlap_s: float
) -> tuple[GeneratedKey, KeyRecord, int]:
    """Replace ``old``: the new key and its record, and the old key's new expiry (ms).

    The new key keeps the old one's name, scope and lifetime length (no expiry if the old
    had none); the old key keeps working for ``overlap_s`` seconds (never longer than it
    would have anyway), so clients can switch without an outage.
    """
    if overlap_s < 0:
        raise ValueError("overlap_s must be at least 0")
    if old.state(now_ms) != "active":
        raise KeyNotActiveError(old.id, old.state(now_ms))
    lifetime_days = None
    if old.expires_ms is not None:
        lifetime_days = max(old.expires_ms - old.created_ms, 1) / _MS_PER_DAY
    generated, record = new_key(old.name, old.scope, hasher, now_ms=now_ms,
                                expires_days=lifetime_days, rotated_from=old.id)  # fmt: skip
    old_expiry = now_ms + round(overlap_s * 1000)
    if old.expires_ms is not None:
        old_expiry = min(old_expiry, old.expires_ms)
    return generated, record, old_expiry


# -- which scope each route needs ----------------------------------------------------------

_ALWAYS_OPEN = frozenset({"/health/live", "/health/ready"})
_READ_METHODS = frozenset({"GET", "HEAD"})


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def required_scope(
    method: str, path: str, *, open_health: bool = False, open_metrics: bool = False
) -> Scope | None:
    """The least scope a request needs, or None when it is open to anyone.

    Open: ``/health/live`` and ``/health/ready``, CORS preflights (``OPTIONS``: they carry
    no credentials by design), and ``/health`` and ``/metrics`` when opened by a setting.
    ``/keys`` needs admin for any method. Writes to ``/accounts``, ``/scheduler/jobs``
    need admin; ``POST /pipeline/run`` needs run; other reads need read. Any other write
    needs admin: a route added later is closed until someone decides otherwise. Paths are
    compared exactly (after one trailing slash is dropped), so no suffix opens a route, and
    a path with ``.`` or ``..`` segments needs admin.
    """
    method = method.upper()
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    if method == "OPTIONS" or path in _ALWAYS_OPEN:
        return None
    if "/./" in path + "/" or "/../" in path + "/":
        return Scope.ADMIN  # dot segments: a proxy might resolve them to any route
    if (path == "/health" and open_health) or (path == "/metrics" and open_metrics):
        return None if method in _READ_METHODS else Scope.ADMIN
    if _under(path, "/keys"):
        return Scope.ADMIN
    if method in _READ_METHODS:
        return Scope.READ
    if method == "POST" and path == "/pipeline/run":
        return Scope.RUN
    return Scope.ADMIN


def extract_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key a request presents: ``Authorization: Bearer KEY``, else ``X-API-Key: KEY``."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    return None
