"""API keys: one row per key, holding its keyed hash (never the key).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create ``api_keys``."""
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("expires_ms", sa.BigInteger),
        sa.Column("revoked_ms", sa.BigInteger),
        sa.Column("rotated_from", sa.String(16)),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.CheckConstraint("scope IN ('read', 'run', 'admin')", name="ck_api_keys_scope"),
    )


def downgrade() -> None:
    """Drop ``api_keys``."""
    op.drop_table("api_keys")
