"""Every Prometheus metric Conclave exports, defined once (``prometheus-client``).

Names follow Prometheus's conventions: the ``conclave_`` prefix, base units in the name
(``_seconds``, ``_bytes``), ``_total`` on counters, and label values from bounded sets (agent
names, statuses, route templates, the symbol and timeframe allowlists; never an id, a reason
or a URL). The metrics live in the default registry, which also holds the client's process
and platform collectors (RSS, CPU seconds, open file descriptors, GC), and `render` serves
them in the text format at ``GET /metrics``.

**One process, one set of counts.** Every Conclave service runs one uvicorn worker by design:
the state the metrics describe (circuit breakers, the exchange budget, the scheduler's slots)
belongs to that process, and more throughput comes from more replicas, each scraped on its
own. prometheus-client's multiprocess mode is therefore not used, and the command line
starts no service with more than one worker.

State that lives in objects (breakers, the rate limiter's pause latch) is read at scrape time
by a `StateCollector`, so a gauge can never go stale against the object it reports.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Final

from prometheus_client import (
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

#: The classic text format (0.0.4), which every Prometheus and promtool version reads.
CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4

#: Latency buckets (seconds) from 1 ms to 30 s: an in-process agent step takes ~1 ms, an HTTP
#: call a few ms, a run tens of ms; the upper end covers the 10 s agent timeout and deadlines.
LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
#: Scheduler lag buckets (seconds): a slot normally runs within a second of its close.
LAG_BUCKETS: Final = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)

# -- HTTP (every service) ---------------------------------------------------------------------
HTTP_DURATION = Histogram(
    "conclave_http_request_duration_seconds",
    "HTTP request duration, by service, method, route template and status class.",
    ["service", "method", "route", "status_class"],
    buckets=LATENCY_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge(
    "conclave_http_requests_in_flight", "HTTP requests being served.", ["service"]
)

# -- agents (the orchestrator's calls) ----------------------------------------------------------
AGENT_OUTCOMES: Final = (
    "ok", "no_data", "insufficient_data", "stale_data", "error", "timeout", "circuit_open",
)  # fmt: skip
AGENT_CALL_DURATION = Histogram(
    "conclave_agent_call_duration_seconds",
    "One agent step as the orchestrator saw it, by agent, mode (local, http) and outcome.",
    ["agent", "mode", "outcome"],
    buckets=LATENCY_BUCKETS,
)
BREAKER_STATES: Final = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
# read from the live breakers at scrape time (a `StateCollector` each): name, help, labels
BREAKER_STATE: Final = (
    "conclave_agent_breaker_state",
    "Circuit breaker of each HTTP agent: 0 closed, 1 half open, 2 open.",
    ["agent"],
)
BREAKER_NEXT_PROBE: Final = (
    "conclave_agent_breaker_next_probe_timestamp_seconds",
    "Unix time an open breaker lets its next probe through; 0 when closed.",
    ["agent"],
)

# -- runs -------------------------------------------------------------------------------------
RUNS = Counter(
    "conclave_runs_total",
    "Pipeline runs, by decision action (none: no decision made) and status.",
    ["action", "status"],
)
RUNS_DEGRADED = Counter(
    "conclave_runs_degraded_total",
    "Runs without a usable answer from an agent, by that agent (one run may count under several).",
    ["agent"],
)
RUNS_SHED = Counter(
    "conclave_runs_shed_total",
    "Run requests refused with 503 overloaded: api.max_runs_in_flight runs were in progress or"
    " waiting, or the run waited api.max_queue_wait_s in the admission queue.",
)
RUNS_RUNNING = Gauge("conclave_runs_running", "Runs executing now (at most api.max_runs_running).")
RUNS_QUEUED = Gauge(
    "conclave_runs_queued", "Runs waiting in the admission queue for a free run slot."
)
RUN_QUEUE_WAIT = Histogram(
    "conclave_run_queue_wait_seconds",
    "Seconds an admitted run waited in the admission queue before it started (0: at once).",
    buckets=LATENCY_BUCKETS,
)
RUN_QUEUE_TIMEOUTS = Counter(
    "conclave_runs_queue_timeouts_total",
    "Runs refused with 503 because no run slot came, or was expected to come, within"
    " api.max_queue_wait_s (also in conclave_runs_shed_total).",
)
RUN_DURATION = Histogram(
    "conclave_run_duration_seconds",
    "Pipeline run duration (data, agents, decision), by deployment mode.",
    ["mode"],
    buckets=LATENCY_BUCKETS,
)
CANDLE_AGE = Gauge(
    "conclave_candle_age_seconds",
    "Age of the newest closed candle a run used (its close to the run's now).",
    ["symbol", "timeframe"],
)

# -- market data ------------------------------------------------------------------------------
CACHE_LOOKUPS = Counter(
    "conclave_cache_lookups_total",
    "Candle cache lookups, by backend (memory, redis) and result (hit, miss, error).",
    ["backend", "result"],
)
EXCHANGE_WEIGHT_USED = Gauge(
    "conclave_exchange_weight_used",
    "Request weight used in the exchange's current one-minute window (its own count).",
    ["source"],
)
EXCHANGE_WEIGHT_LIMIT = Gauge(
    "conclave_exchange_weight_limit",
    "Request weight per minute we allow ourselves (our budget, below the exchange's limit).",
    ["source"],
)
EXCHANGE_THROTTLED = Counter(
    "conclave_exchange_throttled_responses_total",
    "Exchange answers that throttle us: 429 (slow down) and 418 (banned).",
    ["source", "code"],
)
EXCHANGE_PAUSED_UNTIL = Gauge(
    "conclave_exchange_paused_until_timestamp_seconds",
    "Unix time the last pause (kind=paused) or ban (kind=banned) ends; past: none is active.",
    ["source", "kind"],
)
EXCHANGE_CLOCK_SKEW = Gauge(
    "conclave_exchange_clock_skew_seconds",
    "Exchange clock minus this host's clock, last measured.",
    ["source"],
)

# -- scheduler and database -------------------------------------------------------------------
SCHEDULER_SLOT_LAG = Histogram(
    "conclave_scheduler_slot_lag_seconds",
    "Time from a candle's close to the start of its scheduled run.",
    buckets=LAG_BUCKETS,
)
SCHEDULER_SLOTS = Counter(
    "conclave_scheduler_slots_total",
    "Scheduler slots, by outcome: ok, failed, error, missed, claimed_elsewhere.",
    ["outcome"],
)
DB_ERRORS = Counter(
    "conclave_db_errors_total",
    "Database errors, by kind (connection, timeout, integrity, other).",
    ["kind"],
)


def agent_outcome(status: str, reason: str) -> str:
    """The ``outcome`` label of a step: its status, or ``circuit_open`` when the breaker
    failed it at once; an unknown status counts as ``error``."""
    if status == "error" and reason.startswith("circuit_open"):
        return "circuit_open"
    return status if status in AGENT_OUTCOMES else "error"


#: The registered `StateCollector` of each name.
_LIVE: dict[str, StateCollector] = {}


class StateCollector(Collector):
    """A gauge family read from live objects at scrape time.

    ``read`` yields ``(labels, value)`` pairs; registering a second collector of the same
    name replaces the first (an app rebuilt in a test, a runtime reopened).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: list[str],
        read: Callable[[], Iterable[tuple[tuple[str, ...], float]]],
    ) -> None:
        self.name, self.documentation, self.labels, self.read = name, documentation, labels, read

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.name, self.documentation, labels=self.labels)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, value in self.read():
            family.add_metric(list(labels), value)
        yield family

    def register(self) -> StateCollector:
        """Register in the default registry, replacing an earlier one of the same name."""
        old = _LIVE.pop(self.name, None)
        if old is not None:
            REGISTRY.unregister(old)
        REGISTRY.register(self)
        _LIVE[self.name] = self
        return self


def render() -> bytes:
    """The default registry in Prometheus's text format (process metrics included)."""
    return generate_latest(REGISTRY)


def now_s() -> float:
    """Unix time in seconds (gauges of instants are unix seconds, Prometheus's convention)."""
    return time.time()
