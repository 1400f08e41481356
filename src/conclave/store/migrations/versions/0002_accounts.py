"""Paper accounts: accounts, processed runs, orders, positions, equity points, risk events.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["account_id"], ["accounts.id"], name=f"fk_{table}_account_id_accounts"
    )


def upgrade() -> None:
    """Create the six account tables (additive: 0001's tables are untouched)."""
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("quote", sa.String(16), nullable=False),
        sa.Column("starting_balance", sa.Float, nullable=False),
        sa.Column("fee_rate", sa.Float, nullable=False),
        sa.Column("slippage", sa.Float, nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("cash", sa.Float, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_reason", sa.Text, nullable=False),
        sa.Column("loss_streak", sa.Integer, nullable=False),
        sa.Column("paused_until_ms", sa.BigInteger),
        sa.Column("cooldown_until_ms", sa.BigInteger),
        sa.Column("risk_since_ms", sa.BigInteger),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_accounts"),
        sa.CheckConstraint("status IN ('active', 'paused', 'halted')", name="ck_accounts_status"),
    )
    op.create_table(
        "account_runs",
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("t_ms", sa.BigInteger, nullable=False),
        sa.Column("outcome", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("account_id", "run_id", name="pk_account_runs"),
        _fk("account_runs"),
    )
    op.create_table(
        "orders",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("timeframe", sa.String(8), nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("decision_open_ms", sa.BigInteger, nullable=False),
        sa.Column("notional", sa.Float, nullable=False),
        sa.Column("size_multiplier", sa.Float, nullable=False),
        sa.Column("qty", sa.Float),
        sa.Column("price", sa.Float),
        sa.Column("fee", sa.Float),
        sa.Column("realised_pnl", sa.Float),
        sa.Column("fill_open_ms", sa.BigInteger),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_orders"),
        sa.UniqueConstraint("account_id", "run_id", name="uq_orders_account_id_run_id"),
        _fk("orders"),
        sa.CheckConstraint("side IN ('BUY', 'SELL')", name="ck_orders_side"),
        sa.CheckConstraint("status IN ('pending', 'filled', 'cancelled')", name="ck_orders_status"),
    )
    op.create_index("ix_orders_account_id_status", "orders", ["account_id", "status"])
    op.create_table(
        "positions",
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("qty", sa.Float, nullable=False),
        sa.Column("avg_cost", sa.Float, nullable=False),
        sa.Column("realised_pnl", sa.Float, nullable=False),
        sa.Column("last_price", sa.Float, nullable=False),
        sa.Column("last_t_ms", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("account_id", "symbol", name="pk_positions"),
        _fk("positions"),
    )
    op.create_table(
        "equity_points",
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("t_ms", sa.BigInteger, nullable=False),
        sa.Column("equity", sa.Float, nullable=False),
        sa.Column("cash", sa.Float, nullable=False),
        sa.Column("exposure", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("account_id", "t_ms", name="pk_equity_points"),
        _fk("equity_points"),
    )
    op.create_table(
        "risk_events",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("t_ms", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_risk_events"),
        _fk("risk_events"),
    )
    op.create_index("ix_risk_events_account_id_id", "risk_events", ["account_id", "id"])


def downgrade() -> None:
    """Drop the account tables (children first)."""
    op.drop_index("ix_risk_events_account_id_id", table_name="risk_events")
    op.drop_table("risk_events")
    op.drop_table("equity_points")
    op.drop_table("positions")
    op.drop_index("ix_orders_account_id_status", table_name="orders")
    op.drop_table("orders")
    op.drop_table("account_runs")
    op.drop_table("accounts")
