"""Traces (issue 11 item 3): off by default and then free; on, one run is one trace across
the orchestrator and real agent processes, and no span holds a body, a header or a secret."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from opentelemetry import trace

from conclave.agents import REGISTRY
from conclave.logging import configure_logging
from conclave.observability import tracing
from conclave.observability.tracing import tracing_config
from conclave.observability.tracing_http import TraceMiddleware
from conclave.pipeline import Pipeline
from conclave.pipeline.agent_client import AgentHttpClient
from conclave.pipeline.http_runner import HttpRunner
from conclave.scheduler import Job
from conclave.services.execute import build_scheduler
from conclave.services.runtime import Runtime
from tests.observability.tracing_helpers import (
    BODY,
    SECRETS,
    Got,
    OtlpReceiver,
    api_client,
    assert_nothing_private,
    from_sdk,
    make_settings,
    memory_tracing,
    one,
    otel_env,
    post_run,
    reset_tracing,
    traced_agents,
)
from tests.services.helpers import NOW_ISO, SIM_NOW, served, sim_gateway

HTTP_AGENTS = ["momentum", "order-flow", "market-structure"]
NEW_ACCOUNT = {"name": "traced", "balance": 10_000, "quote": "USDT"}


@pytest.fixture(autouse=True)
def _default_tracing() -> Iterator[None]:
    """Every test starts and ends with tracing off (the default)."""
    reset_tracing()
    yield
    reset_tracing()


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Logging as JSON lines into a buffer; the previous configuration restored."""
    saved, root = structlog.get_config(), logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = io.StringIO()
    configure_logging("INFO", json=True, stream=out)
    try:
        yield out
    finally:
        structlog.configure(**saved)
        root.handlers[:], root.level = handlers, level


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


# -- configuration ------------------------------------------------------------------------


def test_the_standard_variables_switch_tracing_on_and_nothing_else_does() -> None:
    """Off with no variable, with OTEL_TRACES_EXPORTER=none and with OTEL_SDK_DISABLED=true;
    on with an exporter named or an OTLP endpoint set; the endpoint gains /v1/traces only
    when it is the base one."""
    svc = tracing.ORCHESTRATOR_SERVICE
    assert not tracing_config({}, service_name=svc).enabled
    assert not tracing_config({"PATH": "/bin"}, service_name=svc).enabled
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}
    on = tracing_config(base, service_name=svc)
    assert on.enabled
    assert on.exporters == ("otlp",)
    assert on.endpoint == "http://collector:4318/v1/traces"
    assert on.service_name == svc
    assert on.resource["service.name"] == svc
    assert not tracing_config(base | {"OTEL_TRACES_EXPORTER": "none"}, service_name=svc).enabled
    assert not tracing_config(base | {"OTEL_SDK_DISABLED": "TRUE"}, service_name=svc).enabled
    direct = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/custom"}
    assert tracing_config(direct, service_name=svc).endpoint == "http://c:4318/custom"
    console = tracing_config({"OTEL_TRACES_EXPORTER": "console, otlp"}, service_name=svc)
    assert console.exporters == ("console", "otlp")
    assert console.endpoint == tracing.DEFAULT_ENDPOINT


def test_service_name_sampler_headers_and_batching_come_from_the_variables() -> None:
    """OTEL_SERVICE_NAME beats service.name in OTEL_RESOURCE_ATTRIBUTES, which beats the
    default; sampler, headers and the batch processor's settings are read as given."""
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs,deployment.environment=ci%20one",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=conclave",
        "OTEL_BSP_SCHEDULE_DELAY": "250",
        "OTEL_BSP_MAX_QUEUE_SIZE": "100",
    }
    cfg = tracing_config(env, service_name="conclave-agent-momentum")
    assert cfg.service_name == "from-attrs"
    assert cfg.resource["deployment.environment"] == "ci one"
    assert (cfg.sampler, cfg.sampler_arg) == ("parentbased_traceidratio", 0.25)
    assert cfg.headers == {"x-tenant": "conclave"}
    assert cfg.batch == {"schedule_delay_millis": 250, "max_queue_size": 100}
    named = tracing_config(env | {"OTEL_SERVICE_NAME": "mine"}, service_name="x")
    assert named.service_name == named.resource["service.name"] == "mine"
    assert (
        tracing_config({}, service_name="conclave-scheduler").service_name == "conclave-scheduler"
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "PROTOCOL"),
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, "SAMPLER_ARG"),
        ({"OTEL_BSP_SCHEDULE_DELAY": "soon"}, "OTEL_BSP_SCHEDULE_DELAY"),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "-1"}, "OTEL_BSP_MAX_QUEUE_SIZE"),
    ],
)
def test_a_value_that_cannot_be_honoured_fails_at_start_naming_the_variable(
    env: dict[str, str], variable: str
) -> None:
    """A typo or an unsupported choice is a ValueError naming the variable, not a default."""
    with pytest.raises(ValueError, match=variable):
        tracing_config(env, service_name="x")


