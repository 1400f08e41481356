"""The run store's contract, the same on SQLite and PostgreSQL: exact round trips, listing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conclave.errors import InvalidRequestError, StoreRejectedError
from conclave.store import RunStore
from tests.store.conftest import Target, fresh, no_signal_wire, rows_of


async def test_a_real_sim_run_reads_back_exactly_as_saved(
    store: RunStore, sim_wire: dict[str, Any]
) -> None:
    """get_run returns the saved wire dict: equal values, same key order, same JSON text."""
    wire = fresh(sim_wire)
    await store.save_run(wire)
    back = await store.get_run(wire["runId"])
    assert back == wire
    assert json.dumps(back) == json.dumps(wire)
    assert len(back["steps"]) == 9
    assert await rows_of(store, wire["runId"]) == {
        "runs": 1, "run_steps": 9, "decisions": 1, "idempotency_keys": 0,
    }  # fmt: skip


async def test_failed_steps_nulls_and_unknown_keys_survive_the_round_trip(store: RunStore) -> None:
    """A no_signal run (null scores, null action) and keys the schema does not know."""
    wire = no_signal_wire()
    wire["futureField"] = {"nested": [1, 2.5, None]}
    wire["steps"]["momentum"]["trace"] = "abc"
    wire["decision"]["explain"] = ["x"]
    await store.save_run(wire)
    back = await store.get_run(wire["runId"])
    assert back == wire
    assert back is not None
    assert back["decision"]["action"] is None
    assert back["accountId"] is None
    assert all(s["score"] is None for s in back["steps"].values())


async def test_an_unknown_run_is_none(store: RunStore) -> None:
    """Empty means none exist: an unknown id reads as None, not an error."""
    assert await store.get_run("no-such-run") is None


async def test_saving_a_run_id_twice_is_refused_and_keeps_the_first(
    store: RunStore, sim_wire: dict[str, Any]
) -> None:
    """Runs are append-only: a second save of the same id fails and changes nothing."""
    wire = fresh(sim_wire)
    await store.save_run(wire)
    changed = dict(wire, symbol="ETHUSDT")
    with pytest.raises(StoreRejectedError) as info:
        await store.save_run(changed)
    assert "INSERT" not in str(info.value)
    assert await store.get_run(wire["runId"]) == wire
    assert (await rows_of(store, wire["runId"]))["run_steps"] == 9


async def test_a_wire_dict_without_its_keys_is_refused_before_any_write(
    store: RunStore, sim_wire: dict[str, Any]
) -> None:
    """A dict lacking what the schema needs raises ValueError and writes nothing."""
    wire = fresh(sim_wire)
    del wire["decision"]["status"]
    with pytest.raises(ValueError, match=r"decision lacks status"):
        await store.save_run(wire)
    assert await store.get_run(wire["runId"]) is None


async def test_list_filters_paginates_newest_first_and_counts(
    store: RunStore, sim_wire: dict[str, Any]
) -> None:
    """Filters by account, symbol and status; newest first; the total ignores the page."""
    saved = []
    for i in range(6):
        wire = fresh(sim_wire, accountId="a" if i % 2 else "b",
                     symbol="BTCUSDT" if i < 4 else "ETHUSDT")  # fmt: skip
        await store.save_run(wire)
        saved.append(wire)
    no_signal = no_signal_wire()
    await store.save_run(no_signal)
    saved.append(no_signal)
    newest_first = [w["runId"] for w in reversed(saved)]

    items, total = await store.list_runs()
    assert total == 7
    assert [i["runId"] for i in items] == newest_first
    page, total = await store.list_runs(limit=3, offset=2)
    assert total == 7
    assert [i["runId"] for i in page] == newest_first[2:5]
    assert (await store.list_runs(limit=3, offset=7)) == ([], 7)

    accounts, total = await store.list_runs(account_id="a")
    assert total == 3
    assert all(i["accountId"] == "a" for i in accounts)
    eth, total = await store.list_runs(symbol="ETHUSDT")
    assert total == 3
    assert {i["symbol"] for i in eth} == {"ETHUSDT"}
    both, total = await store.list_runs(account_id="b", symbol="BTCUSDT", limit=1)
    assert total == 2
    assert len(both) == 1
    failed, total = await store.list_runs(status="no_signal")
    assert total == 1
    assert failed[0]["runId"] == no_signal["runId"]
    assert failed[0]["degraded"] is True
    assert failed[0]["action"] is None
    assert failed[0]["missingAgents"] == no_signal["missingAgents"]

    first = items[-1]
    assert set(first) == {"runId", "accountId", "symbol", "timeframe", "asOf", "createdAt",
                          "status", "degraded", "missingAgents", "action"}  # fmt: skip
    assert first["status"] == sim_wire["decision"]["status"]
    assert first["action"] == sim_wire["decision"]["action"]
    assert first["createdAt"].endswith("Z")
    assert len(first["createdAt"]) == 24


@pytest.mark.parametrize(("limit", "offset"), [(0, 0), (501, 0), (10, -1)])
async def test_a_bad_page_is_refused(store: RunStore, limit: int, offset: int) -> None:
    """limit outside 1..500 or a negative offset is a bad request, not a query."""
    with pytest.raises(InvalidRequestError):
        await store.list_runs(limit=limit, offset=offset)


async def test_health_names_the_backend(store: RunStore, target: Target) -> None:
    """health answers ok with the backend of the URL."""
    assert await store.health() == {"status": "ok", "backend": target.backend,
                                    "detail": "reachable"}  # fmt: skip
