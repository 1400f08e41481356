"""The orchestrator exports its traces over OTLP/HTTP, configured by ``OTEL_*`` variables
alone, to a collector on loopback; the exporter's own headers never become span data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conclave.observability import tracing
from tests.observability.tracing_helpers import (
    BODY,
    Got,
    OtlpReceiver,
    assert_nothing_private,
    make_settings,
    one,
    otel_env,
    post_run,
    reset_tracing,
)


@pytest.fixture(autouse=True)
def _default_tracing() -> Iterator[None]:
    reset_tracing()
    yield
    reset_tracing()


async def test_the_orchestrator_exports_a_run_over_otlp_http(tmp_path: Path) -> None:
    """With OTEL_TRACES_EXPORTER=otlp and an endpoint (nothing else), a run's spans arrive
    at the collector under service conclave-orchestrator once tracing shuts down, the
    exporter sends OTEL_EXPORTER_OTLP_HEADERS to the collector, and no span holds them."""
    with OtlpReceiver() as receiver:
        env = otel_env(receiver.url) | {"OTEL_EXPORTER_OTLP_HEADERS": "x-collector-token=tok-123"}
        config = tracing.tracing_config(env, service_name=tracing.ORCHESTRATOR_SERVICE)
        assert tracing.configure_tracing(config)
        try:
            run = await post_run(make_settings(tmp_path))
        finally:
            tracing.shutdown_tracing()  # flushes the batch processor

        def complete(spans: list[Got]) -> bool:
            return any(s.name == "db.save_run" for s in spans)

        spans = receiver.wait_for(complete)
    assert {s.service for s in spans} == {"conclave-orchestrator"}
    root = one(spans, "POST /pipeline/run")
    assert {s.trace_id for s in spans} == {root.trace_id}
    pipe = one(spans, "pipeline.run")
    assert pipe.parent_id == root.span_id
    assert pipe.attributes["conclave.run_id"] == run["runId"]
    assert one(spans, "db.save_run").parent_id == root.span_id
    assert all(h.get("x-collector-token") == "tok-123" for h in receiver.requests)
    assert all("tok-123" not in str(s.attributes) for s in spans)
    assert_nothing_private(spans, BODY)


def test_tracing_stays_off_when_the_sdk_is_disabled() -> None:
    """OTEL_SDK_DISABLED=true wins over an endpoint: nothing is installed."""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SDK_DISABLED": "true"}
    assert not tracing.configure_tracing(tracing.tracing_config(env, service_name="x"))
    assert not tracing.enabled()
