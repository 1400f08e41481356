"""The Grafana dashboard in ``deploy/grafana/conclave.json`` (issue 11, item 7).

Its JSON must be importable (unique panel ids, a grid position each, every query on the
``datasource`` variable), its PromQL must parse (``promtool check rules``), and every metric
it names must be one the services export: read from their ``/metrics`` here, in process,
after a real run with one agent over HTTP and a scheduler pass. The same queries are run
against a real Prometheus scraping real processes in
``tests/observability/test_prometheus_scrape.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from conclave.observability.metrics import render
from conclave.services.agent_app import create_agent_app
from conclave.services.api import create_app
from conclave.services.execute import build_scheduler
from conclave.services.runtime import Runtime
from tests.conftest import need
from tests.observability.prom_helpers import (
    DASHBOARD,
    GRAFANA_BUILTINS,
    PROMETHEUS_SYNTHETIC,
    binaries_present,
    exported_names,
    is_exported,
    load_dashboard,
    metric_names,
    panel_queries,
    panels,
    promtool_check_exprs,
    to_promql,
    variable_queries,
    variables_used,
)
from tests.services.helpers import free_port, served
from tests.services.test_api import make_settings

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
HTTP_AGENT = "momentum"
RUN = {"symbol": "BTCUSDT", "timeframe": "1h"}
#: What the dashboard must show (issue 11 item 7): runs and decisions, agent latency and
#: errors, breakers, data staleness, exchange budget, scheduler lag, HTTP, processes.
REQUIRED = {
    "conclave_runs_total", "conclave_runs_degraded_total",
    "conclave_agent_call_duration_seconds_bucket", "conclave_agent_call_duration_seconds_count",
    "conclave_agent_breaker_state", "conclave_candle_age_seconds",
    "conclave_exchange_weight_used", "conclave_exchange_weight_limit",
    "conclave_exchange_throttled_responses_total",
    "conclave_exchange_paused_until_timestamp_seconds",
    "conclave_scheduler_slot_lag_seconds_bucket", "conclave_scheduler_slots_total",
    "conclave_http_request_duration_seconds_bucket",
    "conclave_http_request_duration_seconds_count", "conclave_http_requests_in_flight",
    "process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
}  # fmt: skip
#: Families with no series until something happens that the in-process run below does not
#: make happen: a Binance source (weight, throttling, pauses, clock) or a database error.
EVENT_ONLY = {
    "conclave_exchange_weight_used", "conclave_exchange_weight_limit",
    "conclave_exchange_throttled_responses_total",
    "conclave_exchange_paused_until_timestamp_seconds", "conclave_exchange_clock_skew_seconds",
    "conclave_db_errors_total",
}  # fmt: skip


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


def _queries(dashboard: dict[str, Any]) -> dict[str, str]:
    return panel_queries(dashboard) | {
        f"var_{k}": v for k, v in variable_queries(dashboard).items()
    }


# -- well-formed for Grafana ----------------------------------------------------------------


def test_dashboard_is_a_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    """Title, a stable uid, a recent schema version, no fixed id, and a ``datasource``
    variable of type datasource (Prometheus) that every query goes through."""
    assert dashboard["title"]
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dashboard["uid"])
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard.get("id") is None
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE, var["name"]


def test_panels_have_unique_ids_a_place_and_the_datasource(dashboard: dict[str, Any]) -> None:
    """Panel ids are unique; each panel has a gridPos inside the 24-column grid, none
    overlap; every non-row panel and each of its targets uses the datasource variable, with
    unique refIds and a non-empty expression."""
    every = list(panels(dashboard))
    ids = [p["id"] for p in every]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in every:
        pos = p["gridPos"]
        assert {"h", "w", "x", "y"} <= set(pos), p["title"]
        assert pos["x"] >= 0, p["title"]
        assert 0 < pos["w"] <= 24 - pos["x"], p["title"]
        mine = {(pos["y"] + dy, pos["x"] + dx) for dy in range(pos["h"]) for dx in range(pos["w"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["datasource"] == DATASOURCE, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DATASOURCE, p["title"]
            assert t["expr"].strip(), p["title"]
    assert sum(p["type"] != "row" for p in every) >= 20


def test_queries_use_only_defined_variables_as_regexes(dashboard: dict[str, Any]) -> None:
    """Every variable a query uses is defined (or one of Grafana's built-ins), and the
    multi-value ones appear only as ``=~"$var"`` (their "All" value is ``.*``)."""
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    for key, expr in _queries(dashboard).items():
        for name in variables_used(expr):
            assert name in defined or name in GRAFANA_BUILTINS, f"{key}: ${name}"
            if name not in GRAFANA_BUILTINS:
                uses = re.findall(rf'(\S{{2}})"\$\{{?{name}\b', expr)
                assert uses, f"{key}: ${name}"
                assert set(uses) == {"=~"}, f"{key}: ${name} not =~"


def test_dashboard_covers_every_area_of_the_issue(dashboard: dict[str, Any]) -> None:
    """Runs, agents, breakers, staleness, exchange budget, scheduler, HTTP and processes."""
    named = set().union(*(metric_names(q) for q in panel_queries(dashboard).values()))
    assert REQUIRED - named == set()


# -- PromQL syntax -------------------------------------------------------------------------


def test_every_query_parses_with_promtool(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """``promtool check rules`` parses each query (as Grafana sends it) as a recording rule;
    a broken expression is rejected by the same check."""
    need(binaries_present(), "promtool not on PATH (Debian package `prometheus`)")
    queries = {re.sub(r"\W", "_", k): to_promql(v) for k, v in _queries(dashboard).items()}
    done = promtool_check_exprs(queries, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(queries)} rules found" in done.stdout
    broken = promtool_check_exprs({"bad": "sum(rate(conclave_runs_total[1m])"}, tmp_path)
    assert broken.returncode != 0
    assert "parse error" in broken.stdout + broken.stderr


def test_metric_names_sees_through_promql() -> None:
    """The name extraction ignores functions, label names, ranges, grouping and keywords,
    and a misspelled metric is not taken as exported."""
    expr = (
        'histogram_quantile(0.95, sum by (le, agent) (rate(a_seconds_bucket{job=~"$job", '
        'le!="x"}[$__rate_interval] offset 1h))) / on (agent) group_left (mode) b_total '
        "* 1e3 > bool 2 and c unless max without (instance) (d)"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c", "d"}
    exported = {"a_seconds": "histogram", "b_total": "counter", "g": "gauge"}
    assert is_exported("a_seconds_bucket", exported)
    assert is_exported("a_seconds_count", exported)
    assert not is_exported("g_bucket", exported)
    assert not is_exported("conclave_runs_totl", exported)


# -- the metric names the services really export --------------------------------------------


async def _asgi(app: Any) -> AsyncIterator[httpx2.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            yield c


@pytest.fixture
async def exposition(tmp_path: Path) -> str:
    """The ``/metrics`` of an agent service (served on loopback) and of the orchestrator
    (in process, calling that agent over HTTP) after a run, and after a second run with the
    agent gone (degraded); then the registry's exposition after a scheduler pass: what the
    three services export."""
    port = free_port()
    agent_url = f"http://127.0.0.1:{port}"
    agent_app = create_agent_app(HTTP_AGENT, make_settings(tmp_path / "agent"))
    settings = make_settings(
        tmp_path / "orchestrator",
        agents={"urls": {HTTP_AGENT: agent_url}, "http": {HTTP_AGENT: True}},
    )
    texts = []
    async for api in _asgi(create_app(settings)):
        with served(agent_app, port, lifespan="on"):
            run = await api.post("/pipeline/run", json=RUN)
            assert run.status_code == 201, run.text
            assert run.json()["missingAgents"] == []
            async with httpx2.AsyncClient(trust_env=False) as client:
                texts.append((await client.get(f"{agent_url}/metrics")).text)
        degraded = await api.post("/pipeline/run", json=RUN)
        assert degraded.json()["missingAgents"] == [HTTP_AGENT]
        texts.append((await api.get("/metrics")).text)
    sched_settings = make_settings(
        tmp_path / "scheduler", scheduler={"jobs": [{"symbol": "BTCUSDT", "timeframe": "1m"}]}
    )
    runtime = await Runtime.open(sched_settings, now_ms=_wall_clock_ms)
    try:
        outcomes = await build_scheduler(sched_settings, runtime).run_due_once()
        assert [o.status for o in outcomes] == ["ok"]
    finally:
        await runtime.aclose()
    texts.append(render().decode())
    return "\n".join(texts)


def _wall_clock_ms() -> int:
    import time

    return time.time_ns() // 1_000_000


def _with_samples(text: str) -> set[str]:
    return {line.split("{", 1)[0].split(" ", 1)[0] for line in text.splitlines()
            if line and not line.startswith("#")}  # fmt: skip


def test_every_dashboard_metric_is_exported(dashboard: dict[str, Any], exposition: str) -> None:
    """Each metric a panel or variable query names is a family in the services' ``/metrics``
    (a histogram's ``_bucket``/``_count``/``_sum`` under its family), or ``up``; and, except
    the event-only families, it has series after the run."""
    exported = exported_names(exposition)
    named = set().union(*(metric_names(q) for q in _queries(dashboard).values()))
    assert named - PROMETHEUS_SYNTHETIC - {n for n in named if is_exported(n, exported)} == set()
    sampled = _with_samples(exposition)
    assert {n for n in named - PROMETHEUS_SYNTHETIC - EVENT_ONLY if n not in sampled} == set()


def test_dashboard_file_is_plain_json() -> None:
    """The file parses as JSON with two-space indentation and a final newline (diffable)."""
    text = DASHBOARD.read_text()
    assert text.endswith("}\n")
    assert json.dumps(json.loads(text), indent=2) + "\n" == text
