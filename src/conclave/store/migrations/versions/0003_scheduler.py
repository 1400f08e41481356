"""Scheduler: jobs added through the API, and one claim row per (job, slot).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Create ``scheduler_jobs`` and ``scheduled_slots`` (unique per job and slot)."""
    op.create_table(
        "scheduler_jobs",
        sa.Column("job_id", sa.String(128), nullable=False),
        sa.Column("account_id", sa.String(64)),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("timeframe", sa.String(8), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("job_id", name="pk_scheduler_jobs"),
    )
    op.create_table(
        "scheduled_slots",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(128), nullable=False),
        sa.Column("slot_ms", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("missed", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("run_id", sa.String(64)),
        sa.Column("error", sa.Text),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name="pk_scheduled_slots"),
        sa.UniqueConstraint("job_id", "slot_ms", name="uq_scheduled_slots_job_id_slot_ms"),
        sa.CheckConstraint(
            "status IN ('pending', 'ok', 'failed')", name="ck_scheduled_slots_status"
        ),
    )
    op.create_index(
        "ix_scheduled_slots_job_id_status_slot_ms",
        "scheduled_slots",
        ["job_id", "status", "slot_ms"],
    )


def downgrade() -> None:
    """Drop both tables."""
    op.drop_index("ix_scheduled_slots_job_id_status_slot_ms", table_name="scheduled_slots")
    op.drop_table("scheduled_slots")
    op.drop_table("scheduler_jobs")
