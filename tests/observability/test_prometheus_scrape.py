"""A real Prometheus scrapes real Conclave processes (issue 11, items 2 and 7).

Three agent services (``conclave agent serve``), the orchestrator (``conclave serve``, those
three agents over HTTP, the other six in process) and the scheduler (``conclave
scheduler``, one 1m job on the sim source, its own ``/metrics`` port) run as processes on
free loopback ports, each with SQLite in a temporary directory. The orchestrator reads
Binance's REST API from Stub-BX (`tests.fakes.FakeBinance`, real candles of
../shared/data, its clock set back into them, so exchange time drives the runs as on the
real exchange). Debian's ``prometheus`` scrapes all five every second.

The scenario: three runs through the API, one agent killed with SIGKILL, three more runs
(the breaker opens after two failed calls), then one run whose candle fetch the exchange
answers 429 with Retry-After. PromQL through Prometheus's HTTP API must then show what
happened, ``promtool check metrics`` must pass on every service's output, and every query
of the Grafana dashboard must evaluate (most of them to series).

The whole set-up is one module-scoped fixture: the processes start once (about half a
minute on a small machine), every one is stopped by its PID at the end, failure or not.
Without the ``prometheus`` and ``promtool`` binaries the module skips, except in CI.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest

from conclave.agents import REGISTRY
from tests.conftest import SHARED_DATA, need
from tests.fakes import FakeBinance, Fault
from tests.observability.prom_helpers import (
    PROMETHEUS_SYNTHETIC,
    Prometheus,
    Service,
    binaries_present,
    child_env,
    conclave,
    exported_names,
    free_ports,
    is_exported,
    load_dashboard,
    metric_names,
    panel_queries,
    panels,
    prometheus,
    promtool_check_metrics,
    scrape,
    service,
    to_promql,
    variable_queries,
    wait_http,
)

pytestmark = pytest.mark.timeout(300)
#: Seconds a process may take to answer: five Python processes start at once, and a
#: loaded two-core machine has been seen to need a minute for that.
START_S = 150

AGENTS = ("market-structure", "order-flow", "momentum")
VICTIM = "momentum"
RUN = {"symbol": "BTCUSDT", "timeframe": "1h"}
RUNS_BEFORE_KILL = 3
RUNS_AFTER_KILL = 3
BREAKER_FAILURES = 2
#: Stub-BX's clock: six hours before the end of its BTCUSDT 1h candles, moving in real time.
EXCHANGE_START_MS = 1_665_486_060_000 - 6 * 3_600_000
ORCH, AGENT_JOB, SCHED = "conclave-orchestrator", "conclave-agents", "conclave-scheduler"
#: Dashboard panels whose every query must return series after the scenario (all but the
#: database errors, which nothing here causes).
PANELS_WITH_DATA = (
    "Runs in range", "Runs without a decision", "Runs by action", "Runs by status",
    "Degraded runs by agent", "Run duration", "Data staleness", "Agent latency p50",
    "Agent latency p95", "Agent errors", "Agent error ratio", "Breaker states",
    "Next breaker probe", "Exchange weight used", "Exchange weight", "Throttled responses",
    "Pause / ban remaining", "Candle cache lookups", "Exchange clock skew", "Scheduler lag",
    "Scheduler slots",
    "Request rate by route", "Request latency p95 by route", "Requests in flight",
    "Server errors", "Targets up", "Resident memory", "CPU", "Open file descriptors",
)  # fmt: skip


@dataclass
class Stack:
    """The running processes, the Prometheus that scrapes them and the runs made."""

    prom: Prometheus
    orchestrator: Service
    agents: dict[str, Service]
    scheduler: Service
    exchange: FakeBinance
    exchange_shift_ms: int
    before: list[dict[str, Any]]
    after: list[dict[str, Any]]
    throttled: dict[str, Any]

    @property
    def runs(self) -> list[dict[str, Any]]:
        return [*self.before, *self.after, self.throttled]

    def target(self, svc: Service) -> str:
        return _address(svc)


def _address(svc: Service) -> str:
    """``host:port`` of ``svc``: its scrape target, and its ``instance`` label."""
    return svc.url.removeprefix("http://")


def _post_runs(
    client: httpx2.Client, url: str, n: int, prom: Prometheus, done: int
) -> list[dict[str, Any]]:
    """``n`` runs, each waited for in Prometheus before the next: every counter then grows
    across scrapes (a series first seen at its final value has no rate)."""
    out = []
    for i in range(n):
        resp = client.post(f"{url}/pipeline/run", json=RUN)
        assert resp.status_code == 201, resp.text
        out.append(resp.json())
        prom.value(f'sum(conclave_runs_total{{job="{ORCH}"}})', equals=done + i + 1)
    return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    need(
        binaries_present(),
        "prometheus/promtool not on PATH (Debian package `prometheus`; .ci/run installs it)",
    )
    need(SHARED_DATA.is_dir(), f"real market data not found at {SHARED_DATA}")
    tmp = tmp_path_factory.mktemp("prom_scrape")
    shift_ms = time.time_ns() // 1_000_000 - EXCHANGE_START_MS
    *agent_ports, api_port, sched_port = free_ports(len(AGENTS) + 2)
    ports = dict(zip(AGENTS, agent_ports, strict=True))
    exchange = FakeBinance(SHARED_DATA, wall_ms=lambda: time.time_ns() // 1_000_000 - shift_ms)
    orch_env = child_env(
        tmp / "orchestrator",
        CONCLAVE_MARKET__SOURCE="binance",
        # each run fetches (the runs are a second or more apart), so each spends weight
        CONCLAVE_MARKET__CACHE__TTL_S="0.2",
        CONCLAVE_AGENTS__PORTS=json.dumps(ports),
        CONCLAVE_AGENTS__HTTP=json.dumps(dict.fromkeys(AGENTS, True)),
        AGENT_SERVICES_BASE_URL="http://127.0.0.1",
        # cold agents on a loaded machine: this test is about metrics, not timeouts
        CONCLAVE_AGENTS__TIMEOUT_S="10",
        CONCLAVE_PIPELINE__AGENT_TIMEOUT_S="10",
        CONCLAVE_PIPELINE__RUN_DEADLINE_S="30",
        CONCLAVE_AGENTS__BREAKER__FAILURES=str(BREAKER_FAILURES),
        CONCLAVE_AGENTS__BREAKER__OPEN_S="600",
    )
    sched_env = child_env(
        tmp / "scheduler",
        CONCLAVE_SCHEDULER__METRICS_PORT=str(sched_port),
        CONCLAVE_SCHEDULER__JOBS=json.dumps([{"symbol": "BTCUSDT", "timeframe": "1m"}]),
    )
    with contextlib.ExitStack() as running:
        running.enter_context(exchange.running())
        orch_env["CONCLAVE_MARKET__BINANCE__BASE_URL"] = exchange.base_url
        agents = {
            name: running.enter_context(
                service(
                    name,
                    conclave("agent", "serve", name, "--port", str(port), "--host", "127.0.0.1"),
                    child_env(tmp / name),
                    tmp,
                    f"http://127.0.0.1:{port}",
                )
            )
            for name, port in ports.items()
        }
        orch = running.enter_context(
            service(
                "orchestrator",
                conclave("serve", "--host", "127.0.0.1", "--port", str(api_port)),
                orch_env,
                tmp,
                f"http://127.0.0.1:{api_port}",
            )
        )
        sched = running.enter_context(
            service("scheduler", conclave("scheduler"), sched_env, tmp,
                    f"http://127.0.0.1:{sched_port}")
        )  # fmt: skip
        everyone = [orch, sched, *agents.values()]
        jobs = {
            ORCH: [_address(orch)],
            AGENT_JOB: [_address(a) for a in agents.values()],
            SCHED: [_address(sched)],
        }
        # Prometheus starts while the services do; it scrapes them idle first
        prom = running.enter_context(prometheus(tmp / "prometheus", jobs))
        for svc in agents.values():
            wait_http(svc, "/health", timeout_s=START_S)
        wait_http(orch, "/health/live", timeout_s=START_S)
        wait_http(sched, "/metrics", timeout_s=START_S)
        prom.value("count(up == 1)", equals=len(everyone))

        with httpx2.Client(timeout=30, trust_env=False) as client:
            before = _post_runs(client, orch.url, RUNS_BEFORE_KILL, prom, 0)
            agents[VICTIM].kill()
            after = _post_runs(client, orch.url, RUNS_AFTER_KILL, prom, RUNS_BEFORE_KILL)
            exchange.push(Fault(status=429, headers={"Retry-After": "1"}))
            (throttled,) = _post_runs(client, orch.url, 1, prom, len(before) + len(after))
        yield Stack(prom, orch, agents, sched, exchange, shift_ms, before, after, throttled)


def _by(vector: dict[tuple[tuple[str, str], ...], float], label: str) -> dict[str, float]:
    return {dict(k)[label]: v for k, v in vector.items()}


def _outcome(run: dict[str, Any], agent: str) -> str:
    """The ``outcome`` label the API's answer implies for ``agent``'s step."""
    meta = run["steps"][agent]["meta"]
    if (meta.get("reason") or "").startswith("circuit_open"):
        return "circuit_open"
    return str(meta["status"])


# -- the scenario as the API answered it (so the assertions below count the right things) ---


def test_the_scenario_went_as_planned(stack: Stack) -> None:
    """Runs before the kill use all three HTTP agents; those after it name the victim as
    missing, first with a connection error, then (the breaker open) at once; the throttled
    run has no data, so no decision, and every agent step failed."""
    assert all(r["missingAgents"] == [] for r in stack.before)
    assert all(r["decision"]["status"] == "ok" for r in stack.before + stack.after)
    assert all(r["missingAgents"] == [VICTIM] for r in stack.after)
    outcomes = [_outcome(r, VICTIM) for r in stack.after]
    assert outcomes == ["error"] * BREAKER_FAILURES + ["circuit_open"] * (
        RUNS_AFTER_KILL - BREAKER_FAILURES
    )
    assert stack.throttled["decision"]["status"] != "ok"
    assert {_outcome(stack.throttled, a) for a in AGENTS} == {"error"}
    assert len(stack.exchange.requests()) >= len(stack.runs)
    assert stack.exchange.server_errors == []


# -- PromQL through Prometheus's HTTP API ---------------------------------------------------


def test_runs_are_counted_by_action_and_status(stack: Stack) -> None:
    """``sum(conclave_runs_total)`` of the orchestrator is the number of runs made, and
    its split by status, and by action of the decided runs, is what the API answered."""
    prom = stack.prom
    total = prom.value(f'sum(conclave_runs_total{{job="{ORCH}"}})', equals=len(stack.runs))
    assert total == len(stack.runs)
    statuses = prom.vector(f'sum by (status) (conclave_runs_total{{job="{ORCH}"}})')
    assert _by(statuses, "status") == Counter(r["decision"]["status"] for r in stack.runs)
    # a run without a decision has no action (its label value is not pinned down here)
    actions = prom.vector(f'sum by (action) (conclave_runs_total{{job="{ORCH}", status="ok"}})')
    decided = [r["decision"]["action"] for r in stack.runs if r["decision"]["status"] == "ok"]
    assert _by(actions, "action") == Counter(decided)
    duration = prom.value(f'sum(conclave_run_duration_seconds_count{{job="{ORCH}"}})')
    assert duration == len(stack.runs)


def test_the_injected_failure_is_counted_under_the_killed_agent(stack: Stack) -> None:
    """The killed agent's calls count as ``error`` (connection refused), then
    ``circuit_open``; its degraded runs count under it; the other agents' calls stay ok."""
    prom = stack.prom
    expected = Counter(_outcome(r, VICTIM) for r in stack.runs)
    assert expected == {"ok": RUNS_BEFORE_KILL, "error": BREAKER_FAILURES + 1, "circuit_open": 1}
    outcomes = prom.wait_for(
        f'sum by (outcome) (conclave_agent_call_duration_seconds_count{{job="{ORCH}", '
        f'agent="{VICTIM}", mode="http"}})',
        lambda v: _by(v, "outcome") == expected,
    )
    assert _by(outcomes, "outcome") == expected
    degraded = prom.wait_for(
        f'conclave_runs_degraded_total{{job="{ORCH}"}}',
        lambda v: _by(v, "agent")[VICTIM] == RUNS_AFTER_KILL + 1,
    )
    # the throttled run had no agent at all: it counts under every one
    assert _by(degraded, "agent") == {a: 1.0 for a in REGISTRY} | {VICTIM: RUNS_AFTER_KILL + 1}
    others = prom.vector(
        f'sum by (agent, outcome) (conclave_agent_call_duration_seconds_count{{job="{ORCH}", '
        f'mode="http", agent!="{VICTIM}"}})'
    )
    expected_others = {
        (name, outcome): float(n)
        for name in AGENTS
        if name != VICTIM
        for outcome, n in Counter(_outcome(r, name) for r in stack.runs).items()
    }
    assert expected_others == {
        (name, out): n
        for name in AGENTS
        if name != VICTIM
        for out, n in (("ok", len(stack.runs) - 1), ("error", 1))
    }
    assert {(dict(k)["agent"], dict(k)["outcome"]): v for k, v in others.items()} == expected_others


