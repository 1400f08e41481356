"""A step with status no_data is stored and read back as it was (SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from conclave.store import RunStore
from tests.store.conftest import fresh


async def test_a_no_data_step_round_trips(store: RunStore, sim_wire: dict[str, Any]) -> None:
    """The simulated run has no news source: news-sentiment's step is no_data with its
    reason and null values; the row keeps the status, the read-back step is identical, and
    the decision names it no_data in its contributions and not among the missing."""
    wire = fresh(sim_wire)
    news = wire["steps"]["news-sentiment"]
    assert news["meta"]["status"] == "no_data"
    assert (news["score"], news["confidence"]) == (None, None)
    await store.save_run(wire)
    back = await store.get_run(wire["runId"])
    assert back is not None
    assert back["steps"] == wire["steps"]
    assert back["steps"]["news-sentiment"]["meta"]["reason"] == "no news source configured"
    assert back["decision"]["contributions"]["news-sentiment"]["status"] == "no_data"
    assert "news-sentiment" not in back["missingAgents"]
    async with store.engine.connect() as conn:
        row = await conn.execute(
            text("SELECT status FROM run_steps WHERE run_id = :r AND agent = :a"),
            {"r": wire["runId"], "a": "news-sentiment"},
        )
        assert row.scalar_one() == "no_data"
