"""SQL of the API keys: create, find, list, count, revoke and rotate, over the run store's database.

`KeyRepo` opens transactions over a `RunStore`'s engine (same database, same error
translation as `conclave.store.accounts_repo`) and speaks `conclave.security.keys` records:
it stores the keyed hash a `KeyHasher` computes, never the key. It is the `KeyLookup` the
authenticator reads through (wrap it in `CachedKeyLookup`). The clock is the caller's
(``now_ms``), so expiry and rotation overlaps are testable. A rotation is one transaction:
the new key is inserted and the old key's expiry shortened together, the old row locked
(``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` serializes writers).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from conclave.security.keys import (
    GeneratedKey,
    KeyHasher,
    KeyRecord,
    Scope,
    UnknownKeyError,
    new_key,
    rotation,
)
from conclave.store.models import api_keys
from conclave.store.repository import RunStore


def _record(row: Any) -> KeyRecord:
    m = row._mapping
    return KeyRecord(
        id=m["id"],
        name=m["name"],
        scope=Scope(m["scope"]),
        key_hash=m["key_hash"],
        created_ms=int(m["created_ms"]),
        expires_ms=None if m["expires_ms"] is None else int(m["expires_ms"]),
        revoked_ms=None if m["revoked_ms"] is None else int(m["revoked_ms"]),
        rotated_from=m["rotated_from"],
    )


def _values(record: KeyRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "scope": str(record.scope),
        "key_hash": record.key_hash,
        "created_ms": record.created_ms,
        "expires_ms": record.expires_ms,
        "revoked_ms": record.revoked_ms,
        "rotated_from": record.rotated_from,
    }


async def _get(conn: AsyncConnection, key_id: str, *, lock: bool = False) -> KeyRecord | None:
    query = select(api_keys).where(api_keys.c.id == key_id)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    found = (await conn.execute(query)).first()
    return None if found is None else _record(found)


class KeyRepo:
    """The API keys in the run store's database; a `KeyLookup`."""

    def __init__(self, store: RunStore) -> None:
        self._store = store

    async def find_key(self, key_id: str) -> KeyRecord | None:
        """The record of ``key_id`` (revoked and expired ones too), or None."""
        async with self._store._read() as conn:  # same package: shares its error mapping
            return await _get(conn, key_id)

    async def list_keys(self) -> list[KeyRecord]:
        """Every key, oldest first (revoked and expired ones too)."""
        query = select(api_keys).order_by(api_keys.c.created_ms, api_keys.c.id)
        async with self._store._read() as conn:
            return [_record(r) for r in await conn.execute(query)]

    async def count_active(self, now_ms: int) -> int:
        """How many keys are neither revoked nor expired at ``now_ms`` (start-up check)."""
        c = api_keys.c
        live = and_(
            or_(c.revoked_ms.is_(None), c.revoked_ms > now_ms),
            or_(c.expires_ms.is_(None), c.expires_ms > now_ms),
        )
        async with self._store._read() as conn:
            total = await conn.execute(select(func.count()).select_from(api_keys).where(live))
            return int(total.scalar_one())

    async def create(
        self,
        name: str,
        scope: Scope,
        hasher: KeyHasher,
        *,
        now_ms: int,
        expires_days: float | None = None,
    ) -> tuple[GeneratedKey, KeyRecord]:
        """A new key (show ``GeneratedKey.key`` once) and its stored record."""
        generated, record = new_key(name, scope, hasher, now_ms=now_ms,
                                    expires_days=expires_days)  # fmt: skip
        async with self._store._write() as conn:
            await conn.execute(api_keys.insert().values(**_values(record)))
        return generated, record

    async def revoke(self, key_id: str, *, now_ms: int) -> KeyRecord:
        """Revoke ``key_id`` from ``now_ms`` on (again: no change); raise `UnknownKeyError`."""
        async with self._store._write() as conn:
            record = await _get(conn, key_id, lock=True)
            if record is None:
                raise UnknownKeyError(key_id)
            if record.revoked_ms is not None:
                return record
            await conn.execute(
                update(api_keys).where(api_keys.c.id == key_id).values(revoked_ms=now_ms)
            )
        return replace(record, revoked_ms=now_ms)

    async def rotate(
        self, key_id: str, hasher: KeyHasher, *, now_ms: int, overlap_s: float
    ) -> tuple[GeneratedKey, KeyRecord, KeyRecord]:
        """Replace ``key_id``: the new key, its record, and the old record with its expiry
        now at most ``overlap_s`` seconds away. Raises `UnknownKeyError`, or
        `KeyNotActiveError` for a revoked or expired key."""
        async with self._store._write() as conn:
            old = await _get(conn, key_id, lock=True)
            if old is None:
                raise UnknownKeyError(key_id)
            generated, record, old_expiry = rotation(old, hasher, now_ms=now_ms,
                                                     overlap_s=overlap_s)  # fmt: skip
            await conn.execute(api_keys.insert().values(**_values(record)))
            await conn.execute(
                update(api_keys).where(api_keys.c.id == key_id).values(expires_ms=old_expiry)
            )
        return generated, record, replace(old, expires_ms=old_expiry)
