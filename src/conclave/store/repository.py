"""`RunStore`: save and read pipeline runs, claim idempotency keys; SQLite or PostgreSQL.

Runs are append-only. `RunStore.save_run` writes the run, its steps, its decision and (when
given) the completion of its idempotency key in ONE transaction (RELIABILITY.md D7): a
failure anywhere leaves none of them. On PostgreSQL a run without a key is ONE statement
(the run and its steps as data-modifying CTEs of the decision's INSERT), atomic on its own
and one round trip instead of five. On SQLite every write transaction is one function run
on the store's writer thread (`SqliteWriter`: one hop from the event loop, not one per
statement), starts with ``BEGIN IMMEDIATE`` and waits up to the busy timeout for the lock
(D4, D5). Writers of one process take turns first (FIFO, bounded by the same busy
timeout), so they never wait inside SQLite's busy handler, whose sleeps grow to 100 ms a
retry: eight runs written at once had a p99 near 1 s that way. Reads, and the writes of
`accounts_repo` and `keys_repo`, go through the async engine (aiosqlite); those writes
take the same turn.

Driver errors are translated here: a database that cannot be reached, times out or stays
locked raises `StoreUnavailableError` (retry later; the API answers 503); a write the
database refuses raises `StoreRejectedError`. Their messages hold no URL, host or SQL.
While tracing is on, the write of a run is the client span ``db.save_run`` (backend, run id,
step count: no SQL, no URL).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

from opentelemetry.trace import SpanKind
from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    StatementError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from conclave.errors import InvalidRequestError, StoreRejectedError, StoreUnavailableError
from conclave.observability import tracing
from conclave.store import codec
from conclave.store.engine import WRITE, Backend, create_engine, iso_utc, resolve_url
from conclave.store.idempotency import (
    IdempotencyClaim,
    check_key,
    claim_key,
    complete_key,
    release_key,
)
from conclave.store.migrate import upgrade
from conclave.store.models import decisions, run_steps, runs
from conclave.store.run_writes import insert_run, one_statement
from conclave.store.sqlite_writer import SqliteWriter

#: Most summaries one `RunStore.list_runs` call returns.
MAX_PAGE = 500
_SUMMARY_COLUMNS = tuple(
    runs.c[name]
    for name in ("run_id", "account_id", "symbol", "timeframe", "as_of", "created_at",
                 "status", "degraded", "missing_agents", "action")
)  # fmt: skip
_UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeoutError, OSError, TimeoutError)
P = ParamSpec("P")
T = TypeVar("T")


class RunStore:
    """The run store over one database; open with `RunStore.open`, close with `aclose`."""

    def __init__(
        self,
        engine: AsyncEngine,
        backend: Backend,
        *,
        stale_claim_s: float = 60.0,
        busy_timeout_s: float = 5.0,
    ) -> None:
        self._engine = engine
        self.backend: Backend = backend
        self.stale_claim_s = stale_claim_s
        # SQLite has one writer at a time: this process's writers queue for its thread
        self._sqlite = (
            SqliteWriter(engine.url, busy_timeout_s=busy_timeout_s) if backend == "sqlite" else None
        )
        # attempt number of each key this store claimed, so that a claim another caller
        # took over after it went stale cannot be completed by the late original owner
        self._claims: dict[str, int] = {}

    @classmethod
    async def open(
        cls,
        database_url: str | None,
        *,
        data_dir: Path = Path("data"),
        schema: str | None = None,
        busy_timeout_s: float = 5.0,
        stale_claim_s: float = 60.0,
    ) -> Self:
        """Connect and migrate to head.

        ``database_url`` None means SQLite in ``data_dir/conclave.db`` (WAL, ``busy_timeout``
        of ``busy_timeout_s``, ``BEGIN IMMEDIATE`` for writes); otherwise a PostgreSQL URL
        (``postgresql+asyncpg://``, ``postgresql://`` or ``postgres://``) or an SQLite one
        (``sqlite+aiosqlite:///path``). ``schema`` (PostgreSQL only) is created if needed
        and used as the search path. A pending idempotency claim older than
        ``stale_claim_s`` is closed as abandoned. Raises `ConfigurationError` for a bad URL and
        `StoreUnavailableError` when the database cannot be reached.
        """
        url, backend = resolve_url(database_url, data_dir)
        engine = create_engine(url, backend, schema=schema, busy_timeout_s=busy_timeout_s)
        store = cls(engine, backend, stale_claim_s=stale_claim_s, busy_timeout_s=busy_timeout_s)
        try:
            async with store._guard():
                await upgrade(engine, backend, schema=schema)
        except BaseException:
            await engine.dispose()
            raise
        return store

    async def aclose(self) -> None:
        """Close every pooled connection (and the SQLite writer's thread)."""
        try:
            if self._sqlite is not None:
                await self._sqlite.aclose()
        finally:
            await self._engine.dispose()

    @property
    def engine(self) -> AsyncEngine:
        """The underlying engine (for tests and maintenance scripts)."""
        return self._engine

    @property
    def write_engine(self) -> Engine:
        """The engine this store's own writes go through (for tests that watch or break
        statements): on SQLite the writer thread's, on PostgreSQL ``engine.sync_engine``."""
        return self._engine.sync_engine if self._sqlite is None else self._sqlite.engine

    # -- transactions ------------------------------------------------------------------

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        """Translate driver errors into `StoreUnavailableError` / `StoreRejectedError`."""
        try:
            yield
        except (IntegrityError, DataError):
            raise StoreRejectedError(
                "the run store refused the write (duplicate or invalid value)"
            ) from None
        except _UNAVAILABLE as exc:
            raise StoreUnavailableError(
                f"the run store is unavailable ({type(exc).__name__})"
            ) from exc
        except DBAPIError as exc:
            raise StoreUnavailableError(
                f"the run store failed ({type(exc.orig).__name__})"
            ) from exc
        except StatementError as exc:
            raise StoreRejectedError(
                f"the run store could not encode a value ({type(exc.orig).__name__})"
            ) from None

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction on the async engine, in this process's turn on SQLite."""
        async with self._writer_turn(), self._guard(), self._engine.connect() as conn:
            await conn.execution_options(**{WRITE: True})
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def _writer_turn(self) -> AsyncIterator[None]:
        if self._sqlite is None:  # PostgreSQL locks rows, not the database
            yield
            return
        async with self._sqlite.turn():
            yield

    async def _transact(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``fn(conn, ...)`` in one write transaction: on SQLite one hop to the writer
        thread, on PostgreSQL a pooled connection (``run_sync``)."""
        if self._sqlite is None:
            async with self._write() as conn:
                return await conn.run_sync(fn, *args, **kwargs)
        async with self._guard():
            return await self._sqlite.transaction(fn, *args, **kwargs)

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self._guard(), self._engine.connect() as conn, conn.begin():
            yield conn

    # -- runs --------------------------------------------------------------------------

    async def save_run(
        self,
        run_wire: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
    ) -> None:
        """Store ``run_wire`` (`PipelineRun.to_wire`), its steps and decision atomically.

        With ``idempotency_key`` the key is completed with this run in the same
        transaction. Raises `ValueError` for a wire dict without the keys the schema
        needs (before any I/O), `StoreRejectedError` for a run id already stored or a key
        owned by another run, `StoreUnavailableError` when the database cannot be used.
        """
        rows = codec.encode(run_wire)
        if idempotency_key is not None:
            check_key(idempotency_key)
        attempt = self._claims.get(idempotency_key) if idempotency_key is not None else None
        with tracing.span("db.save_run", SpanKind.CLIENT) as span:
            if span.is_recording():
                span.set_attributes({"db.system.name": self.backend, "conclave.run_id": rows.run_id,
                                     "conclave.steps": len(rows.steps)})  # fmt: skip
            single = one_statement(rows) if self.backend == "postgresql" else None
            if single is not None and idempotency_key is None:
                async with self._guard(), self._engine.connect() as conn:
                    await conn.execution_options(isolation_level="AUTOCOMMIT")
                    await conn.execute(*single)
                return
            await self._transact(
                insert_run, rows, idempotency_key, request_hash=request_hash, attempt=attempt,
                backend=self.backend,
            )  # fmt: skip
        if idempotency_key is not None:
            self._claims.pop(idempotency_key, None)

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The wire dict saved under ``run_id``, equal to the one saved; None if unknown."""
        async with self._read() as conn:
            run = (await conn.execute(select(runs).where(runs.c.run_id == run_id))).first()
            if run is None:
                return None
            step_rows = await conn.execute(
                select(run_steps).where(run_steps.c.run_id == run_id).order_by(run_steps.c.position)
            )
            decision = (
                await conn.execute(select(decisions).where(decisions.c.run_id == run_id))
            ).one()
        steps = [s._mapping for s in step_rows]
        return codec.decode(run._mapping, steps, decision._mapping)

    async def list_runs(
        self,
        *,
        account_id: str | None = None,
        symbol: str | None = None,
        status: str | None = None,
        timeframe: str | None = None,
        degraded: bool | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of run summaries, newest first, and how many runs match in total.

        A summary holds ``runId, accountId, symbol, timeframe, asOf, createdAt`` (ISO UTC),
        ``status`` and ``action`` (the decision's), ``degraded`` and ``missingAgents``.
        ``limit`` is 1 to `MAX_PAGE`, ``offset`` at least 0.
        """
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequestError(f"limit must be 1 to {MAX_PAGE}", field="limit")
        if offset < 0:
            raise InvalidRequestError("offset must be at least 0", field="offset")
        where = [
            col == value
            for col, value in (
                (runs.c.account_id, account_id),
                (runs.c.symbol, symbol),
                (runs.c.status, status),
                (runs.c.timeframe, timeframe),
                (runs.c.degraded, degraded),
            )
            if value is not None
        ]
        page = (
            select(*_SUMMARY_COLUMNS)
            .where(*where)
            .order_by(runs.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        async with self._read() as conn:
            total = await conn.execute(select(func.count()).select_from(runs).where(*where))
            count = int(total.scalar_one())
            rows = (await conn.execute(page)).all()
        return [_summary(r._mapping) for r in rows], count

    # -- idempotency -------------------------------------------------------------------

    async def claim_idempotency_key(self, key: str, request_hash: str) -> IdempotencyClaim:
        """Claim ``key`` for a request whose canonical body hashes to ``request_hash``.

        ``new``: the caller owns the key and must save the run (with the key) or release
        it; ``replay``: done before with the same hash, ``run_id`` names the run;
        ``conflict``: the key was used with another body (422); ``in_progress``: the same
        request still runs (409); ``abandoned``: a pending claim older than
        ``stale_claim_s`` (its process died mid-run), closed for good and never run again
        (G4). Safe under concurrency across processes (a unique key).
        """
        check_key(key)
        claim, attempt = await self._transact(
            claim_key, key, request_hash, stale_after_s=self.stale_claim_s, backend=self.backend
        )
        if claim.kind == "new":
            self._claims[key] = attempt
        return claim

    async def complete_idempotency_key(self, key: str, run_id: str) -> None:
        """Mark ``key`` done with ``run_id`` (`save_run` with the key does this itself)."""
        check_key(key)
        attempt = self._claims.get(key)
        await self._transact(
            complete_key, key, run_id, request_hash=None, attempt=attempt, backend=self.backend
        )
        self._claims.pop(key, None)

    async def release_idempotency_key(self, key: str) -> None:
        """Forget this store's pending claim of ``key`` (the run failed before it was saved).

        A completed key, or a claim closed as abandoned, is left alone.
        """
        check_key(key)
        attempt = self._claims.pop(key, None)
        await self._transact(release_key, key, attempt=attempt)

    # -- health ------------------------------------------------------------------------

    async def health(self, *, timeout_s: float = 2.0) -> dict[str, Any]:
        """``{"status": "ok"|"down", "backend", "detail"}``; never raises, never names hosts."""
        try:
            async with asyncio.timeout(timeout_s), self._engine.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")
        except Exception as exc:  # health reports, it does not raise
            cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
            return {"status": "down", "backend": self.backend,
                    "detail": f"unreachable ({type(cause).__name__})"}  # fmt: skip
        return {"status": "ok", "backend": self.backend, "detail": "reachable"}


def _summary(row: Any) -> dict[str, Any]:
    return {
        "runId": row["run_id"],
        "accountId": row["account_id"],
        "symbol": row["symbol"],
        "timeframe": row["timeframe"],
        "asOf": row["as_of"],
        "createdAt": iso_utc(row["created_at"]),
        "status": row["status"],
        "degraded": row["degraded"],
        "missingAgents": row["missing_agents"],
        "action": row["action"],
    }
