"""`SqliteWriter`: each write transaction of the SQLite run store is ONE hop to one thread.

Through SQLAlchemy's asyncio layer and aiosqlite every step of a transaction (checkout,
``BEGIN IMMEDIATE``, each INSERT, COMMIT, the pool's reset) is a trip from the event loop
to aiosqlite's thread and back: about ten for one run, most of what a run cost the
server to store. Here a whole transaction is a plain function of a synchronous SQLAlchemy
`Connection` (pysqlite with the same pragmas, ``BEGIN IMMEDIATE`` and error counting,
`conclave.store.engine.create_sqlite_writer_engine`) run on one dedicated thread: one trip
there, one back. The function commits when it returns and rolls back when it raises, so a
failure anywhere leaves no row (RELIABILITY.md D7).

Writers of one process take turns on an `asyncio.Lock` first (FIFO, the wait bounded by
the busy timeout, then `StoreUnavailableError` as SQLite's own lock would give), so they
never wait inside SQLite's busy handler, whose sleeps grow to 100 ms a retry. Other
processes, and this process's other connections, still meet SQLite's busy timeout (D4,
D5). A turn is held until the thread has finished its transaction, even when the awaiting
task is cancelled: that transaction then commits or rolls back on its own, and the next
writer (say, the release of an idempotency claim) starts after it, never inside it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy.engine import URL, Connection, Engine

from conclave.errors import StoreUnavailableError
from conclave.store.engine import create_sqlite_writer_engine

P = ParamSpec("P")
T = TypeVar("T")


class SqliteWriter:
    """The write side of one SQLite file: a turn per writer, one thread, one connection."""

    def __init__(self, url: URL, *, busy_timeout_s: float = 5.0) -> None:
        self._engine = create_sqlite_writer_engine(url, busy_timeout_s=busy_timeout_s)
        self._busy_timeout_s = busy_timeout_s
        self._turn = asyncio.Lock()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="conclave-sqlite")
        self._closed = False

    @property
    def engine(self) -> Engine:
        """The synchronous engine of the writer thread (watch it; use it from no other)."""
        return self._engine

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """This process's turn to write (for writes through another connection)."""
        await self._take_turn()
        try:
            yield
        finally:
            self._turn.release()

    async def transaction(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``fn(conn, *args, **kwargs)`` in one ``BEGIN IMMEDIATE`` transaction on the
        writer thread, after this caller's turn: committed when ``fn`` returns, rolled
        back when it raises (its exception, SQLAlchemy's for the driver's, reaches the
        caller). ``fn`` runs on another thread: it must not touch the event loop."""
        await self._take_turn()
        try:
            if self._closed:
                raise StoreUnavailableError("the run store is closed")
            call = functools.partial(self._in_transaction, fn, *args, **kwargs)
            job = asyncio.get_running_loop().run_in_executor(self._thread, call)
        except BaseException:
            self._turn.release()
            raise
        job.add_done_callback(self._job_done)
        return await asyncio.shield(job)  # a cancelled caller leaves the job to finish

    async def aclose(self) -> None:
        """Wait for the transaction under way, close the connection, stop the thread."""
        async with self._turn:
            if self._closed:
                return
            self._closed = True
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(self._thread, self._engine.dispose)
            finally:
                self._thread.shutdown(wait=False)

    async def _take_turn(self) -> None:
        try:
            async with asyncio.timeout(self._busy_timeout_s):
                await self._turn.acquire()
        except TimeoutError:
            raise StoreUnavailableError(
                "the run store is unavailable (database is locked)"
            ) from None

    def _in_transaction(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        with self._engine.connect() as conn, conn.begin():
            return fn(conn, *args, **kwargs)

    def _job_done(self, job: asyncio.Future[Any]) -> None:
        self._turn.release()
        if not job.cancelled():
            job.exception()  # seen: a cancelled caller's failure is no "never retrieved"
