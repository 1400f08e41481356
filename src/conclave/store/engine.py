"""Which database, and how to connect to it: URL rules, SQLite pragmas, the DB's own clock.

``DATABASE_URL`` unset means SQLite in ``data_dir/conclave.db``; otherwise the URL names
PostgreSQL (``postgresql://``, ``postgres://`` and ``postgresql+asyncpg://`` all use
asyncpg) or an SQLite file (``sqlite:///`` or ``sqlite+aiosqlite:///``).

SQLite connections run in WAL mode with a busy timeout (5 s by default, RELIABILITY.md D4,
D5). The driver's own transaction handling is switched off so that we emit ``BEGIN``
ourselves: ``BEGIN IMMEDIATE`` on a connection marked with the `WRITE` execution option
(the write lock is taken up front, so two writers queue on the busy timeout instead of
failing on a lock upgrade), a deferred ``BEGIN`` for reads. The run store's own writes
go through `create_sqlite_writer_engine`, a synchronous engine on the same file with the
same pragmas whose every transaction is a write, used from one thread.
"""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import DateTime, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from conclave.errors import ConfigurationError
from conclave.observability.metrics import DB_ERRORS

Backend = Literal["sqlite", "postgresql"]

#: Execution option that makes an SQLite transaction start with ``BEGIN IMMEDIATE``.
WRITE = "conclave_write"
SQLITE_FILE = "conclave.db"
_PG_SCHEMES = {"postgres", "postgresql", "postgresql+asyncpg"}
_SQLITE_SCHEMES = {"sqlite", "sqlite+aiosqlite"}
#: JSON columns refuse NaN and infinities on both backends (PostgreSQL's JSON would anyway).
_json_dumps = partial(json.dumps, allow_nan=False)


def resolve_url(database_url: str | None, data_dir: Path) -> tuple[URL, Backend]:
    """The async driver URL and backend for ``database_url`` (None: SQLite under ``data_dir``).

    Raises `ConfigurationError` for an unparsable URL or another database; the message
    never repeats the URL (it may hold a password).
    """
    if database_url is None:
        return URL.create("sqlite+aiosqlite", database=str(data_dir / SQLITE_FILE)), "sqlite"
    try:
        url = make_url(database_url.strip())
    except ArgumentError:
        raise ConfigurationError("DATABASE_URL is not a valid database URL") from None
    if url.drivername in _PG_SCHEMES:
        return url.set(drivername="postgresql+asyncpg"), "postgresql"
    if url.drivername in _SQLITE_SCHEMES:
        if not url.database or url.database == ":memory:":
            raise ConfigurationError("DATABASE_URL must name an SQLite file, not memory")
        return url.set(drivername="sqlite+aiosqlite"), "sqlite"
    raise ConfigurationError(
        f"DATABASE_URL must be postgresql:// or sqlite:///, not {url.get_backend_name()}://"
    )


def create_engine(
    url: URL,
    backend: Backend,
    *,
    schema: str | None = None,
    busy_timeout_s: float = 5.0,
    connect_timeout_s: float = 5.0,
    command_timeout_s: float = 10.0,
) -> AsyncEngine:
    """An async engine for ``url``; ``schema`` (PostgreSQL only) becomes the search path.

    Timeouts are seconds: SQLite waits ``busy_timeout_s`` for a lock; PostgreSQL gives up
    connecting after ``connect_timeout_s`` and on any statement after ``command_timeout_s``.
    """
    if backend == "sqlite":
        if schema is not None:
            raise ConfigurationError("a schema applies to PostgreSQL only")
        if url.database:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url,
            connect_args={"timeout": busy_timeout_s},
            pool_timeout=busy_timeout_s + 25.0,
            json_serializer=_json_dumps,
        )
        _sqlite_events(engine.sync_engine, busy_timeout_s)
        _count_errors(engine.sync_engine)
        return engine
    # command_timeout: a hung (SIGSTOPped) server fails queries instead of blocking them
    connect_args: dict[str, Any] = {
        "timeout": connect_timeout_s,
        "command_timeout": command_timeout_s,
    }
    if schema is not None:
        connect_args["server_settings"] = {"search_path": schema}
    engine = create_async_engine(
        url,
        connect_args=connect_args,
        pool_size=10,
        max_overflow=10,
        pool_timeout=connect_timeout_s + 5.0,
        json_serializer=_json_dumps,
    )
    _drop_closed_on_checkout(engine)
    _count_errors(engine.sync_engine)
    return engine


