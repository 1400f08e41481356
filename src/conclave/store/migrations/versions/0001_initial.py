"""Runs, their steps and decisions, idempotency keys.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Create the four tables and their indexes."""
    op.create_table(
        "runs",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("account_id", sa.String(128)),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("timeframe", sa.String(8), nullable=False),
        sa.Column("as_of", sa.String(32), nullable=False),
        sa.Column("simulated", sa.Boolean, nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("action", sa.String(16)),
        sa.Column("degraded", sa.Boolean, nullable=False),
        sa.Column("missing_agents", sa.JSON, nullable=False),
        sa.Column("duration_ms", sa.Float, nullable=False),
        sa.Column("extra", sa.JSON),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.UniqueConstraint("run_id", name="uq_runs_run_id"),
    )
    op.create_index("ix_runs_symbol_id", "runs", ["symbol", "id"])
    op.create_index("ix_runs_account_id_id", "runs", ["account_id", "id"])
    op.create_index("ix_runs_status_id", "runs", ["status", "id"])
    op.create_table(
        "run_steps",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("agent", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("score", sa.Float),
        sa.Column("confidence", sa.Float),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("meta", sa.JSON, nullable=False),
        sa.Column("extra", sa.JSON),
        sa.PrimaryKeyConstraint("run_id", "agent", name="pk_run_steps"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.run_id"], name="fk_run_steps_run_id_runs"),
        sa.CheckConstraint(
            "score IS NULL OR (score >= -1 AND score <= 1)", name="ck_run_steps_score_range"
        ),
        sa.CheckConstraint(
            "confidence IS NULL OR (confidence >= 0 AND confidence <= 100)",
            name="ck_run_steps_confidence_range",
        ),
    )
    op.create_table(
        "decisions",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("action", sa.String(16)),
        sa.Column("strength", sa.Float),
        sa.Column("conviction", sa.Float),
        sa.Column("confidence", sa.Float),
        sa.Column("size_multiplier", sa.Float),
        sa.Column("tradable", sa.Boolean, nullable=False),
        sa.Column("degraded", sa.Boolean, nullable=False),
        sa.Column("missing_agents", sa.JSON, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("quorum", sa.JSON),
        sa.Column("contributions", sa.JSON, nullable=False),
        sa.Column("extra", sa.JSON),
        sa.PrimaryKeyConstraint("run_id", name="pk_decisions"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.run_id"], name="fk_decisions_run_id_runs"),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("idem_key", sa.String(255), nullable=False),
        sa.Column("request_hash", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("run_id", sa.String(64)),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("idem_key", name="pk_idempotency_keys"),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.run_id"], name="fk_idempotency_keys_run_id_runs"
        ),
        sa.CheckConstraint("state IN ('pending', 'completed')", name="ck_idempotency_keys_state"),
    )


def downgrade() -> None:
    """Drop the tables (children first)."""
    op.drop_table("idempotency_keys")
    op.drop_table("decisions")
    op.drop_table("run_steps")
    op.drop_index("ix_runs_status_id", table_name="runs")
    op.drop_index("ix_runs_account_id_id", table_name="runs")
    op.drop_index("ix_runs_symbol_id", table_name="runs")
    op.drop_table("runs")
