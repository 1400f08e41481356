"""The statements that write one run (`conclave.store.codec.RunRows`).

`insert_run` is the run, its steps (one executemany) and its decision, then the completion
of its idempotency key, inside the caller's transaction: the SQLite writer thread runs it
as one transaction (`conclave.store.sqlite_writer`), PostgreSQL through ``run_sync``.
`one_statement` is PostgreSQL's run without a key as ONE statement. Every statement is
built once and executed with bound parameters, so SQLAlchemy compiles it once, not once a
run.
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import bindparam, select, union_all
from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import Insert

from conclave.store import codec
from conclave.store.engine import Backend, utcnow
from conclave.store.idempotency import complete_key
from conclave.store.models import decisions, run_steps, runs

#: The run row stamped with the database's clock; every other column a bound parameter.
_INSERT_RUN = runs.insert().values(created_at=utcnow())
_INSERT_STEPS = run_steps.insert()
_INSERT_DECISION = decisions.insert()


def insert_run(
    conn: Connection,
    rows: codec.RunRows,
    key: str | None,
    *,
    request_hash: str | None,
    attempt: int | None,
    backend: Backend,
) -> None:
    """Insert the run, its steps (one executemany) and its decision, and complete ``key``
    (when given, of the claim's ``attempt``), inside the caller's transaction."""
    conn.execute(_INSERT_RUN, rows.run)
    if rows.steps:
        conn.execute(_INSERT_STEPS, rows.steps)
    conn.execute(_INSERT_DECISION, rows.decision)
    if key is not None:
        complete_key(conn, key, rows.run_id, request_hash=request_hash, attempt=attempt,
                     backend=backend)  # fmt: skip


def one_statement(rows: codec.RunRows) -> tuple[Insert, dict[str, Any]] | None:
    """The run, its steps and its decision as ONE PostgreSQL statement, and its parameters;
    None when the steps do not all have the same columns (then they are written one
    statement each, in a transaction).

    The run and the steps are data-modifying CTEs of the decision's INSERT. A single
    statement is atomic on its own (D7) and its foreign keys are checked at its end, so it
    needs no BEGIN and no COMMIT: one round trip to the server instead of five. The
    statement is built once per shape (columns, step count) from bound parameters, so
    SQLAlchemy compiles it once, not once a run."""
    step_cols = tuple(rows.steps[0]) if rows.steps else ()
    if any(step.keys() != rows.steps[0].keys() for step in rows.steps):
        return None
    params = {f"r_{k}": v for k, v in rows.run.items()}
    params.update({f"d_{k}": v for k, v in rows.decision.items()})
    for i, step in enumerate(rows.steps):
        params.update({f"s{i}_{k}": v for k, v in step.items()})
    shape = (tuple(rows.run), tuple(rows.decision), step_cols, len(rows.steps))
    return _shaped_statement(*shape), params


@functools.lru_cache(maxsize=64)
def _shaped_statement(
    run_cols: tuple[str, ...], decision_cols: tuple[str, ...], step_cols: tuple[str, ...], n: int
) -> Insert:
    def bound(table: Any, prefix: str, cols: tuple[str, ...]) -> dict[str, Any]:
        return {c: bindparam(f"{prefix}{c}", type_=table.c[c].type) for c in cols}

    new_run = runs.insert().values(**bound(runs, "r_", run_cols), created_at=utcnow())
    ctes = [new_run.cte("new_run")]
    if n:  # INSERT ... SELECT ... UNION ALL ...: SQLAlchemy never caches a multi-row VALUES
        selects = [select(*bound(run_steps, f"s{i}_", step_cols).values()) for i in range(n)]
        source = selects[0] if n == 1 else union_all(*selects)
        ctes.append(run_steps.insert().from_select(list(step_cols), source).cte("new_steps"))
    return decisions.insert().values(**bound(decisions, "d_", decision_cols)).add_cte(*ctes)
