"""API keys: random, hash-only at rest, scoped, revocable, expiring, rotatable, cached <= 60 s."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest
from sqlalchemy import select

from conclave.errors import ConfigurationError
from conclave.security.auth import CachedKeyLookup, KeyAuthenticator
from conclave.security.keys import (
    KeyHasher,
    KeyNotActiveError,
    KeyRecord,
    Scope,
    UnknownKeyError,
    extract_key,
    generate_key,
    new_key,
    parse_key_id,
    required_scope,
    rotation,
)
from conclave.store import RunStore
from conclave.store.keys_repo import KeyRepo
from conclave.store.models import api_keys
from tests.security.conftest import SECRET

T0 = 1_700_000_000_000
DAY = 86_400_000


class Clock:
    """A settable clock: ``ms`` for the wall clock, ``s`` (monotonic) for the cache."""

    def __init__(self, ms: int = T0) -> None:
        self.ms = ms

    def now_ms(self) -> int:
        return self.ms

    def mono(self) -> float:
        return self.ms / 1000.0


class DictLookup:
    """A `KeyLookup` over a dict, counting its queries."""

    def __init__(self) -> None:
        self.records: dict[str, KeyRecord] = {}
        self.queries = 0

    async def find_key(self, key_id: str) -> KeyRecord | None:
        self.queries += 1
        return self.records.get(key_id)


@pytest.fixture
def hasher() -> KeyHasher:
    return KeyHasher(SECRET)


# -- generation and hashing ----------------------------------------------------------------


def test_keys_are_prefixed_unique_and_carry_32_random_bytes() -> None:
    """Every key is ck_<16 hex>_<43 url-safe chars = 32 bytes>; 2000 keys never repeat."""
    made = [generate_key() for _ in range(2000)]
    assert len({g.key for g in made}) == len({g.id for g in made}) == 2000
    for g in made[:50]:
        assert g.key.startswith(f"ck_{g.id}_")
        secret = g.key[len(f"ck_{g.id}_") :]
        assert len(base64.urlsafe_b64decode(secret + "=")) == 32
        assert parse_key_id(g.key) == g.id
    # the secret halves look uniform: every url-safe symbol appears across the sample
    symbols = set("".join(g.key[20:] for g in made))
    assert len(symbols) == 64


@pytest.mark.parametrize(
    "text",
    ["", "ck_", "ck_0123456789abcdef_short", "xx_0123456789abcdef_" + "a" * 43,
     "ck_0123456789ABCDEF_" + "a" * 43, "ck_0123456789abcdef_" + "a" * 200,
     "ck_0123456789abcdef_" + "a" * 42 + "!"],
)  # fmt: skip
def test_text_not_shaped_like_a_key_has_no_id(text: str) -> None:
    """Malformed, wrongly prefixed, upper-case ids and over-long input are not keys."""
    assert parse_key_id(text) is None


@pytest.mark.parametrize("secret", [None, "", "   ", "changeme", "secret", "x" * 64, "a" * 31,
                                    "short-but-random-Qw3"])  # fmt: skip
def test_the_hashing_secret_must_be_set_long_and_not_a_placeholder(secret: str | None) -> None:
    """An unset, empty, placeholder, one-symbol or short secret is refused, naming the setting."""
    with pytest.raises(ConfigurationError, match="CONCLAVE_SECURITY__KEY_SECRET") as info:
        KeyHasher(secret)
    if secret and len(secret) > 8:  # the message never repeats the value
        assert secret not in str(info.value)


def test_the_stored_hash_is_hmac_sha256_under_the_secret(hasher: KeyHasher) -> None:
    """hash = HMAC-SHA256(secret, key), hex; another secret gives another hash."""
    key = generate_key().key
    want = hmac.new(SECRET.encode(), key.encode(), hashlib.sha256).hexdigest()
    assert hasher.hash(key) == want
    assert hasher.matches(key, want)
    assert not hasher.matches(key + "x", want)
    assert KeyHasher(SECRET + "2").hash(key) != want
    assert SECRET not in repr(hasher)


# -- scopes and routes ---------------------------------------------------------------------


def test_scopes_are_ordered_read_run_admin() -> None:
    """Each scope covers itself and those below it, nothing above."""
    assert Scope.ADMIN.covers(Scope.RUN)
    assert Scope.ADMIN.covers(Scope.READ)
    assert Scope.RUN.covers(Scope.READ)
    assert not Scope.RUN.covers(Scope.ADMIN)
    assert not Scope.READ.covers(Scope.RUN)


@pytest.mark.parametrize(
    ("method", "path", "needed"),
    [
        ("GET", "/health/live", None), ("GET", "/health/ready", None),
        ("OPTIONS", "/pipeline/run", None), ("GET", "/health", Scope.READ),
        ("GET", "/metrics", Scope.READ), ("GET", "/pipeline/runs", Scope.READ),
        ("GET", "/pipeline/runs/abc", Scope.READ), ("HEAD", "/agents", Scope.READ),
        ("GET", "/accounts", Scope.READ), ("GET", "/docs", Scope.READ),
        ("POST", "/pipeline/run", Scope.RUN), ("POST", "/pipeline/run/", Scope.RUN),
        ("POST", "/accounts", Scope.ADMIN), ("POST", "/accounts/a1/pause", Scope.ADMIN),
        ("POST", "/scheduler/jobs", Scope.ADMIN), ("DELETE", "/scheduler/jobs/j1", Scope.ADMIN),
        ("GET", "/keys", Scope.ADMIN), ("POST", "/keys/k1/revoke", Scope.ADMIN),
        ("POST", "/something-new", Scope.ADMIN), ("GET", "/health/live/../keys", Scope.ADMIN),
        ("GET", "/health/livex", Scope.READ), ("POST", "/health/live", None),
    ],
)  # fmt: skip
def test_each_route_needs_the_scope_the_issue_gives_it(
    method: str, path: str, needed: Scope | None
) -> None:
    """GETs need read, POST /pipeline/run run, account/job/key writes and unknown writes admin."""
    assert required_scope(method, path) == needed


def test_health_and_metrics_open_only_by_their_settings() -> None:
    """open_health / open_metrics let GETs through without a key; writes stay closed."""
    assert required_scope("GET", "/health", open_health=True) is None
    assert required_scope("GET", "/metrics", open_health=True) == Scope.READ
    assert required_scope("GET", "/metrics", open_metrics=True) is None
    assert required_scope("POST", "/metrics", open_metrics=True) == Scope.ADMIN


@pytest.mark.parametrize(
    ("authorization", "x_api_key", "found"),
    [("Bearer abc", None, "abc"), ("bearer  abc ", None, "abc"), (None, "abc", "abc"),
     ("Basic abc", "xyz", "xyz"), ("Bearer ", None, None), (None, "  ", None),
     ("Bearer abc", "xyz", "abc")],
)  # fmt: skip
def test_a_key_comes_from_bearer_or_x_api_key(
    authorization: str | None, x_api_key: str | None, found: str | None
) -> None:
    """Authorization: Bearer wins; X-API-Key otherwise; other schemes are ignored."""
    assert extract_key(authorization, x_api_key) == found


# -- the authenticator: 401 / 403 / 200 with an injected clock ------------------------------


async def _verdict(auth: KeyAuthenticator, key: str | None, method: str = "GET",
                   path: str = "/pipeline/runs") -> tuple[int, str]:  # fmt: skip
    result = await auth.authenticate(method, path, None if key is None else f"Bearer {key}", None)
    return result.status, result.reason


async def test_no_bad_revoked_or_expired_key_is_401_and_low_scope_is_403(
    hasher: KeyHasher,
) -> None:
    """E5 and E6: each failure has its status and reason; a good key passes."""
    clock, lookup = Clock(), DictLookup()
    auth = KeyAuthenticator(lookup, hasher, now_ms=clock.now_ms)
    read_key, read = new_key("r", Scope.READ, hasher, now_ms=T0, expires_days=1)
    lookup.records[read.id] = read
    other = generate_key()
    assert await _verdict(auth, None) == (401, "missing_key")
    assert await _verdict(auth, "not-a-key") == (401, "malformed_key")
    assert await _verdict(auth, other.key) == (401, "unknown_key")
    forged = read_key.key[:-4] + "AAAA"
    assert await _verdict(auth, forged) == (401, "bad_key")
    assert await _verdict(auth, read_key.key) == (200, "ok")
    assert await _verdict(auth, read_key.key, "POST", "/pipeline/run") == (403, "scope")
    assert await _verdict(auth, read_key.key, "POST", "/accounts") == (403, "scope")
    assert await _verdict(auth, None, "GET", "/health/live") == (200, "open")
    clock.ms = T0 + DAY
    assert await _verdict(auth, read_key.key) == (401, "expired")
    lookup.records[read.id] = KeyRecord(**{**_fields(read), "expires_ms": None,
                                           "revoked_ms": T0 + 5})  # fmt: skip
    assert await _verdict(auth, read_key.key) == (401, "revoked")


def _fields(record: KeyRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in KeyRecord.__slots__}


async def test_rotation_overlap_keeps_both_keys_working_then_only_the_new(
    hasher: KeyHasher,
) -> None:
    """During the overlap old and new keys both pass (E5); after it only the new one."""
    clock, lookup = Clock(), DictLookup()
    auth = KeyAuthenticator(lookup, hasher, now_ms=clock.now_ms)
    old_key, old = new_key("svc", Scope.RUN, hasher, now_ms=T0, expires_days=30)
    clock.ms = T0 + DAY
    new, record, old_expiry = rotation(old, hasher, now_ms=clock.ms, overlap_s=120)
    assert old_expiry == clock.ms + 120_000
    assert record.scope == Scope.RUN
    assert record.name == "svc"
    assert record.rotated_from == old.id
    assert record.expires_ms == clock.ms + 30 * DAY  # same lifetime length from now
    lookup.records[old.id] = KeyRecord(**{**_fields(old), "expires_ms": old_expiry})
    lookup.records[record.id] = record
    for key in (old_key.key, new.key):
        assert await _verdict(auth, key, "POST", "/pipeline/run") == (200, "ok")
    clock.ms += 120_000
    assert await _verdict(auth, old_key.key) == (401, "expired")
    assert await _verdict(auth, new.key) == (200, "ok")


def test_rotation_never_extends_the_old_key_and_refuses_a_dead_one(hasher: KeyHasher) -> None:
    """An overlap past the old key's expiry ends at that expiry; a revoked key cannot rotate."""
    _, old = new_key("svc", Scope.READ, hasher, now_ms=T0, expires_days=1)
    _, _, old_expiry = rotation(old, hasher, now_ms=T0 + 1000, overlap_s=10 * 86_400)
    assert old_expiry == old.expires_ms
    dead = KeyRecord(**{**_fields(old), "revoked_ms": T0 + 1})
    with pytest.raises(KeyNotActiveError):
        rotation(dead, hasher, now_ms=T0 + 2, overlap_s=60)