def test_agent_modes_are_labelled(stack: Stack) -> None:
    """The three agents behind HTTP are ``mode="http"``, the six in process ``local``."""
    vector = stack.prom.vector(
        f'count by (agent, mode) (conclave_agent_call_duration_seconds_count{{job="{ORCH}"}})'
    )
    modes = {dict(k)["agent"]: dict(k)["mode"] for k in vector}
    assert {a for a, m in modes.items() if m == "http"} == set(AGENTS)
    assert len(modes) == 9
    assert set(modes.values()) == {"http", "local"}


def test_breaker_states_show_the_open_breaker(stack: Stack) -> None:
    """``conclave_agent_breaker_state`` is 2 (open) for the killed agent, 0 for the others,
    and its next probe lies in the future."""
    prom = stack.prom
    states = prom.wait_for(
        f'conclave_agent_breaker_state{{job="{ORCH}"}}', lambda v: len(v) == len(AGENTS)
    )
    assert _by(states, "agent") == {a: (2.0 if a == VICTIM else 0.0) for a in AGENTS}
    probe = prom.value(
        f'conclave_agent_breaker_next_probe_timestamp_seconds{{job="{ORCH}", agent="{VICTIM}"}}'
        " - time()"
    )
    assert probe > 0


def test_targets_are_up_and_the_killed_agent_down(stack: Stack) -> None:
    """``up`` is 1 for every live process and 0 for the killed agent's address."""
    expected = {
        (ORCH, stack.target(stack.orchestrator)): 1.0,
        (SCHED, stack.target(stack.scheduler)): 1.0,
        **{(AGENT_JOB, stack.target(a)): float(n != VICTIM) for n, a in stack.agents.items()},
    }

    def matches(v: dict[tuple[tuple[str, str], ...], float]) -> bool:
        return {(dict(k)["job"], dict(k)["instance"]): x for k, x in v.items()} == expected

    stack.prom.wait_for("up", matches)


