"""Alembic migrations of the run store; run them with `conclave.store.migrate.upgrade`."""