async def test_the_cache_serves_a_revoked_key_at_most_its_ttl(hasher: KeyHasher) -> None:
    """A key revoked in the store still passes from cache until the TTL, then fails (<= 60 s)."""
    clock, lookup = Clock(), DictLookup()
    cache = CachedKeyLookup(lookup, ttl_s=30, clock=clock.mono)
    auth = KeyAuthenticator(cache, hasher, now_ms=clock.now_ms)
    key, record = new_key("r", Scope.READ, hasher, now_ms=T0)
    lookup.records[record.id] = record
    assert await _verdict(auth, key.key) == (200, "ok")
    lookup.records[record.id] = KeyRecord(**{**_fields(record), "revoked_ms": T0})
    clock.ms += 29_999
    assert await _verdict(auth, key.key) == (200, "ok")  # still cached
    assert lookup.queries == 1
    clock.ms += 1
    assert await _verdict(auth, key.key) == (401, "revoked")
    assert lookup.queries == 2
    unknown = generate_key().key
    for _ in range(5):
        assert await _verdict(auth, unknown) == (401, "unknown_key")
    assert lookup.queries == 3  # unknown ids are cached too
    with pytest.raises(ValueError, match="ttl_s"):
        CachedKeyLookup(lookup, ttl_s=61)


# -- the store: SQLite file and PostgreSQL -------------------------------------------------


