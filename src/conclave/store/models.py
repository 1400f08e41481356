"""The store's tables: runs, steps, decisions (append-only), idempotency keys, paper accounts.

A run is one row in ``runs`` (what was asked, the decision's status and action, degraded and
missing agents for filtering), one row per agent in ``run_steps`` and one row in
``decisions``. JSON columns hold what has no fixed shape (payload, meta, contributions);
``extra`` keeps any wire key this schema does not know yet, so a stored run reads back
exactly as it was saved. ``idempotency_keys`` maps an ``Idempotency-Key`` to the hash of the
request that claimed it and, once saved, to its run (RELIABILITY.md G1-G3); a claim whose
process died before saving ends ``abandoned`` with its ``reason`` (G4, migration 0005).

The migrations under ``migrations/versions`` create exactly these tables; a test compares
them so the two cannot drift.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

#: 64-bit ids on PostgreSQL; SQLite autoincrements only an INTEGER primary key.
RowId = BigInteger().with_variant(Integer(), "sqlite")

#: Idempotency-Key values longer than this are refused before any I/O.
MAX_KEY_LENGTH = 255

runs = Table(
    "runs",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("run_id", String(64), nullable=False, unique=True),
    Column("account_id", String(128)),
    Column("symbol", String(32), nullable=False),
    Column("timeframe", String(8), nullable=False),
    Column("as_of", String(32), nullable=False),
    Column("simulated", Boolean, nullable=False),
    Column("source", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("action", String(16)),
    Column("degraded", Boolean, nullable=False),
    Column("missing_agents", JSON, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("extra", JSON),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index(None, "symbol", "id"),
    Index(None, "account_id", "id"),
    Index(None, "status", "id"),
)

run_steps = Table(
    "run_steps",
    metadata,
    Column("run_id", String(64), ForeignKey("runs.run_id"), primary_key=True),
    Column("agent", String(64), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("status", String(24), nullable=False),
    Column("score", Float),
    Column("confidence", Float),
    Column("payload", JSON, nullable=False),
    Column("meta", JSON, nullable=False),
    Column("extra", JSON),
    CheckConstraint("score IS NULL OR (score >= -1 AND score <= 1)", name="score_range"),
    CheckConstraint(
        "confidence IS NULL OR (confidence >= 0 AND confidence <= 100)", name="confidence_range"
    ),
)

decisions = Table(
    "decisions",
    metadata,
    Column("run_id", String(64), ForeignKey("runs.run_id"), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("action", String(16)),
    Column("strength", Float),
    Column("conviction", Float),
    Column("confidence", Float),
    Column("size_multiplier", Float),
    Column("tradable", Boolean, nullable=False),
    Column("degraded", Boolean, nullable=False),
    Column("missing_agents", JSON, nullable=False),
    Column("reason", Text, nullable=False),
    Column("quorum", JSON),
    Column("contributions", JSON, nullable=False),
    Column("extra", JSON),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("idem_key", String(MAX_KEY_LENGTH), primary_key=True),
    Column("request_hash", String(128), nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("run_id", String(64), ForeignKey("runs.run_id")),
    Column("claimed_at", DateTime(timezone=True), nullable=False),
    Column("completed_at", DateTime(timezone=True)),
    Column("reason", Text),
    CheckConstraint("state IN ('pending', 'completed', 'abandoned')", name="state"),
)

# -- paper accounts (migration 0002) -----------------------------------------------------
#
# ``accounts`` holds one paper account: its terms (quote currency, fee rate, slippage,
# ``config`` = per-account sizing limits and risk levels), its cash and its status
# (``active``, ``paused`` by hand, ``halted`` by the risk rules) with the streak-guard and
# cooldown deadlines; ``risk_since_ms`` is where a manual resume restarted the peak.
# ``account_runs`` makes processing a run idempotent per account; ``orders`` are at most
# one per (account, run); ``equity_points`` one per (account, bar time); ``risk_events``
# record every halt, pause and resume with its reason.

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("quote", String(16), nullable=False),
    Column("starting_balance", Float, nullable=False),
    Column("fee_rate", Float, nullable=False),
    Column("slippage", Float, nullable=False),
    Column("config", JSON, nullable=False),
    Column("cash", Float, nullable=False),
    Column("status", String(16), nullable=False),
    Column("status_reason", Text, nullable=False),
    Column("loss_streak", Integer, nullable=False),
    Column("paused_until_ms", BigInteger),
    Column("cooldown_until_ms", BigInteger),
    Column("risk_since_ms", BigInteger),
    Column("created_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("status IN ('active', 'paused', 'halted')", name="status"),
)

account_runs = Table(
    "account_runs",
    metadata,
    Column("account_id", String(64), ForeignKey("accounts.id"), primary_key=True),
    Column("run_id", String(64), primary_key=True),
    Column("t_ms", BigInteger, nullable=False),
    Column("outcome", JSON, nullable=False),
)

orders = Table(
    "orders",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("account_id", String(64), ForeignKey("accounts.id"), nullable=False),
    Column("run_id", String(64), nullable=False),
    Column("symbol", String(32), nullable=False),
    Column("timeframe", String(8), nullable=False),
    Column("side", String(4), nullable=False),
    Column("status", String(16), nullable=False),
    Column("decision_open_ms", BigInteger, nullable=False),
    Column("notional", Float, nullable=False),
    Column("size_multiplier", Float, nullable=False),
    Column("qty", Float),
    Column("price", Float),
    Column("fee", Float),
    Column("realised_pnl", Float),
    Column("fill_open_ms", BigInteger),
    Column("reason", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("account_id", "run_id"),
    Index(None, "account_id", "status"),
    CheckConstraint("side IN ('BUY', 'SELL')", name="side"),
    CheckConstraint("status IN ('pending', 'filled', 'cancelled')", name="status"),
)

positions = Table(
    "positions",
    metadata,
    Column("account_id", String(64), ForeignKey("accounts.id"), primary_key=True),
    Column("symbol", String(32), primary_key=True),
    Column("qty", Float, nullable=False),
    Column("avg_cost", Float, nullable=False),
    Column("realised_pnl", Float, nullable=False),
    Column("last_price", Float, nullable=False),
    Column("last_t_ms", BigInteger, nullable=False),
)

equity_points = Table(
    "equity_points",
    metadata,
    Column("account_id", String(64), ForeignKey("accounts.id"), primary_key=True),
    Column("t_ms", BigInteger, primary_key=True),
    Column("equity", Float, nullable=False),
    Column("cash", Float, nullable=False),
    Column("exposure", Float, nullable=False),
)

risk_events = Table(
    "risk_events",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("account_id", String(64), ForeignKey("accounts.id"), nullable=False),
    Column("t_ms", BigInteger, nullable=False),
    Column("kind", String(24), nullable=False),
    Column("source", String(8), nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index(None, "account_id", "id"),
)

# -- scheduler (migration 0003) ------------------------------------------------------------
#
# ``scheduler_jobs`` holds the jobs added through the API (those from settings are not
# stored). ``scheduled_slots`` records each (job, slot) the scheduler claimed: the unique
# constraint on the pair is what makes a slot run exactly once across processes (H1);
# ``missed`` is how many earlier slots a catch-up run replaced (H3), ``attempts`` how many
# scheduler instances tried to claim the slot; a slot whose scheduler died mid-run ends
# ``abandoned`` with the reason in ``error`` (G4, migration 0005).

scheduler_jobs = Table(
    "scheduler_jobs",
    metadata,
    Column("job_id", String(128), primary_key=True),
    Column("account_id", String(64)),
    Column("symbol", String(32), nullable=False),
    Column("timeframe", String(8), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)

scheduled_slots = Table(
    "scheduled_slots",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("job_id", String(128), nullable=False),
    Column("slot_ms", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("missed", Integer, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("run_id", String(64)),
    Column("error", Text),
    Column("claimed_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    UniqueConstraint("job_id", "slot_ms"),
    CheckConstraint("status IN ('pending', 'ok', 'failed', 'abandoned')", name="status"),
    Index(None, "job_id", "status", "slot_ms"),
)

# -- API keys (migration 0004) -------------------------------------------------------------
#
# ``api_keys`` holds one row per API key (`conclave.security.keys`): never the key, only its
# HMAC-SHA256 under the server's key hashing secret. The id is part of the key, so a
# request's key is found by primary key. Times are ms since the epoch (UTC), from the
# caller's clock, so expiry and rotation overlaps are testable with a fake one.

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("scope", String(8), nullable=False),
    Column("key_hash", String(64), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger),
    Column("revoked_ms", BigInteger),
    Column("rotated_from", String(16)),
    CheckConstraint("scope IN ('read', 'run', 'admin')", name="scope"),
)