# -- off ---------------------------------------------------------------------------------------


async def test_off_by_default_no_span_no_trace_id_and_the_middleware_passes_through(
    tmp_path: Path, captured: io.StringIO
) -> None:
    """With no configuration nothing installs a provider, a run's log lines carry no
    trace_id, and TraceMiddleware hands the very same scope, receive and send to the app."""
    assert not tracing.configure_tracing(tracing_config({}, service_name="x"))
    assert not tracing.enabled()
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    run = await post_run(make_settings(tmp_path))
    logged = [e for e in lines(captured) if e.get("run_id") == run["runId"]]
    assert logged, "expected log lines inside the run"
    assert all("trace_id" not in e for e in lines(captured))
    with tracing.span("anything") as span:
        assert not span.is_recording()
        assert not span.get_span_context().is_valid
    seen: list[tuple[Any, ...]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    scope, receive, send = (
        {"type": "http", "method": "GET", "path": "/x", "headers": []},
        object(),
        object(),
    )
    await TraceMiddleware(app, service="t")(scope, receive, send)  # type: ignore[arg-type]
    assert seen == [(scope, receive, send)]


# -- on, in process ----------------------------------------------------------------------------


async def test_a_run_in_process_is_one_trace_under_the_request(tmp_path: Path) -> None:
    """POST /pipeline/run: the server span is the root; pipeline.run (with run id,
    symbol, timeframe, mode) holds market.fetch, nine internal agent.call spans and the
    decision; db.save_run is the request's child; every span shares one trace id."""
    with memory_tracing() as exporter:
        run = await post_run(make_settings(tmp_path))
        spans = [from_sdk(s) for s in exporter.get_finished_spans()]
    root = one(spans, "POST /pipeline/run")
    assert root.parent_id is None
    assert root.kind == "server"
    assert root.attributes == {"http.request.method": "POST", "http.route": "/pipeline/run",
                               "http.response.status_code": 201}  # fmt: skip
    assert {s.trace_id for s in spans} == {root.trace_id}
    pipe = one(spans, "pipeline.run")
    assert pipe.parent_id == root.span_id
    assert pipe.attributes["conclave.run_id"] == run["runId"]
    assert "conclave.account_id" not in pipe.attributes  # the run names no account
    assert (pipe.attributes["conclave.symbol"], pipe.attributes["conclave.timeframe"]) == (
        "BTCUSDT",
        "1h",
    )
    assert pipe.attributes["conclave.mode"] == "local"
    assert one(spans, "market.fetch").parent_id == pipe.span_id
    assert one(spans, "decision").parent_id == pipe.span_id
    save = one(spans, "db.save_run")
    assert save.parent_id == root.span_id
    assert save.kind == "client"
    assert save.attributes["conclave.run_id"] == run["runId"]
    for name in REGISTRY:
        call = one(spans, f"agent.call {name}")
        assert call.parent_id == pipe.span_id
        assert call.kind == "internal"
        assert call.attributes["conclave.agent"] == name
        assert call.attributes["conclave.step.status"] == run["steps"][name]["meta"]["status"]
    fetch = one(spans, "market.fetch")
    assert all(s.parent_id == fetch.span_id for s in spans if s.name == "cache.get")
    assert_nothing_private(spans, BODY)


async def test_log_lines_inside_a_run_carry_its_run_id_and_trace_id(captured: io.StringIO) -> None:
    """A line logged during a run (the failed step of an unreachable agent) carries the run
    id and the trace id of the run's spans, 32 hex digits."""
    with memory_tracing() as exporter:
        async with AgentHttpClient() as client:
            runner = HttpRunner("momentum", "http://127.0.0.1:9", client=client, timeout_s=1.0)
            async with Pipeline(sim_gateway(), runners={"momentum": runner}) as pipe:
                run = await pipe.run(None, "BTCUSDT", "1h", as_of_ms=SIM_NOW, now_iso=NOW_ISO)
        root = one([from_sdk(s) for s in exporter.get_finished_spans()], "pipeline.run")
    [failed] = [
        e for e in lines(captured) if e["event"] == "step_failed" and e["agent"] == "momentum"
    ]
    assert failed["run_id"] == run.run_id
    assert failed["trace_id"] == root.trace_id
    assert len(root.trace_id) == 32


async def test_each_agent_call_names_the_run_and_carries_traceparent_only_while_on() -> None:
    """x-run-id is the run's id on every call; traceparent is absent while tracing is off,
    and while on it names the run's trace and the agent.call span as parent."""
    received: list[dict[str, str]] = []

    async def agent(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        received.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def one_run() -> str:
        async with AgentHttpClient() as client:
            runner = HttpRunner("momentum", url, client=client, timeout_s=5.0)
            async with Pipeline(sim_gateway(), runners={"momentum": runner}) as pipe:
                run = await pipe.run(None, "BTCUSDT", "1h", as_of_ms=SIM_NOW, now_iso=NOW_ISO)
        return run.run_id

    with served(agent) as url:
        off_id = await one_run()
        with memory_tracing() as exporter:
            on_id = await one_run()
            spans = [from_sdk(s) for s in exporter.get_finished_spans()]
    off, on = received
    assert off["x-run-id"] == off_id
    assert "traceparent" not in off
    call = one(spans, "agent.call momentum")
    assert call.kind == "client"
    assert call.attributes["conclave.agent.mode"] == "http"
    assert call.attributes["conclave.step.reason"] == "http_5xx"
    assert call.status == "error"
    assert on["x-run-id"] == on_id
    version, trace_id, parent_id, flags = on["traceparent"].split("-")
    assert (version, trace_id, parent_id) == ("00", call.trace_id, call.span_id)
    assert int(flags, 16) & 1  # sampled


async def test_server_spans_are_named_by_route_template_without_the_query(tmp_path: Path) -> None:
    """GET /pipeline/runs/{id} is named by its template (the id is not in the name); a path
    no route matches is named by the path; the query string appears nowhere."""
    with memory_tracing() as exporter:
        async with api_client(make_settings(tmp_path)) as api:
            missing = "0" * 32
            assert (await api.get(f"/pipeline/runs/{missing}?x={SECRETS[2]}")).status_code == 404
            assert (await api.get(f"/nowhere?x={SECRETS[2]}")).status_code == 404
        spans = [from_sdk(s) for s in exporter.get_finished_spans()]
    by_route = one(spans, "GET /pipeline/runs/{run_id}")
    assert by_route.attributes["http.route"] == "/pipeline/runs/{run_id}"
    assert by_route.attributes["http.response.status_code"] == 404
    unmatched = one(spans, "GET /nowhere")
    assert "http.route" not in unmatched.attributes
    assert_nothing_private(spans, {})


# -- on, across real agent processes -------------------------------------------------------------


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.fixture(scope="module")
def agent_urls(
    receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Three real agent services exporting their spans to ``receiver`` (stopped by PID)."""
    with traced_agents(
        HTTP_AGENTS, otel_env(receiver.url), tmp_path_factory.mktemp("agents")
    ) as urls:
        yield urls


async def test_an_http_mode_run_is_one_trace_across_the_agent_processes(
    tmp_path: Path, receiver: OtlpReceiver, agent_urls: dict[str, str]
) -> None:
    """Three agents over HTTP, six in process: each agent process's ``agent.compute <name>``
    span (with the step's status) is the child of the orchestrator's client ``agent.call
    <name>`` span through traceparent, with no ``POST /run`` server span between them (see
    `TraceMiddleware`'s ``bare_routes``); one trace id for the whole run; no span on either
    side holds a secret, a header or a body."""
    settings = make_settings(tmp_path, agents={"http": dict.fromkeys(HTTP_AGENTS, True),
                                               "urls": agent_urls, "timeout_s": 10.0})  # fmt: skip
    with memory_tracing() as exporter:
        run = await post_run(settings)
        mine = [from_sdk(s) for s in exporter.get_finished_spans()]
    assert all(run["steps"][n]["meta"]["status"] == "ok" for n in HTTP_AGENTS), run["steps"]
    root = one(mine, "POST /pipeline/run")
    pipe = one(mine, "pipeline.run")
    assert pipe.attributes["conclave.mode"] == "mixed"

    def complete(spans: list[Got]) -> bool:
        names = {(s.service, s.name) for s in spans if s.trace_id == root.trace_id}
        return all((f"conclave-agent-{n}", f"agent.compute {n}") in names for n in HTTP_AGENTS)

    theirs = [s for s in receiver.wait_for(complete) if s.trace_id == root.trace_id]
    for name in REGISTRY:
        call = one(mine, f"agent.call {name}")
        assert call.parent_id == pipe.span_id
        assert call.trace_id == root.trace_id
        assert call.kind == ("client" if name in HTTP_AGENTS else "internal")
    for name in HTTP_AGENTS:
        service = f"conclave-agent-{name}"
        assert not [s for s in theirs if s.service == service and s.name == "POST /run"]
        compute = one(theirs, f"agent.compute {name}", service)
        assert compute.parent_id == one(mine, f"agent.call {name}").span_id
        assert compute.attributes == {"conclave.agent": name, "conclave.status": "ok"}
    assert {s.service for s in theirs} == {f"conclave-agent-{n}" for n in HTTP_AGENTS}
    assert_nothing_private(mine + theirs, BODY)


async def test_a_scheduled_run_is_one_trace_under_its_slot(tmp_path: Path) -> None:
    """conclave scheduler: ``scheduler.slot`` (job, slot, missed) is the root; the run and
    its database write are its children."""
    settings = make_settings(tmp_path)
    job = Job("sched-acct", "BTCUSDT", "1h")
    with memory_tracing(tracing.SCHEDULER_SERVICE) as exporter:
        async with await Runtime.open(settings, now_ms=lambda: SIM_NOW) as runtime:
            [outcome] = await build_scheduler(settings, runtime, only=job).run_due_once()
        spans = [from_sdk(s) for s in exporter.get_finished_spans()]
    assert outcome.status == "ok"
    slot = one(spans, "scheduler.slot")
    assert slot.parent_id is None
    assert slot.attributes["conclave.job_id"] == job.id
    assert slot.attributes["conclave.missed"] == 0
    assert {s.trace_id for s in spans} == {slot.trace_id}
    pipe = one(spans, "pipeline.run")
    assert pipe.parent_id == slot.span_id
    assert pipe.attributes["conclave.run_id"] == outcome.run_id
    assert one(spans, "db.save_run").parent_id == slot.span_id


async def test_a_run_for_a_paper_account_names_it_on_the_run_span(tmp_path: Path) -> None:
    """The account is an attribute of pipeline.run (and the run is still one trace)."""
    with memory_tracing() as exporter:
        async with api_client(make_settings(tmp_path)) as api:
            created = await api.post("/accounts", json=NEW_ACCOUNT)
            assert created.status_code == 201, created.text
            account = created.json()["id"]
            resp = await api.post("/pipeline/run", json=BODY | {"accountId": account})
            assert resp.status_code == 201, resp.text
        spans = [from_sdk(s) for s in exporter.get_finished_spans()]
    pipe = [s for s in spans if s.name == "pipeline.run"][-1]
    assert pipe.attributes["conclave.account_id"] == account
    assert pipe.attributes["conclave.run_id"] == resp.json()["runId"]
    root = one(spans, "POST /pipeline/run")
    assert pipe.parent_id == root.span_id
    assert pipe.trace_id == root.trace_id