async def test_the_store_keeps_the_hash_and_never_the_key(
    repo: KeyRepo, key_store: RunStore, hasher: KeyHasher, tmp_path: Path
) -> None:
    """Every column of the row, and (SQLite) every byte of the files, lack the key."""
    generated, record = await repo.create("ci", Scope.RUN, hasher, now_ms=T0, expires_days=7)
    async with key_store.engine.connect() as conn:
        row = (await conn.execute(select(api_keys))).one()._mapping
    assert row["key_hash"] == hasher.hash(generated.key)
    assert all(generated.key not in str(v) for v in row.values())
    secret_part = generated.key.rsplit("_", 1)[1]
    assert all(secret_part not in str(v) for v in row.values())
    assert row["expires_ms"] == T0 + 7 * DAY
    assert row["scope"] == "run"
    if key_store.backend == "sqlite":
        async with key_store.engine.connect() as conn:  # everything into the main file
            await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        blob = _file_bytes(tmp_path)
        assert secret_part.encode() not in blob
        assert record.key_hash.encode() in blob
    assert await repo.find_key(record.id) == record


def _file_bytes(directory: Path) -> bytes:
    """Every byte of the SQLite database files (main file and WAL) in ``directory``."""
    files = [p for p in directory.iterdir() if p.name.startswith("conclave.db")]
    return b"".join(p.read_bytes() for p in files)