def test_http_requests_are_counted_by_route(stack: Stack) -> None:
    """Each ``POST /pipeline/run`` is counted on the orchestrator under its route template,
    and each agent call on the live agents' ``POST /run``."""
    prom = stack.prom
    prom.value(
        f'sum(conclave_http_request_duration_seconds_count{{job="{ORCH}", method="POST", '
        f'route="/pipeline/run", status_class="2xx", service="orchestrator"}})',
        equals=len(stack.runs),
    )
    # the throttled run called no agent
    calls_made = len(stack.runs) - 1
    live = {stack.target(a): calls_made for n, a in stack.agents.items() if n != VICTIM}
    calls = prom.wait_for(
        f'sum by (instance) (conclave_http_request_duration_seconds_count{{job="{AGENT_JOB}", '
        f'method="POST", route="/run"}})',
        lambda v: _by(v, "instance") == live,
    )
    assert _by(calls, "instance") == live
    services = prom.vector(
        f'count by (service) (conclave_http_requests_in_flight{{job="{AGENT_JOB}"}})'
    )
    assert set(_by(services, "service")) == set(AGENTS) - {VICTIM}


def test_process_metrics_are_scraped_from_every_live_process(stack: Stack) -> None:
    """Resident memory, CPU seconds and open descriptors come from every live target."""
    prom = stack.prom
    live = {stack.target(stack.orchestrator), stack.target(stack.scheduler)} | {
        stack.target(a) for n, a in stack.agents.items() if n != VICTIM
    }
    for metric in ("process_resident_memory_bytes", "process_cpu_seconds_total",
                   "process_open_fds"):  # fmt: skip
        vector = prom.wait_for(f"{metric} > 0", lambda v: set(_by(v, "instance")) == live)
        assert set(_by(vector, "instance")) == live, metric
    rss = prom.vector(f'process_resident_memory_bytes{{job="{ORCH}"}}')
    assert all(20e6 < v < 2e9 for v in rss.values())


