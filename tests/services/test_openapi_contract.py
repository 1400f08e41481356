"""E1: the OpenAPI documents are exact. schemathesis, in process against the orchestrator and
one agent service, every check, with a valid API key: 0 failures.

The run is the CLI's (``schemathesis run --checks all``): the coverage phase (boundaries,
missing and unexpected parameters, undocumented methods), the fuzzing phase (at least
`MAX_EXAMPLES` generated requests per operation, as far as its inputs allow) and the
stateful phase, which follows the documents' links (a run's ``runId`` into
``GET /pipeline/runs/{run_id}``, an account's ``id`` into its routes, a job's ``id`` into
``DELETE``) and the ones schemathesis infers. The orchestrator runs on SQLite in tmp_path and
the simulated market; the agents it could call over HTTP point at a closed port.

Two rules of the API are not expressible in JSON Schema, and the generator is told so
(hooks below), never the check: an account's three risk levels rise (warn <= reduce <=
halt), and an ``Idempotency-Key`` names one request body (the same key with another body is
422 by design, RELIABILITY G2). One answer depends on stored state, not on the request: a
run of an account's own markets is 422 naming ``accountId`` while the account has no
runnable market; that failure alone is dropped (`_account_state_refusal`). An agent's
inline context has more such rules (equal column lengths, rising open times, the gateway's
row rules, the run's timeframe among the keys): a schema-valid inline context may be 422,
so for ``POST /run`` alone positive_data_acceptance also accepts 422; every other check
holds as is.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import re
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from schemathesis.engine import Status, events, from_schema
from schemathesis.hooks import GLOBAL_HOOK_DISPATCHER
from schemathesis.python import asgi as st_asgi

from conclave.agents import REGISTRY
from conclave.security.keys import Scope
from conclave.services.agent_app import create_agent_app
from conclave.services.api import create_app
from conclave.services.run_request import IDEMPOTENCY_KEY_PATTERN
from conclave.settings import Settings
from conclave.store import RunStore
from conclave.store.keys_repo import KeyRepo
from tests.security.conftest import SECRET
from tests.services.helpers import SIM_NOW, free_port, sim_gateway

MAX_EXAMPLES = 100


def _settings(tmp_path: Path) -> Settings:
    closed = free_port()  # nothing listens: a run with useHttpAgents fails its steps at once
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path,
        logs_dir=tmp_path / "logs",
        database_url=None,
        redis_url=None,
        use_http_agents=False,
        log_level="ERROR",
        agents={"ports": dict.fromkeys(REGISTRY, closed)},
        security={
            "key_secret": SECRET,
            "runs_per_minute": 1_000_000,
            "requests_per_second": 1_000_000,
        },
    )


async def _admin_key(tmp_path: Path) -> str:
    """An admin key in the store the app opens (SQLite under ``tmp_path``)."""
    store = await RunStore.open(None, data_dir=tmp_path)
    try:
        generated, _ = await KeyRepo(store).create(
            "contract", Scope.ADMIN, _hasher(), now_ms=int(time.time() * 1000)
        )
    finally:
        await store.aclose()
    return generated.key


def _hasher() -> Any:
    from conclave.security.keys import KeyHasher

    return KeyHasher(SECRET)


def _ordered_levels(context: Any, body: Any) -> Any:
    """POST /accounts: sort each risk-level triple (warn <= reduce <= halt)."""
    if context.operation is None or context.operation.path != "/accounts":
        return body
    limits = body.get("limits") if isinstance(body, dict) else None
    if isinstance(limits, dict):
        for name in ("drawdown_limits", "daily_loss_limits"):
            levels = limits.get(name)
            if isinstance(levels, list) and all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in levels
            ):
                limits[name] = sorted(levels)
    return body


def _one_body_per_key(context: Any, case: Any, kwargs: Any) -> None:
    """Before each call: a valid Idempotency-Key gets the digest of the body it is sent with,
    so a key names one body (a repeat of both is a replay, as a client would send it)."""
    headers = case.headers if isinstance(case.headers, MutableMapping) else {}
    for name, key in list(headers.items()):
        wire = "null" if key is None else str(key)  # as it is sent
        if name.lower() == "idempotency-key" and IDEMPOTENCY_KEY_PATTERN.match(wire):
            suffix = "-" + hashlib.sha256(repr(case.body).encode()).hexdigest()[:16]
            headers[name] = wire[: 255 - len(suffix)] + suffix


def _account_state_refusal(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """Keep every failure but one: a run of an account's own markets refused (422 naming
    ``accountId``) because of the account's state (no market yet, more than 20, one outside
    the allowlists): the request is well formed, the account is not ready to run."""
    if case.operation.path != "/pipeline/run" or response.status_code != 422:
        return True
    if type(failure).__name__ != "RejectedPositiveData":
        return True
    try:
        field = response.json()["error"].get("field")
    except Exception:
        return True
    return not (field == "accountId" and isinstance(case.body, dict) and "symbol" not in case.body)


def run_schemathesis(app: Any, key: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """schemathesis over ``app``'s /openapi.json, every check, ``key`` on every request."""
    config = schemathesis.Config.from_dict(
        {
            "headers": {"Authorization": f"Bearer {key}"},
            "generation": {"max-examples": MAX_EXAMPLES},
            "checks": {"enabled": True},
            "seed": 20261202,
            **(extra or {}),
        }
    )
    auth = {"Authorization": f"Bearer {key}"}  # /openapi.json needs a key too
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config, headers=auth)
    schema.hook("map_body")(_ordered_levels)
    schema.hook("filter_failure")(_account_state_refusal)
    t0, cpu0 = time.monotonic(), time.process_time()
    counts: collections.Counter[str] = collections.Counter()
    took: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    errors: list[str] = []
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            counts[f"{event.phase.value} {event.label or 'links'}"] += len(recorder.cases)
            took[event.label or "links"] += event.elapsed_time
            for case_id, checks in recorder.checks.items():
                for check in checks:
                    if check.status == Status.FAILURE:
                        case = recorder.cases.get(case_id)
                        failure = check.failure_info.failure if check.failure_info else ""
                        curl = case.value.as_curl_command() if case is not None else ""
                        answer = recorder.interactions.get(case_id)
                        got = (
                            ""
                            if answer is None or answer.response is None
                            else (
                                f"{answer.response.status_code} {answer.response.content[:300]!r}"
                            )
                        )
                        failures.append(f"{check.name}: {failure}\n  {curl[:600]}\n  -> {got}")
        elif isinstance(event, events.NonFatalError | events.FatalError):
            errors.append(str(event)[:1000])
    return {"counts": counts, "failures": failures, "errors": errors, "took": took,
            "seconds": time.monotonic() - t0, "cpu_s": time.process_time() - cpu0}  # fmt: skip