async def test_list_count_revoke_and_rotate_through_the_store(
    repo: KeyRepo, hasher: KeyHasher
) -> None:
    """Revocation and rotation persist; count_active follows the clock; unknown ids raise."""
    _, a = await repo.create("a", Scope.READ, hasher, now_ms=T0)
    _, b = await repo.create("b", Scope.ADMIN, hasher, now_ms=T0 + 1, expires_days=1)
    assert [r.id for r in await repo.list_keys()] == [a.id, b.id]
    assert await repo.count_active(T0 + 2) == 2
    assert await repo.count_active(T0 + 1 + DAY) == 1
    revoked = await repo.revoke(a.id, now_ms=T0 + 10)
    assert revoked.revoked_ms == T0 + 10
    assert (await repo.revoke(a.id, now_ms=T0 + 20)).revoked_ms == T0 + 10  # idempotent
    assert (await repo.find_key(a.id)) == revoked
    assert await repo.count_active(T0 + 11) == 1
    new, record, old = await repo.rotate(b.id, hasher, now_ms=T0 + 100, overlap_s=60)
    assert old.expires_ms == T0 + 100 + 60_000
    assert await repo.find_key(b.id) == old
    assert await repo.find_key(record.id) == record
    assert hasher.matches(new.key, record.key_hash)
    assert await repo.count_active(T0 + 101) == 2
    assert await repo.count_active(T0 + 100 + 60_000) == 1
    with pytest.raises(UnknownKeyError):
        await repo.revoke("0123456789abcdef", now_ms=T0)
    with pytest.raises(KeyNotActiveError):
        await repo.rotate(a.id, hasher, now_ms=T0 + 200, overlap_s=1)
    assert len(await repo.list_keys()) == 3  # the refused rotation wrote nothing


async def test_revocation_reaches_another_replica_within_the_cache_ttl(
    key_store: RunStore, hasher: KeyHasher
) -> None:
    """Two processes' caches over one database: a revoke on one fails on the other by TTL."""
    clock = Clock()
    writer = KeyRepo(key_store)
    replica = KeyAuthenticator(CachedKeyLookup(KeyRepo(key_store), ttl_s=60, clock=clock.mono),
                               hasher, now_ms=clock.now_ms)  # fmt: skip
    key, record = await writer.create("r", Scope.READ, hasher, now_ms=T0)
    assert await _verdict(replica, key.key) == (200, "ok")
    await writer.revoke(record.id, now_ms=clock.ms)
    clock.ms += 59_000
    assert await _verdict(replica, key.key) == (200, "ok")
    clock.ms += 1_000
    assert await _verdict(replica, key.key) == (401, "revoked")