def test_data_staleness_and_cache_lookups_are_exported(stack: Stack) -> None:
    """The age of the newest closed 1h candle is under one bar (the exchange's clock is
    within its data), and every run looked its candles up in the in-process cache."""
    prom = stack.prom
    age = prom.value(
        f'conclave_candle_age_seconds{{job="{ORCH}", symbol="BTCUSDT", timeframe="1h"}}'
    )
    assert 0 <= age <= 3600
    lookups = prom.value(
        f'sum(conclave_cache_lookups_total{{job="{ORCH}", backend="memory", result=~"hit|miss"}})'
    )
    assert lookups >= len(stack.runs)


def test_exchange_budget_throttling_and_clock_are_exported(stack: Stack) -> None:
    """The weight the exchange reported is under our per-minute budget; the 429 counts
    once, with the pause it set; the clock skew is Stub-BX's (set back by ``shift``)."""
    prom = stack.prom
    src = f'job="{ORCH}", source="binance"'
    used = prom.value(f"conclave_exchange_weight_used{{{src}}}")
    limit = prom.value(f"conclave_exchange_weight_limit{{{src}}}")
    assert 0 < used < limit
    throttled = prom.vector(f"conclave_exchange_throttled_responses_total{{{src}}}")
    assert {dict(k)["code"]: v for k, v in throttled.items()} == {"429": 1.0}
    paused = prom.vector(f"conclave_exchange_paused_until_timestamp_seconds{{{src}}}")
    until = _by(paused, "kind")
    assert until.get("banned", 0.0) == 0.0
    assert time.time() - 120 < until["paused"] < time.time() + 5
    skew = prom.value(f"conclave_exchange_clock_skew_seconds{{{src}}}")
    assert skew == pytest.approx(-stack.exchange_shift_ms / 1000, abs=5)


