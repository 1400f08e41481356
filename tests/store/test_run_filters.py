"""`RunStore.list_runs` filtered by timeframe and by degraded (issue 14, the Runs page's
filters), on SQLite and PostgreSQL: each filter alone, both together, with the other filters,
and the total counting every match, not the page."""

from __future__ import annotations

from typing import Any

from conclave.store import RunStore
from tests.store.conftest import fresh, no_signal_wire


def _expected(saved: list[dict[str, Any]], **match: Any) -> list[str]:
    """The run ids of ``saved`` (oldest first) whose fields equal ``match``, newest first."""
    return [w["runId"] for w in reversed(saved) if all(w[k] == v for k, v in match.items())]


async def test_list_runs_filters_by_timeframe_and_degraded(
    store: RunStore, sim_wire: dict[str, Any]
) -> None:
    saved = [
        fresh(sim_wire, timeframe="1h", degraded=False, missingAgents=[]),
        fresh(sim_wire, timeframe="4h", degraded=False, missingAgents=[]),
        fresh(sim_wire, timeframe="1h", degraded=True, missingAgents=["news-sentiment"]),
        fresh(sim_wire, timeframe="1h", degraded=False, missingAgents=[], accountId="x"),
        no_signal_wire(),  # ETHUSDT 4h, degraded: every agent failed
    ]
    for wire in saved:
        await store.save_run(wire)

    cases: list[dict[str, Any]] = [
        {"timeframe": "1h"},
        {"timeframe": "4h"},
        {"timeframe": "1d"},
        {"degraded": True},
        {"degraded": False},
        {"timeframe": "4h", "degraded": True},
        {"timeframe": "1h", "degraded": False},
    ]
    for case in cases:
        items, total = await store.list_runs(**case)
        want = _expected(saved, **case)
        assert [i["runId"] for i in items] == want, case
        assert total == len(want), case
        assert all(i[k] == v for i in items for k, v in case.items()), case

    # with the other filters, and paged: the total still counts every match
    items, total = await store.list_runs(timeframe="1h", degraded=False, account_id="x")
    assert [i["runId"] for i in items] == [saved[3]["runId"]]
    assert total == 1
    page, total = await store.list_runs(degraded=False, limit=1, offset=1)
    assert total == len(_expected(saved, degraded=False)) == 3
    assert [i["runId"] for i in page] == _expected(saved, degraded=False)[1:2]
    # None is "any": the unfiltered list
    everything, total = await store.list_runs(timeframe=None, degraded=None)
    assert (len(everything), total) == (len(saved), len(saved))
