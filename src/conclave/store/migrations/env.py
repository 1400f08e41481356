"""Alembic environment: migrate the connection `conclave.store.migrate` hands over.

There is no ``alembic.ini`` and no URL here: the caller opens the connection (with its
SQLite pragmas or PostgreSQL search path), starts the transaction and passes the
connection in ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from conclave.store.models import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the migrations through conclave.store.migrate.upgrade")

context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
