"""G1-G4: an Idempotency-Key maps to exactly one run; claims are safe under concurrency;
a claim left by a crash is abandoned, never run twice."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import text

from conclave.errors import InvalidRequestError, StoreRejectedError
from conclave.store import IdempotencyClaim, RunStore
from conclave.store.idempotency import ABANDONED_REASON, abandon_stale_keys
from tests.store.conftest import Target, fresh, rows_of


async def test_new_then_in_progress_then_replay_and_conflict(
    store: RunStore, sim_wire: dict[str, Any]
) -> None:
    """The first claim owns the key; the same request waits (409) until the run is saved,
    then replays its run; another body under the key is a conflict (422)."""
    assert await store.claim_idempotency_key("k1", "h1") == IdempotencyClaim("new")
    assert await store.claim_idempotency_key("k1", "h1") == IdempotencyClaim("in_progress")
    assert await store.claim_idempotency_key("k1", "h2") == IdempotencyClaim("conflict")
    wire = fresh(sim_wire)
    await store.save_run(wire, idempotency_key="k1", request_hash="h1")
    replay = IdempotencyClaim("replay", wire["runId"])
    assert await store.claim_idempotency_key("k1", "h1") == replay
    assert await store.claim_idempotency_key("k1", "h2") == IdempotencyClaim("conflict")
    assert await store.get_run(wire["runId"]) == wire


async def test_a_released_key_can_be_claimed_again(store: RunStore) -> None:
    """A run that failed before it was saved gives its key back."""
    assert (await store.claim_idempotency_key("k2", "h")).kind == "new"
    await store.release_idempotency_key("k2")
    assert (await store.claim_idempotency_key("k2", "h")).kind == "new"


async def test_complete_separately_then_release_leaves_the_key_done(
    store: RunStore, sim_wire: dict[str, Any]
) -> None:
    """complete_idempotency_key points the key at a saved run; release cannot undo it."""
    wire = fresh(sim_wire)
    assert (await store.claim_idempotency_key("k3", "h")).kind == "new"
    await store.save_run(wire)
    await store.complete_idempotency_key("k3", wire["runId"])
    await store.release_idempotency_key("k3")
    assert await store.claim_idempotency_key("k3", "h") == IdempotencyClaim("replay", wire["runId"])


async def test_a_key_never_claimed_is_recorded_by_save_and_never_reused(
    store: RunStore, sim_wire: dict[str, Any]
) -> None:
    """save_run with an unclaimed key completes it; a second run under it is refused whole."""
    first, second = fresh(sim_wire), fresh(sim_wire)
    await store.save_run(first, idempotency_key="k4", request_hash="h")
    with pytest.raises(StoreRejectedError):
        await store.save_run(second, idempotency_key="k4", request_hash="h")
    assert await store.get_run(second["runId"]) is None
    replay = IdempotencyClaim("replay", first["runId"])
    assert await store.claim_idempotency_key("k4", "h") == replay


async def test_a_stale_claim_is_abandoned_never_run_again_and_the_late_owner_cannot_save(
    target: Target, store: RunStore, sim_wire: dict[str, Any]
) -> None:
    """G4: past the staleness limit a pending claim is closed as ``abandoned`` with its
    reason, not taken over: every later claim of the key answers ``abandoned`` (0 second
    executions), and the original owner's late save is refused and rolled back."""
    late = await target.open(stale_claim_s=0.0)
    try:
        assert (await store.claim_idempotency_key("k5", "h")).kind == "new"
        assert await late.claim_idempotency_key("k5", "h") == IdempotencyClaim("abandoned")
        assert await late.claim_idempotency_key("k5", "h") == IdempotencyClaim("abandoned")
        assert await store.claim_idempotency_key("k5", "h") == IdempotencyClaim("abandoned")
        assert (await store.claim_idempotency_key("k5", "h2")).kind == "conflict"
        original = fresh(sim_wire)
        with pytest.raises(StoreRejectedError):
            await store.save_run(original, idempotency_key="k5", request_hash="h")
        assert (await rows_of(store, original["runId"]))["runs"] == 0
        await store.release_idempotency_key("k5")  # the late owner's release is a no-op
        async with store.engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT state, reason, run_id, completed_at FROM idempotency_keys"
                         " WHERE idem_key = 'k5'")
                )
            ).one()  # fmt: skip
        assert row.state == "abandoned"
        assert row.reason == ABANDONED_REASON
        assert row.run_id is None
        assert row.completed_at is not None
    finally:
        await late.aclose()


async def test_the_sweep_abandons_only_stale_pending_claims(
    target: Target, store: RunStore, sim_wire: dict[str, Any]
) -> None:
    """G4: `abandon_stale_keys` closes pending claims past the limit, once, and leaves
    fresh claims, completed keys and claims younger than the limit alone."""
    assert (await store.claim_idempotency_key("old", "h")).kind == "new"
    done = fresh(sim_wire)
    await store.save_run(done, idempotency_key="done", request_hash="h")
    await asyncio.sleep(0.3)
    assert (await store.claim_idempotency_key("young", "h")).kind == "new"
    async with store.engine.connect() as conn, conn.begin():
        assert await abandon_stale_keys(conn, stale_after_s=0.25) == ["old"]
    async with store.engine.connect() as conn, conn.begin():
        assert await abandon_stale_keys(conn, stale_after_s=0.25) == []  # closed once
    assert await store.claim_idempotency_key("old", "h") == IdempotencyClaim("abandoned")
    assert await store.claim_idempotency_key("young", "h") == IdempotencyClaim("in_progress")
    assert await store.claim_idempotency_key("done", "h") == IdempotencyClaim(
        "replay", done["runId"]
    )


async def test_twenty_concurrent_claims_of_one_key_give_exactly_one_owner(
    store: RunStore,
) -> None:
    """20 claims racing on separate connections: one new, nineteen in_progress."""
    claims = await asyncio.gather(*(store.claim_idempotency_key("k6", "h") for _ in range(20)))
    assert Counter(c.kind for c in claims) == {"new": 1, "in_progress": 19}


async def test_twenty_concurrent_claims_from_two_stores_give_exactly_one_owner(
    target: Target, store: RunStore
) -> None:
    """The same race across two engines (two connection pools, as two processes have)."""
    other = await target.open()
    try:
        claims = await asyncio.gather(
            *(s.claim_idempotency_key("k7", "h") for s in [store, other] * 10)
        )
    finally:
        await other.aclose()
    assert Counter(c.kind for c in claims) == {"new": 1, "in_progress": 19}


@pytest.mark.parametrize("key", ["", "k" * 256])
async def test_an_empty_or_overlong_key_is_a_bad_request(store: RunStore, key: str) -> None:
    """Keys of 0 or more than 255 characters are refused before any I/O."""
    with pytest.raises(InvalidRequestError):
        await store.claim_idempotency_key(key, "h")
