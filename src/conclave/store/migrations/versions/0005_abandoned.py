"""Crash recovery (G4): slots and idempotency keys can end ``abandoned``, with a reason.

A scheduler or orchestrator killed mid-run leaves its claim ``pending``. Such a claim is
closed as ``abandoned`` (never run again): this revision allows that state on
``scheduled_slots.status`` and ``idempotency_keys.state`` and gives the keys a ``reason``
column (slots keep theirs in ``error``). Batch mode rebuilds the tables on SQLite, which
cannot alter a CHECK constraint in place.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

_SLOTS_CK = "ck_scheduled_slots_status"
_KEYS_CK = "ck_idempotency_keys_state"


def upgrade() -> None:
    """Allow ``abandoned`` on slots and keys; add ``idempotency_keys.reason``."""
    with op.batch_alter_table("scheduled_slots") as batch:
        batch.drop_constraint(_SLOTS_CK, type_="check")
        batch.create_check_constraint(
            _SLOTS_CK, "status IN ('pending', 'ok', 'failed', 'abandoned')"
        )
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.add_column(sa.Column("reason", sa.Text))
        batch.drop_constraint(_KEYS_CK, type_="check")
        batch.create_check_constraint(_KEYS_CK, "state IN ('pending', 'completed', 'abandoned')")


def downgrade() -> None:
    """Back to 0004 (abandoned rows must be gone first: the old constraints refuse them)."""
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.drop_constraint(_KEYS_CK, type_="check")
        batch.create_check_constraint(_KEYS_CK, "state IN ('pending', 'completed')")
        batch.drop_column("reason")
    with op.batch_alter_table("scheduled_slots") as batch:
        batch.drop_constraint(_SLOTS_CK, type_="check")
        batch.create_check_constraint(_SLOTS_CK, "status IN ('pending', 'ok', 'failed')")