def _report(name: str, result: dict[str, Any]) -> None:
    counts = result["counts"]
    fuzz = {k: v for k, v in counts.items() if k.startswith("fuzzing")}
    slow = ", ".join(f"{k} {v:.0f} s" for k, v in result["took"].most_common(4))
    print(f"\n{name}: {result['seconds']:.1f} s ({result['cpu_s']:.1f} s CPU; slowest: {slow}),"
          f" {sum(counts.values())} requests; "
          f"fuzzing per operation: {dict(sorted(fuzz.items()))}; "
          f"coverage {sum(v for k, v in counts.items() if k.startswith('coverage'))}, "
          f"stateful {sum(v for k, v in counts.items() if k.startswith('stateful'))}")  # fmt: skip


@pytest.fixture
def stop_lifespans() -> Any:
    """The call hook for this module only; schemathesis keeps each ASGI app's lifespan open
    for the process: close them."""
    schemathesis.hook("before_call")(_one_body_per_key)  # a global hook: removed below
    yield
    GLOBAL_HOOK_DISPATCHER.unregister(_one_body_per_key)
    st_asgi.shutdown_lifespans()


def _assert_clean(result: dict[str, Any]) -> None:
    assert not result["errors"], "\n".join(result["errors"][:5])
    assert not result["failures"], (
        f"{len(result['failures'])} failures:\n"
        + "\n".join(dict.fromkeys(result["failures"]))[:6000]
    )


def _fuzzed(result: dict[str, Any], operation: str) -> int:
    return int(result["counts"].get(f"fuzzing {operation}", 0))


def test_the_orchestrator_keeps_its_contract(tmp_path: Path, stop_lifespans: None) -> None:
    """Every operation of /openapi.json, every check, links followed: 0 failures."""
    key = asyncio.run(_admin_key(tmp_path))
    result = run_schemathesis(create_app(_settings(tmp_path)), key)
    _report("orchestrator", result)
    _assert_clean(result)
    for operation in ("POST /pipeline/run", "POST /accounts", "GET /pipeline/runs",
                      "POST /scheduler/jobs", "GET /pipeline/runs/{run_id}"):  # fmt: skip
        assert _fuzzed(result, operation) >= MAX_EXAMPLES, (operation, result["counts"])
    assert sum(v for k, v in result["counts"].items() if k.startswith("stateful")) > 0


def test_an_agent_service_keeps_its_contract(tmp_path: Path, stop_lifespans: None) -> None:
    """The momentum service's document, every check: 0 failures (see the module on /run)."""
    app = create_agent_app("momentum", _settings(tmp_path), now_ms=lambda: SIM_NOW,
                           gateway=sim_gateway())  # fmt: skip
    inline_rules = {
        "include-path": "/run",
        "checks": {"positive_data_acceptance": {"expected-statuses": [
            "2xx", "401", "403", "404", "409", "422", "429"]}},
    }  # fmt: skip
    result = run_schemathesis(app, "unused-by-agents", {"operations": [inline_rules]})
    _report("agent momentum", result)
    _assert_clean(result)
    assert _fuzzed(result, "POST /run") >= MAX_EXAMPLES, result["counts"]


def test_every_document_is_self_contained(tmp_path: Path) -> None:
    """No $ref points outside the document (a ``#/$defs/...`` would dangle)."""
    import json

    for app in (create_app(_settings(tmp_path)), create_agent_app("momentum", _settings(tmp_path))):
        text = json.dumps(app.openapi())
        for ref in set(re.findall(r'"\$ref": "([^"]+)"', text)):
            assert ref.startswith("#/components/schemas/"), ref
            assert ref.rsplit("/", 1)[1] in app.openapi()["components"]["schemas"], ref


def test_every_success_answer_has_a_schema(tmp_path: Path) -> None:
    """Every 2xx of every operation, in both documents, says what its body is: a non-empty
    schema for each media type (a 204 alone has no body, and documents none)."""
    apps = (create_app(_settings(tmp_path)), create_agent_app("momentum", _settings(tmp_path)))
    for app in apps:
        for path, operations in app.openapi()["paths"].items():
            for method, operation in operations.items():
                for status, answer in operation["responses"].items():
                    where = f"{app.title}: {method.upper()} {path} {status}"
                    if not status.startswith("2"):
                        continue
                    if status == "204":
                        assert not answer.get("content"), where
                        continue
                    assert answer.get("content"), where
                    for media, content in answer["content"].items():
                        assert content.get("schema"), f"{where} {media}"