def test_the_scheduler_exports_its_slots_and_lag(stack: Stack) -> None:
    """The scheduler's first pass ran the due 1m slot: an ``ok`` slot, its lag observed
    (the time since that bar closed: under two bars), its run counted like the API's."""
    prom = stack.prom
    slots = prom.value(f'sum(conclave_scheduler_slots_total{{job="{SCHED}", outcome="ok"}})')
    assert slots >= 1
    ran = f'sum(conclave_scheduler_slots_total{{job="{SCHED}", outcome=~"ok|failed"}})'
    prom.wait_for(f'sum(conclave_runs_total{{job="{SCHED}"}}) == {ran}', lambda v: len(v) == 1)
    prom.wait_for(f"sum(conclave_runs_total) == {ran} + {len(stack.runs)}", lambda v: len(v) == 1)
    count = prom.value(f'conclave_scheduler_slot_lag_seconds_count{{job="{SCHED}"}}')
    total = prom.value(f'conclave_scheduler_slot_lag_seconds_sum{{job="{SCHED}"}}')
    assert count >= 1
    assert 0 < total / count < 120


# -- promtool --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["orchestrator", "agent", "scheduler"])
def test_promtool_check_metrics_passes(stack: Stack, name: str) -> None:
    """``promtool check metrics`` finds no problem (and prints nothing) in the ``/metrics``
    of each kind of service, read after the runs."""
    svc = {"orchestrator": stack.orchestrator, "agent": stack.agents["order-flow"],
           "scheduler": stack.scheduler}[name]  # fmt: skip
    text = scrape(svc.url)
    assert "conclave_" in text
    done = promtool_check_metrics(text)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == ""
    assert done.stderr.strip() == ""