def create_sqlite_writer_engine(url: URL, *, busy_timeout_s: float = 5.0) -> Engine:
    """A synchronous engine (pysqlite) on the SQLite file of ``url`` whose every transaction
    is a write: ``BEGIN IMMEDIATE``, the same pragmas and error counting as `create_engine`.

    For one thread only (`conclave.store.sqlite_writer`): pysqlite connections refuse to be
    used from another thread, ``dispose`` included.
    """
    engine = create_sync_engine(
        url.set(drivername="sqlite"),
        connect_args={"timeout": busy_timeout_s},
        execution_options={WRITE: True},
        json_serializer=_json_dumps,
    )
    _sqlite_events(engine, busy_timeout_s)
    _count_errors(engine)
    return engine


def _drop_closed_on_checkout(engine: AsyncEngine) -> None:
    """Replace a pooled PostgreSQL connection the driver knows is closed, at checkout.

    A restarted or stopped server closes its sockets, and asyncpg marks the connection
    closed when that arrives; checking that flag costs nothing. SQLAlchemy's own
    ``pool_pre_ping`` would instead send BEGIN, an empty query and ROLLBACK (three round
    trips) before every use, more than the one round trip that writes a whole run.
    `DisconnectionError` makes the pool discard the connection and take another (or
    connect afresh). A connection that dies without the client seeing it (a cut network)
    fails its next statement, which the caller reports as unavailable (503) and the pool
    invalidates.
    """

    @event.listens_for(engine.sync_engine.pool, "checkout")
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        driver = getattr(dbapi_connection, "driver_connection", None)
        if driver is not None and driver.is_closed():
            raise DisconnectionError("the server closed this pooled connection")


def error_kind(exc: BaseException, *, disconnect: bool = False) -> str:
    """The ``kind`` label of a database error: connection, timeout, integrity or other."""
    name = type(exc).__name__.lower()
    if isinstance(exc, TimeoutError) or "timeout" in name or "timeout" in str(exc).lower():
        return "timeout"
    if "integrity" in name or "uniqueviolation" in name or "foreignkey" in name:
        return "integrity"
    if disconnect or isinstance(exc, ConnectionError | OSError) or "connect" in name:
        return "connection"
    return "other"


def _count_errors(engine: Engine) -> None:
    """Count every database error (failed connects and failed statements) in ``DB_ERRORS``.

    A connect that fails is counted where it happens (asyncpg raises a plain OSError there,
    which SQLAlchemy's error events never see); a pooled connection found closed at
    checkout is not counted: the pool replaces it (`_drop_closed_on_checkout`).
    """

    @event.listens_for(engine, "do_connect")
    def _on_connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except Exception as exc:
            DB_ERRORS.labels(error_kind(exc, disconnect=True)).inc()
            raise

    @event.listens_for(engine, "handle_error")
    def _on_error(context: Any) -> None:
        if context.is_pre_ping or context.connection is None:  # a connect: counted above
            return
        exc = context.original_exception
        DB_ERRORS.labels(error_kind(exc, disconnect=context.is_disconnect)).inc()


def _enter_wal(cursor: Any, busy_timeout_s: float) -> None:
    """Switch the file to WAL, retrying "database is locked" until the busy timeout.

    The switch takes an exclusive lock, and SQLite answers SQLITE_BUSY at once, without
    its busy handler, when another process is opening or converting the same new file
    (two processes starting together lost one of them to this in CI). WAL is persistent,
    so once any connection has switched, this is a read that returns "wal".
    """
    deadline = time.monotonic() + busy_timeout_s
    pause = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            if not busy or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)  # runs on the driver's own thread, never on the event loop
        pause = min(pause * 2, 0.1)


def _sqlite_events(engine: Engine, busy_timeout_s: float) -> None:
    busy_ms = max(0, int(busy_timeout_s * 1000))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (see below)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            _enter_wal(cursor, busy_timeout_s)
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        write = connection.get_execution_options().get(WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class utcnow(FunctionElement[datetime]):  # noqa: N801 - reads like the SQL function it is
    """The database's current UTC time (ms precision on SQLite): stamps rows, ages claims."""

    type = DateTime(timezone=True)
    inherit_cache = True


@compiles(utcnow)
def _utcnow_default(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(utcnow, "postgresql")
def _utcnow_postgresql(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    return "statement_timestamp()"


@compiles(utcnow, "sqlite")
def _utcnow_sqlite(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    return "strftime('%Y-%m-%d %H:%M:%f', 'now')"


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (SQLite hands back naive UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso_utc(value: datetime) -> str:
    """ISO 8601 UTC text with milliseconds, e.g. ``2025-12-06T10:30:00.123Z``."""
    v = as_utc(value)
    return v.strftime("%Y-%m-%dT%H:%M:%S.") + f"{v.microsecond // 1000:03d}Z"
