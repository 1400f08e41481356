"""The metrics every service exports, read back from ``GET /metrics`` after real work.

Counters are process-wide (prometheus-client's default registry), so each test reads a
value before and after and asserts the difference. Faults are real: an agent service on a
port nothing listens on, a breaker that opens after its threshold, a Redis URL that refuses
connections, a database file that cannot be opened.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from conclave.errors import RateLimitedError
from conclave.market.cache import CachedSource, make_cache
from conclave.market.exchange_time import ClockSample, ExchangeClock, InProcessOffsets
from conclave.market.sources import open_source
from conclave.market.sources.binance import BinanceSource
from conclave.market.sources.sim import SimSource
from conclave.services.agent_app import create_agent_app
from conclave.services.api import create_app
from conclave.settings import BinanceSettings, CacheSettings, Settings
from tests.fakes import FakeBinance, Fault
from tests.market.conftest import stub as stub  # the fixture: Stub-BX on loopback
from tests.services.test_api import RUN, closed_port, make_settings


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _api(settings: Settings) -> AsyncIterator[httpx2.AsyncClient]:
    app = create_app(settings, source=open_source("sim", settings, now_ms=_now_ms))
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            yield c


async def scrape(client: httpx2.AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``GET /metrics``, keyed by name and labels."""
    resp = await client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    """The sample ``name{labels}`` (0 when absent: a counter not yet incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_orchestrator_counts_requests_runs_and_agent_steps(tmp_path: Path) -> None:
    """Two runs in process: runs by action and status, nine steps each, route templates."""
    async for api in _api(make_settings(tmp_path)):
        before = await scrape(api)
        ids = []
        for _ in range(2):
            resp = await api.post("/pipeline/run", json=RUN)
            assert resp.status_code == 201
            ids.append(resp.json()["runId"])
        assert (await api.get(f"/pipeline/runs/{ids[0]}")).status_code == 200
        assert (await api.get("/pipeline/runs/" + "a" * 32)).status_code == 404
        after = await scrape(api)
        action, status = resp.json()["decision"]["action"], resp.json()["decision"]["status"]

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("conclave_runs_total", action=action, status=status) >= 1
    assert (
        sum(
            v - value(before, n, **dict(lb))
            for (n, lb), v in after.items()
            if n == "conclave_runs_total"
        )
        == 2
    )
    steps = "conclave_agent_call_duration_seconds_count"
    assert delta(steps, agent="momentum", mode="local", outcome="ok") == 2
    # no news source is configured: that agent says so, it is not an error
    assert delta(steps, agent="news-sentiment", mode="local", outcome="no_data") == 2
    assert delta("conclave_run_duration_seconds_count", mode="monolithic") == 2
    http = "conclave_http_request_duration_seconds_count"
    assert delta(http, service="orchestrator", method="POST", route="/pipeline/run",
                 status_class="2xx") == 2  # fmt: skip
    # the id is not a label: both lookups count under the route template
    for cls in ("2xx", "4xx"):
        assert delta(http, service="orchestrator", method="GET",
                     route="/pipeline/runs/{run_id}", status_class=cls) == 1  # fmt: skip
    age = value(after, "conclave_candle_age_seconds", symbol="BTCUSDT", timeframe="1h")
    assert 0 <= age <= 3600, "the newest closed 1h bar closed within the last hour"
    assert value(after, "conclave_http_requests_in_flight", service="orchestrator") == 0
    assert value(after, "process_resident_memory_bytes") > 0
    assert value(after, "process_open_fds") > 0
    assert value(after, "conclave_cache_lookups_total", backend="memory", result="miss") > 0


async def test_an_agent_down_counts_under_its_name_then_the_breaker_opens(
    tmp_path: Path,
) -> None:
    """momentum over HTTP on a closed port: errors, then circuit_open, the breaker gauge."""
    agents = {"http": {"momentum": True}, "ports": {"momentum": closed_port()},
              "breaker": {"failures": 2, "open_s": 60}}  # fmt: skip
    async for api in _api(make_settings(tmp_path, agents=agents)):
        before = await scrape(api)
        for _ in range(4):
            assert (await api.post("/pipeline/run", json=RUN)).status_code == 201
        after = await scrape(api)
    steps = "conclave_agent_call_duration_seconds_count"

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta(steps, agent="momentum", mode="http", outcome="error") == 2
    assert delta(steps, agent="momentum", mode="http", outcome="circuit_open") == 2
    assert delta("conclave_runs_degraded_total", agent="momentum") == 4
    assert delta("conclave_run_duration_seconds_count", mode="mixed") == 4
    assert value(after, "conclave_agent_breaker_state", agent="momentum") == 2  # open
    probe_at = value(after, "conclave_agent_breaker_next_probe_timestamp_seconds",
                     agent="momentum")  # fmt: skip
    assert time.time() + 50 < probe_at <= time.time() + 60


async def test_an_agent_service_exports_its_own_requests(tmp_path: Path) -> None:
    """The pure ASGI ``POST /run`` counts as route ``/run``, by status class."""
    app = create_agent_app("momentum", make_settings(tmp_path))
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            before = await scrape(c)
            assert (await c.post("/run", json=RUN)).status_code == 200
            bad = await c.post("/run", content=b"{", headers={"content-type": "application/json"})
            assert bad.status_code == 400
            assert (await c.get("/nowhere")).status_code == 404
            after = await scrape(c)
    http = "conclave_http_request_duration_seconds_count"
    for cls in ("2xx", "4xx"):
        labels = {"service": "momentum", "method": "POST", "route": "/run", "status_class": cls}
        assert value(after, http, **labels) - value(before, http, **labels) == 1
    unmatched = {"service": "momentum", "method": "GET", "route": "unmatched",
                 "status_class": "4xx"}  # fmt: skip
    assert value(after, http, **unmatched) - value(before, http, **unmatched) == 1


async def test_metrics_off_removes_the_route_and_the_counts(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, metrics={"enabled": False})
    async for api in _api(settings):
        assert (await api.post("/pipeline/run", json=RUN)).status_code == 201
        assert (await api.get("/metrics")).status_code == 404


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_cache_hits_and_misses_by_backend(tmp_path: Path, backend: str) -> None:
    """Two fetches of one window: a miss then a hit; a Redis that refuses counts an error."""
    url = f"redis://127.0.0.1:{closed_port()}/0" if backend == "redis" else None
    cache = make_cache(CacheSettings(), url)
    source = CachedSource(SimSource(now_ms=lambda: 1_700_000_000_000), cache, ttl_s=30)

    def count(result: str) -> float:
        labels = {"backend": backend, "result": result}
        return REGISTRY.get_sample_value("conclave_cache_lookups_total", labels) or 0.0

    before = {r: count(r) for r in ("hit", "miss", "error")}
    for _ in range(2):
        await source.get_candles("BTCUSDT", "1h", 50)
    await source.aclose()
    got = {r: count(r) - before[r] for r in before}
    if backend == "memory":
        assert got == {"hit": 1, "miss": 1, "error": 0}
    else:  # refused: the first lookup fails (error, then a miss); the cooldown bypasses
        assert got["error"] >= 1
        assert got["miss"] == 2
        assert got["hit"] == 0


@pytest.mark.parametrize(("status", "kind"), [(429, "paused"), (418, "banned")])
async def test_exchange_weight_throttling_and_pause_against_the_fake_binance(
    stub: FakeBinance, status: int, kind: str
) -> None:
    """Stub-BX reports the weight it counted; a 429/418 is counted and its pause end set."""
    stub.extra_weight = 1234  # as if other clients of this IP had spent it this minute
    src = BinanceSource(BinanceSettings(base_url=stub.base_url), rng=random.Random(7))
    throttled = {"source": "binance", "code": str(status)}
    before = REGISTRY.get_sample_value("conclave_exchange_throttled_responses_total", throttled)
    await src.get_candles("BTCUSDT", "1h", 10)
    used = REGISTRY.get_sample_value("conclave_exchange_weight_used", {"source": "binance"})
    assert used == 1234 + sum(h.weight for h in stub.requests())  # its X-MBX-USED-WEIGHT-1M
    limit = REGISTRY.get_sample_value("conclave_exchange_weight_limit", {"source": "binance"})
    assert limit == BinanceSettings().weight_budget
    stub.push(Fault(status=status, headers={"Retry-After": "7"}))
    with pytest.raises(RateLimitedError):
        await src.get_candles("BTCUSDT", "1h", 11)
    await src.aclose()
    after = REGISTRY.get_sample_value("conclave_exchange_throttled_responses_total", throttled)
    assert (after or 0) - (before or 0) == 1
    until = REGISTRY.get_sample_value(
        "conclave_exchange_paused_until_timestamp_seconds", {"source": "binance", "kind": kind}
    )
    assert until is not None
    assert time.time() + 5 < until <= time.time() + 7.5  # Retry-After 7 s, from the answer


async def test_clock_skew_is_the_measured_offset() -> None:
    """A probe that finds the exchange 1.5 s ahead sets the skew gauge to 1.5."""
    local = 1_700_000_000_000

    async def probe() -> ClockSample:
        return ClockSample(offset_ms=1500, rtt_ms=20.0, measured_at_ms=local)

    clock = ExchangeClock(probe, InProcessOffsets(), local_ms=lambda: local, source="skewtest")
    assert await clock.exchange_now_ms() == local + 1500
    skew = REGISTRY.get_sample_value("conclave_exchange_clock_skew_seconds", {"source": "skewtest"})
    assert skew == 1.5