# -- the Grafana dashboard against the real Prometheus -------------------------------------


def test_prometheus_rejects_bad_promql(stack: Stack) -> None:
    """The check below can fail: a parse error answers ``bad_data``."""
    body = stack.prom.query("sum(rate(conclave_runs_total[1m])")
    assert (body["status"], body["errorType"]) == ("error", "bad_data")


def test_every_dashboard_query_evaluates(stack: Stack) -> None:
    """Every panel query and every variable's selector is valid PromQL for Prometheus."""
    dashboard = load_dashboard()
    queries = panel_queries(dashboard) | {
        f"variable {k}": v for k, v in variable_queries(dashboard).items()
    }
    assert len(queries) > 20
    failed = {}
    for key, expr in queries.items():
        body = stack.prom.query(to_promql(expr))
        if body["status"] != "success":
            failed[key] = f"{body.get('errorType')}: {body.get('error')}"
    assert failed == {}


def test_dashboard_panels_show_data_after_runs(stack: Stack) -> None:
    """The run, agent, breaker, scheduler, HTTP and process panels each return series
    (waited for: a rate needs two scrapes after the runs)."""
    by_title = {p["title"]: p for p in panels(load_dashboard()) if p["type"] != "row"}
    assert set(PANELS_WITH_DATA) <= set(by_title)
    for title in PANELS_WITH_DATA:
        for target in by_title[title]["targets"]:
            vector = stack.prom.wait_for(to_promql(target["expr"]), bool, timeout_s=20)
            if title.startswith("Agent latency"):
                assert any(not math.isnan(v) for v in vector.values()), title


def test_dashboard_metrics_are_exported_by_the_real_processes(stack: Stack) -> None:
    """Every metric a dashboard query names is exported by one of the real processes
    (``# TYPE`` lines of their ``/metrics``), or made by Prometheus itself (``up``)."""
    exported: dict[str, str] = {}
    for svc in (stack.orchestrator, stack.scheduler, stack.agents["order-flow"]):
        exported |= exported_names(scrape(svc.url))
    dashboard = load_dashboard()
    queries = [*panel_queries(dashboard).values(), *variable_queries(dashboard).values()]
    named = set().union(*(metric_names(q) for q in queries))
    assert {n for n in named - PROMETHEUS_SYNTHETIC if not is_exported(n, exported)} == set()
