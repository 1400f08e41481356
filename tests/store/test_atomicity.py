"""D7: a run, its steps, its decision (and its idempotency key) land together or not at all."""

from __future__ import annotations

from typing import Any

import pytest

from conclave.errors import StoreRejectedError
from conclave.store import RunStore, run_writes
from tests.store.conftest import fresh, rows_of

NONE = {"runs": 0, "run_steps": 0, "decisions": 0, "idempotency_keys": 0}


async def test_a_step_breaking_a_constraint_leaves_no_row_of_the_run(
    store: RunStore, sim_wire: dict[str, Any]
) -> None:
    """The 9th step's score 7 breaks the score CHECK after the run row is in: 0 rows stay."""
    wire = fresh(sim_wire)
    wire["steps"]["risk-manager"]["score"] = 7.0
    with pytest.raises(StoreRejectedError):
        await store.save_run(wire)
    assert await rows_of(store, wire["runId"]) == NONE
    assert await store.list_runs() == ([], 0)


async def test_a_decision_breaking_a_constraint_leaves_no_row_of_the_run(
    store: RunStore, sim_wire: dict[str, Any]
) -> None:
    """A decision without a reason (NOT NULL) fails after run and steps: 0 rows stay."""
    wire = fresh(sim_wire)
    wire["decision"]["reason"] = None
    with pytest.raises(StoreRejectedError):
        await store.save_run(wire)
    assert await rows_of(store, wire["runId"]) == NONE


async def test_a_crash_after_every_insert_rolls_everything_back(
    store: RunStore, sim_wire: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error raised after run, steps and decision are written (while completing the
    idempotency key) leaves no row, and the key stays claimed, not completed."""

    def explode(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("injected failure after the inserts")

    claim = await store.claim_idempotency_key("k-d7", "h1")
    assert claim.kind == "new"
    monkeypatch.setattr(run_writes, "complete_key", explode)
    wire = fresh(sim_wire)
    with pytest.raises(RuntimeError, match="injected"):
        await store.save_run(wire, idempotency_key="k-d7", request_hash="h1")
    assert await rows_of(store, wire["runId"]) == NONE
    assert (await store.claim_idempotency_key("k-d7", "h1")).kind == "in_progress"
    monkeypatch.undo()
    await store.save_run(wire, idempotency_key="k-d7", request_hash="h1")
    assert await rows_of(store, wire["runId"]) == {
        "runs": 1, "run_steps": 9, "decisions": 1, "idempotency_keys": 1,
    }  # fmt: skip


async def test_a_non_finite_number_in_a_payload_is_refused_whole(
    store: RunStore, sim_wire: dict[str, Any]
) -> None:
    """NaN deep in a step's payload cannot be stored as JSON: refused, 0 rows of the run."""
    wire = fresh(sim_wire)
    wire["steps"]["statistical-edge"]["payload"]["nested"] = {"x": [1.0, float("nan")]}
    with pytest.raises(StoreRejectedError):
        await store.save_run(wire)
    assert await rows_of(store, wire["runId"]) == NONE
