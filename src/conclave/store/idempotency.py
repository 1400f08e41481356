"""Idempotency keys (RELIABILITY.md G1-G3): claim before running, complete when saved.

A key moves ``pending`` -> ``completed`` (with its run) or is deleted when the run fails
before it is saved. The primary key on the key makes concurrent claims safe across
processes: one ``INSERT ... ON CONFLICT DO NOTHING`` wins, every other caller reads the
winner's row. Ages are measured with the database's clock, never the caller's.

A pending claim older than the staleness limit belongs to a process that died mid-run (a
live run ends by its deadline, well inside the limit). It is closed as ``abandoned`` with
its reason, never taken over: running the request again could execute it twice, which G4
forbids. The same key then answers ``abandoned`` for good; the client needs a new key.
`abandon_stale_keys` closes every such claim at once (the scheduler's pass calls it), so a
crashed request reaches its final state even if nobody retries it.

Each claim carries an ``attempt`` number that its owner must present to complete or
release it, so a late owner (alive past the limit) can neither complete nor release an
abandoned key: its save is refused and rolled back with its run.

The functions take a synchronous `Connection` inside the caller's write transaction: the
SQLite store runs them on its writer thread (`conclave.store.sqlite_writer`), the
PostgreSQL store through ``AsyncConnection.run_sync``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import CursorResult, Insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from conclave.errors import InvalidRequestError, StoreRejectedError
from conclave.store.engine import Backend, as_utc, utcnow
from conclave.store.models import MAX_KEY_LENGTH, idempotency_keys

ClaimKind = Literal["new", "replay", "conflict", "in_progress", "abandoned"]
PENDING, COMPLETED, ABANDONED = "pending", "completed", "abandoned"
#: Why a stale claim was closed (stored on the key).
ABANDONED_REASON = (
    "the process running this request stopped before saving its run (no answer within the"
    " staleness limit); the request is not run again: retry with a new Idempotency-Key"
)
_keys = idempotency_keys.c
_CLAIM_COLUMNS = (_keys.request_hash, _keys.state, _keys.run_id, _keys.attempt, _keys.claimed_at)


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """What claiming a key found: ``kind`` and, for ``replay``, the stored ``run_id``.

    ``abandoned``: the request under this key was cut short by a crash and is closed; it
    is never run a second time.
    """

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


def _rowcount(conn: Connection, statement: Any) -> int:
    result: CursorResult[Any] = conn.execute(statement)
    return result.rowcount


def claim_key(
    conn: Connection, key: str, request_hash: str, *, stale_after_s: float, backend: Backend
) -> tuple[IdempotencyClaim, int]:
    """Claim ``key`` inside the caller's write transaction: the claim and its attempt."""
    fresh = {"idem_key": key, "request_hash": request_hash, "state": PENDING, "attempt": 1,
             "claimed_at": utcnow()}  # fmt: skip
    if _rowcount(conn, _insert(backend, fresh)) == 1:
        return IdempotencyClaim("new"), 1
    row = conn.execute(
        select(*_CLAIM_COLUMNS, utcnow().label("now"))
        .where(_keys.idem_key == key)
        .with_for_update()
    ).one()
    if row.request_hash != request_hash:
        return IdempotencyClaim("conflict"), row.attempt
    if row.state == COMPLETED:
        return IdempotencyClaim("replay", row.run_id), row.attempt
    if row.state == ABANDONED:
        return IdempotencyClaim("abandoned"), row.attempt
    age_s = (as_utc(row.now) - as_utc(row.claimed_at)).total_seconds()
    if age_s < stale_after_s:
        return IdempotencyClaim("in_progress"), row.attempt
    _abandon(conn, key, row.attempt)
    return IdempotencyClaim("abandoned"), row.attempt


def _abandon(conn: Connection, key: str, attempt: int) -> bool:
    close = (
        idempotency_keys.update()
        .where(_keys.idem_key == key, _keys.state == PENDING, _keys.attempt == attempt)
        .values(state=ABANDONED, reason=ABANDONED_REASON, completed_at=utcnow())
    )
    return _rowcount(conn, close) == 1


async def abandon_stale_keys(conn: AsyncConnection, *, stale_after_s: float) -> list[str]:
    """Close every pending claim older than ``stale_after_s`` (database clock) as
    ``abandoned`` inside the caller's write transaction; the keys closed."""
    return await conn.run_sync(_abandon_stale, stale_after_s)


def _abandon_stale(conn: Connection, stale_after_s: float) -> list[str]:
    rows = conn.execute(
        select(_keys.idem_key, _keys.attempt, _keys.claimed_at, utcnow().label("now")).where(
            _keys.state == PENDING
        )
    ).all()  # no row locks: each close below is conditional on the claim being unchanged
    closed = []
    for row in rows:
        age_s = (as_utc(row.now) - as_utc(row.claimed_at)).total_seconds()
        if age_s >= stale_after_s and _abandon(conn, row.idem_key, row.attempt):
            closed.append(str(row.idem_key))
    return closed


def complete_key(
    conn: Connection,
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
    `StoreRejectedError` when the key is completed already or was abandoned, so the
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
    if _rowcount(conn, done) == 1:
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
        if _rowcount(conn, _insert(backend, row)) == 1:
            return
    raise StoreRejectedError(
        "the Idempotency-Key belongs to another request or run; this run was not saved"
    )


def release_key(conn: Connection, key: str, *, attempt: int | None) -> None:
    """Delete ``key``'s pending claim (only ``attempt``'s when known) inside a transaction."""
    conditions = [_keys.idem_key == key, _keys.state == PENDING]
    if attempt is not None:
        conditions.append(_keys.attempt == attempt)
    conn.execute(idempotency_keys.delete().where(*conditions))
