"""SQL of the paper accounts: one function per statement, on a connection the caller holds.

`AccountRepo` opens transactions over a `RunStore`'s engine (same database, same error
translation: `StoreUnavailableError` / `StoreRejectedError`); the functions below run on
the connection it yields, so `conclave.accounts.service` composes them into one
transaction per operation. `lock_account` takes the account's row lock on PostgreSQL
(``SELECT ... FOR UPDATE``); SQLite's ``BEGIN IMMEDIATE`` already serializes writers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Table, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from conclave.store.engine import Backend, iso_utc, utcnow
from conclave.store.models import (
    account_runs,
    accounts,
    equity_points,
    orders,
    positions,
    risk_events,
)
from conclave.store.repository import RunStore

Row = dict[str, Any]


class AccountRepo:
    """Transactions over the run store's database for the account tables."""

    def __init__(self, store: RunStore) -> None:
        self._store = store
        self.backend: Backend = store.backend

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite), driver errors translated."""
        async with self._store._write() as conn:  # same package: shares its error mapping
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read transaction, driver errors translated."""
        async with self._store._read() as conn:
            yield conn


def _row(r: Any) -> Row:
    out = dict(r._mapping)
    if "created_at" in out and out["created_at"] is not None:
        out["created_at"] = iso_utc(out["created_at"])
    return out


async def insert_account(conn: AsyncConnection, values: Mapping[str, Any]) -> None:
    """Insert an account row (``created_at`` from the database clock)."""
    await conn.execute(accounts.insert().values(**values, created_at=utcnow()))


async def get_account(conn: AsyncConnection, account_id: str, *, lock: bool = False) -> Row | None:
    """The account's row, locked for update when ``lock`` (PostgreSQL), or None."""
    query = select(accounts).where(accounts.c.id == account_id)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    found = (await conn.execute(query)).first()
    return None if found is None else _row(found)


async def list_accounts(conn: AsyncConnection) -> list[Row]:
    """Every account, oldest first."""
    rows = await conn.execute(select(accounts).order_by(accounts.c.created_at, accounts.c.id))
    return [_row(r) for r in rows]


async def update_account(conn: AsyncConnection, account_id: str, **values: Any) -> None:
    """Set columns of one account."""
    await conn.execute(update(accounts).where(accounts.c.id == account_id).values(**values))


async def get_account_run(conn: AsyncConnection, account_id: str, run_id: str) -> Row | None:
    """The outcome of ``run_id`` for the account when it was processed already."""
    query = select(account_runs).where(
        account_runs.c.account_id == account_id, account_runs.c.run_id == run_id
    )
    found = (await conn.execute(query)).first()
    return None if found is None else _row(found)


async def insert_account_run(
    conn: AsyncConnection, account_id: str, run_id: str, t_ms: int, outcome: Row
) -> None:
    """Mark ``run_id`` processed for the account (primary key: at most once)."""
    await conn.execute(
        account_runs.insert().values(
            account_id=account_id, run_id=run_id, t_ms=t_ms, outcome=outcome
        )
    )


async def pending_orders(conn: AsyncConnection, account_id: str, symbol: str) -> list[Row]:
    """Pending orders of the account on ``symbol``, oldest first."""
    query = (
        select(orders)
        .where(
            orders.c.account_id == account_id,
            orders.c.symbol == symbol,
            orders.c.status == "pending",
        )
        .order_by(orders.c.id)
    )
    return [_row(r) for r in await conn.execute(query)]


async def insert_order(conn: AsyncConnection, values: Mapping[str, Any]) -> None:
    """Insert an order (unique per account and run)."""
    await conn.execute(orders.insert().values(**values, created_at=utcnow()))


async def update_order(conn: AsyncConnection, order_id: int, **values: Any) -> None:
    """Set columns of one order."""
    await conn.execute(update(orders).where(orders.c.id == order_id).values(**values))


async def list_orders(conn: AsyncConnection, account_id: str, limit: int = 100) -> list[Row]:
    """The account's newest ``limit`` orders, newest first."""
    query = (
        select(orders)
        .where(orders.c.account_id == account_id)
        .order_by(orders.c.id.desc())
        .limit(limit)
    )
    return [_row(r) for r in await conn.execute(query)]


async def get_positions(conn: AsyncConnection, account_id: str) -> dict[str, Row]:
    """The account's positions by symbol (closed ones included, with qty 0)."""
    query = select(positions).where(positions.c.account_id == account_id)
    query = query.order_by(positions.c.symbol)
    return {r.symbol: _row(r) for r in await conn.execute(query)}


def _upsert(conn: AsyncConnection, table: Table, keys: list[str], values: Row) -> Any:
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = insert(table).values(**values)
    rest = {k: stmt.excluded[k] for k in values if k not in keys}
    return stmt.on_conflict_do_update(index_elements=keys, set_=rest)


async def upsert_position(conn: AsyncConnection, values: Row) -> None:
    """Insert or replace the position of (account, symbol)."""
    await conn.execute(_upsert(conn, positions, ["account_id", "symbol"], values))


async def upsert_equity(conn: AsyncConnection, values: Row) -> None:
    """Record equity at (account, t_ms); a second evaluation of the same bar replaces it."""
    await conn.execute(_upsert(conn, equity_points, ["account_id", "t_ms"], values))


async def equity_history(
    conn: AsyncConnection, account_id: str, *, until_ms: int | None = None
) -> tuple[list[int], list[float]]:
    """Times (ms UTC, ascending) and equity of the account's curve up to ``until_ms``."""
    query = select(equity_points.c.t_ms, equity_points.c.equity).where(
        equity_points.c.account_id == account_id
    )
    if until_ms is not None:
        query = query.where(equity_points.c.t_ms <= until_ms)
    rows = (await conn.execute(query.order_by(equity_points.c.t_ms))).all()
    return [int(r[0]) for r in rows], [float(r[1]) for r in rows]


async def insert_event(
    conn: AsyncConnection, account_id: str, t_ms: int, kind: str, source: str, reason: str
) -> None:
    """Record a halt, pause, resume or protection with its reason."""
    await conn.execute(
        risk_events.insert().values(
            account_id=account_id,
            t_ms=t_ms,
            kind=kind,
            source=source,
            reason=reason,
            created_at=utcnow(),
        )
    )


async def list_events(conn: AsyncConnection, account_id: str, limit: int = 100) -> list[Row]:
    """The account's newest ``limit`` risk events, oldest first."""
    query = (
        select(risk_events)
        .where(risk_events.c.account_id == account_id)
        .order_by(risk_events.c.id.desc())
        .limit(limit)
    )
    return [_row(r) for r in await conn.execute(query)][::-1]
