"""Idempotency keys (RELIABILITY.md G1-G3): claim before running, complete when saved.

A key moves ``pending`` -> ``completed`` (with its run) or is deleted when the run fails
before it is saved. The primary key on the key makes concurrent claims safe across
processes: one ``INSERT ... ON CONFLICT DO NOTHING`` wins, every other caller reads the
winner's row. Ages are measured with the database's clock, never the caller's.

Each claim carries an ``attempt`` number. Taking over a stale claim bumps it, so the late
original owner can neither complete nor release the key afterwards: its save is refused
and rolled back with its run, and exactly one run stays recorded under the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import CursorResult, Insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from conclave.errors import InvalidRequestError, StoreRejectedError
from conclave.store.engine import Backend, as_utc, utcnow
from conclave.store.models import MAX_KEY_LENGTH, idempotency_keys

ClaimKind = Literal["new", "replay", "conflict", "in_progress"]
PENDING, COMPLETED = "pending", "completed"
_keys = idempotency_keys.c
_CLAIM_COLUMNS = (_keys.request_hash, _keys.state, _keys.run_id, _keys.attempt, _keys.claimed_at)


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """What claiming a key found: ``kind`` and, for ``replay``, the stored ``run_id``."""

    kind: ClaimKind
    run_id: str | None = None


def check_key(key: str) -> None:
    """Raise `InvalidRequestError` for an empty key or one over `MAX_KEY_LENGTH` characters."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidRequestError(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters", field="Idempotency-Key"
        )


def _insert(backend: Backend, values: dict[str, Any]) -> Insert:
    if backend == "postgresql":
        return postgresql.insert(idempotency_keys).values(**values).on_conflict_do_nothing()
    return sqlite.insert(idempotency_keys).values(**values).on_conflict_do_nothing()


async def _rowcount(conn: AsyncConnection, statement: Any) -> int:
    result: CursorResult[Any] = await conn.execute(statement)
    return result.rowcount


async def claim_key(
    conn: AsyncConnection, key: str, request_hash: str, *, stale_after_s: float, backend: Backend
) -> tuple[IdempotencyClaim, int]:
    """Claim ``key`` inside the caller's write transaction: the claim and its attempt."""
    fresh = {"idem_key": key, "request_hash": request_hash, "state": PENDING, "attempt": 1,
             "claimed_at": utcnow()}  # fmt: skip
    if await _rowcount(conn, _insert(backend, fresh)) == 1:
        return IdempotencyClaim("new"), 1
    row = (
        await conn.execute(
            select(*_CLAIM_COLUMNS, utcnow().label("now"))
            .where(_keys.idem_key == key)
            .with_for_update()
        )
    ).one()
    if row.request_hash != request_hash:
        return IdempotencyClaim("conflict"), row.attempt
    if row.state == COMPLETED:
        return IdempotencyClaim("replay", row.run_id), row.attempt
    age_s = (as_utc(row.now) - as_utc(row.claimed_at)).total_seconds()
    if age_s < stale_after_s:
        return IdempotencyClaim("in_progress"), row.attempt
    takeover = (
        idempotency_keys.update()
        .where(_keys.idem_key == key, _keys.state == PENDING, _keys.attempt == row.attempt)
        .values(attempt=row.attempt + 1, claimed_at=utcnow())
    )
    if await _rowcount(conn, takeover) == 1:
        return IdempotencyClaim("new"), row.attempt + 1
    return IdempotencyClaim("in_progress"), row.attempt


async def complete_key(
    conn: AsyncConnection,
    key: str,
    run_id: str,
    *,
    request_hash: str | None,
    attempt: int | None,
    backend: Backend,
) -> None:
    """Point ``key`` at ``run_id`` inside the caller's transaction.

    Completes the pending claim (of ``attempt`` when the caller knows it, with
    ``request_hash`` when given); a key never claimed is inserted completed. Raises
    `StoreRejectedError` when the key is completed already or was taken over, so the
    caller's transaction (and the run in it) rolls back.
    """
    conditions = [_keys.idem_key == key, _keys.state == PENDING]
    if attempt is not None:
        conditions.append(_keys.attempt == attempt)
    if request_hash is not None:
        conditions.append(_keys.request_hash == request_hash)
    done = (
        idempotency_keys.update()
        .where(*conditions)
        .values(state=COMPLETED, run_id=run_id, completed_at=utcnow())
    )
    if await _rowcount(conn, done) == 1:
        return
    if attempt is None:
        row = {
            "idem_key": key,
            "request_hash": request_hash or "",
            "state": COMPLETED,
            "attempt": 1,
            "run_id": run_id,
            "claimed_at": utcnow(),
            "completed_at": utcnow(),
        }
        if await _rowcount(conn, _insert(backend, row)) == 1:
            return
    raise StoreRejectedError(
        "the Idempotency-Key belongs to another request or run; this run was not saved"
    )


async def release_key(conn: AsyncConnection, key: str, *, attempt: int | None) -> None:
    """Delete ``key``'s pending claim (only ``attempt``'s when known) inside a transaction."""
    conditions = [_keys.idem_key == key, _keys.state == PENDING]
    if attempt is not None:
        conditions.append(_keys.attempt == attempt)
    await conn.execute(idempotency_keys.delete().where(*conditions))
