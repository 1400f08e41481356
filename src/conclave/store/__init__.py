"""The run store: pipeline runs, their steps and decisions, idempotency keys.

SQLite in ``data/conclave.db`` by default (WAL, busy timeout, ``BEGIN IMMEDIATE`` writes),
PostgreSQL when ``DATABASE_URL`` names one; Alembic migrations run to head on open.

    store = await RunStore.open(settings.database_url, data_dir=settings.data_dir)
    await store.save_run(run.to_wire())
"""

from __future__ import annotations

from conclave.errors import StoreRejectedError, StoreUnavailableError
from conclave.store.idempotency import IdempotencyClaim
from conclave.store.repository import RunStore

__all__ = ["IdempotencyClaim", "RunStore", "StoreRejectedError", "StoreUnavailableError"]
