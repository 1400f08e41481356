"""The agent contract, checked against any running service (``conclave agents check URL``).

An agent may be written in any language (ARCHITECTURE.md: the first promise); what makes it
one is this contract, published as ``docs/agent-contract.openapi.json``. `check_agent`
calls a service the way the orchestrator does and answers one `Check` per rule:

- ``GET /health`` (the seed's ``status``, ``agent``, ``timestamp``), ``/health/live``,
  ``/health/ready`` and ``/info`` (``name``, ``version``, ``endpoints``), names agreeing;
- ``POST /run`` with data inline, built exactly as the orchestrator builds an agent's
  context (a simulated market, labelled so, plus a headline and a fresh account): an answer
  the orchestrator's own parser (`parse_answer`) accepts as an ok step, every field in its
  range, and the same answer for the same context;
- ``asOf``: the full data with ``asOf`` five bars back answers exactly as the data cut at
  that instant (no bar closed after ``asOf`` is seen), and ``meta.as_of`` is not later;
- an ids-only context: a valid answer, or 422 naming ``candles`` (a service without a data
  layer of its own says so; the orchestrator always sends the data);
- bad input: malformed JSON 400, another content type 415, a missing symbol 422 naming
  ``symbol``, an unknown timeframe 422 naming ``timeframe``, a broken candle row 422 naming
  the ``candles`` field, each with the ``{"error": {"code", "message", "field"}}`` body and
  never a 5xx;
- signing, when a secret is given: every call above is signed as the orchestrator signs it
  (`conclave.security.signing`), and an unsigned or altered call is 401.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx2
import orjson
from pydantic import SecretStr

from conclave.agents import REGISTRY
from conclave.market.gateway import MarketGateway
from conclave.market.sources import open_source
from conclave.news.headline import Headline
from conclave.pipeline.context import STEP_STATUSES, InputPlan, PipelineContext, fetch_plan
from conclave.pipeline.http_runner import parse_answer
from conclave.pipeline.wire import context_dict
from conclave.security.signing import Signer
from conclave.settings import Settings
from conclave.timeframes import Timeframe, iso_ms

Outcome = Literal["pass", "fail", "skip"]
JSON = "application/json"
#: Bars the asOf check steps back from the newest one.
AS_OF_BARS_BACK = 5


@dataclass(frozen=True, slots=True)
class Check:
    """One rule of the contract and how the service fared."""

    name: str
    outcome: Outcome
    detail: str = ""


class _FailedError(Exception):
    """A rule not met; the message says how."""


async def sample_context(
    settings: Settings, *, symbol: str, timeframe: str, now_ms: int, agent: str | None
) -> dict[str, Any]:
    """The wire context (a dict) the orchestrator would send agent ``agent`` for a run on
    the simulated market as of ``now_ms``, with `AS_OF_BARS_BACK` more bars; an unknown
    agent gets every input any agent reads (all higher timeframes, news, the account)."""
    source = open_source("sim", settings, now_ms=lambda: now_ms)
    gateway = MarketGateway(source)
    try:
        agents = [cls() for cls in REGISTRY.values()]
        limit, higher = fetch_plan(agents, timeframe)
        limit += AS_OF_BARS_BACK  # room for the asOf rule to step back and still have enough
        snap = await gateway.snapshot(
            symbol, timeframe, higher=higher, limit=limit, as_of_ms=now_ms
        )
    finally:
        await gateway.aclose()
    # one headline before the asOf rule's instant, one after it (which that rule must drop)
    back, asset = snap.as_of_ms - AS_OF_BARS_BACK * Timeframe.parse(timeframe).ms, symbol[:3]
    news = [Headline(back - 3_600_000, f"{asset} rallies as inflows surge", assets=(asset,)),
            Headline(snap.as_of_ms - 60_000, f"{asset} slumps in a sharp sell-off",
                     assets=(asset,))]  # fmt: skip
    ctx = PipelineContext.from_snapshot(snap, account_id=None, news=news)
    if agent is not None and agent in REGISTRY:
        plan = InputPlan.of(REGISTRY[agent](), timeframe)
        plan = replace(plan, lookback=plan.lookback + AS_OF_BARS_BACK)
    else:
        plan = InputPlan(limit, higher, True, True)
    wire = orjson.dumps(context_dict(ctx.input(plan)), option=orjson.OPT_SERIALIZE_NUMPY)
    body: dict[str, Any] = orjson.loads(wire)  # plain lists, to cut and alter
    return body


def cut_at(body: dict[str, Any], as_of_ms: int) -> dict[str, Any]:
    """``body`` with only the bars of each timeframe closed by ``as_of_ms`` and the
    headlines published by then."""
    out = dict(body, asOf=as_of_ms)
    if body.get("news") is not None:
        out["news"] = [h for h in body["news"] if h["publishedMs"] <= as_of_ms]
    cut: dict[str, Any] = {}
    for tf, cols in body["candles"].items():
        bar = Timeframe.parse(tf).ms
        keep = sum(1 for t in cols["openTime"] if t + bar <= as_of_ms)
        cut[tf] = {k: v[:keep] for k, v in cols.items()}
    out["candles"] = cut
    return out


class _Client:
    """POSTs and GETs against the service, signed when a secret is given."""

    def __init__(self, http: httpx2.AsyncClient, url: str, signer: Signer | None) -> None:
        self.http, self.url, self.signer = http, url.rstrip("/"), signer
        self.prefix = urlsplit(self.url).path.rstrip("/")

    async def get(self, path: str) -> httpx2.Response:
        return await self.http.get(self.url + path)

    async def post(self, body: bytes, *, content_type: str = JSON, sign: bool = True,
                   signed_body: bytes | None = None) -> httpx2.Response:  # fmt: skip
        headers = {"Content-Type": content_type}
        if sign and self.signer is not None:
            path = self.prefix + "/run"
            headers |= self.signer.headers(
                "POST", path, body if signed_body is None else signed_body
            )
        return await self.http.post(self.url + "/run", content=body, headers=headers)

    async def run(self, context: dict[str, Any]) -> dict[str, Any]:
        answer = await self.post(orjson.dumps(context))
        _expect(answer, 200)
        data = _json(answer)
        if not isinstance(data, dict):
            raise _FailedError("the answer is not a JSON object")
        return data


def _json(response: httpx2.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise _FailedError(
            f"HTTP {response.status_code}: not JSON: {response.text[:80]!r}"
        ) from None


def _expect(response: httpx2.Response, status: int) -> None:
    if response.status_code != status:
        raise _FailedError(
            f"expected HTTP {status}, got {response.status_code}: {response.text[:160]}"
        )


def _iso(value: Any, field: str) -> None:
    if not isinstance(value, str) or not value.endswith("Z") or "T" not in value:
        raise _FailedError(f"{field} must be an ISO 8601 UTC time, got {value!r}")


def check_answer(data: dict[str, Any], name: str) -> str:
    """Why ``data`` breaks the answer's shape, or "" when it holds (any status)."""
    meta = data.get("meta")
    if not isinstance(meta, dict):
        return "meta must be an object"
    if meta.get("agent") != name:
        return f"meta.agent is {meta.get('agent')!r}, not {name!r}"
    if meta.get("status") not in STEP_STATUSES:
        return f"meta.status {meta.get('status')!r} is not one of {', '.join(STEP_STATUSES)}"
    duration = meta.get("duration_ms")
    if not isinstance(duration, int | float) or not math.isfinite(duration) or duration < 0:
        return f"meta.duration_ms must be a number >= 0, got {duration!r}"
    for key in ("version", "reason"):
        if not isinstance(meta.get(key), str):
            return f"meta.{key} must be a string"
    try:
        _iso(meta.get("timestamp"), "meta.timestamp")
        if meta.get("as_of") is not None:
            _iso(meta["as_of"], "meta.as_of")
    except _FailedError as exc:
        return str(exc)
    if not isinstance(data.get("payload"), dict):
        return "payload must be an object"
    score, confidence = data.get("score"), data.get("confidence")
    if meta["status"] == "ok" and not (
        isinstance(score, int | float) and -1 <= score <= 1
        and isinstance(confidence, int | float) and 0 <= confidence <= 100
    ):  # fmt: skip
        return f"score {score!r} must lie in [-1, 1] and confidence {confidence!r} in [0, 100]"
    return ""


def _verdict(data: dict[str, Any]) -> tuple[Any, ...]:
    meta = data["meta"]
    return data.get("score"), data.get("confidence"), meta.get("status"), meta.get("as_of")


def _error_field(response: httpx2.Response, status: int, field: str | None) -> None:
    _expect(response, status)
    body = _json(response)
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict) or not isinstance(err.get("code"), str):
        raise _FailedError(
            f'the body must be {{"error": {{"code", "message", "field"}}}}: {body!r}'
        )
    if not isinstance(err.get("message"), str):
        raise _FailedError("error.message must be a string")
    if field is not None and not str(err.get("field") or "").startswith(field):
        raise _FailedError(f"error.field is {err.get('field')!r}, expected {field!r}")


async def check_agent(
    url: str,
    settings: Settings,
    *,
    secret: SecretStr | None = None,
    symbol: str = "BTCUSDT",
    timeframe: str = "1h",
    now_ms: Callable[[], int] | None = None,
    timeout_s: float = 10.0,
) -> list[Check]:
    """Every rule of the contract against the service at ``url`` (``http://host:port``)."""
    clock = now_ms or (lambda: time.time_ns() // 1_000_000)
    signer = Signer(secret) if secret is not None else None
    checks: list[Check] = []
    async with httpx2.AsyncClient(timeout=timeout_s, trust_env=False) as http:
        client = _Client(http, url, signer)
        state: dict[str, Any] = {}

        async def rule(name: str, body: Callable[[], Awaitable[str]]) -> None:
            try:
                checks.append(Check(name, "pass", await body()))
            except _FailedError as exc:
                checks.append(Check(name, "fail", str(exc)))
            except httpx2.HTTPError as exc:
                checks.append(Check(name, "fail", f"{type(exc).__name__}: {exc}"))

        for name, body in _rules(client, settings, state, symbol, timeframe, clock):
            await rule(name, body)
        if signer is None:
            checks.append(Check("signing", "skip", "no agent secret (CONCLAVE_AGENTS__SECRET)"))
        else:
            await rule("signing", lambda: _signing(client, state))
    return checks


def _rules(client: _Client, settings: Settings, state: dict[str, Any], symbol: str,
           timeframe: str, clock: Callable[[], int]
           ) -> list[tuple[str, Callable[[], Awaitable[str]]]]:  # fmt: skip
    """The rules in order; later ones read what earlier ones found in ``state``."""

    async def health() -> str:
        answer = await client.get("/health")
        _expect(answer, 200)
        data = _json(answer)
        if not isinstance(data, dict) or not isinstance(data.get("agent"), str):
            raise _FailedError("GET /health must answer an object naming the agent")
        if not isinstance(data.get("status"), str):
            raise _FailedError("GET /health: status must be a string")
        _iso(data.get("timestamp"), "timestamp")
        state["name"] = data["agent"]
        return f"agent {data['agent']}, status {data['status']}"

    async def probes() -> str:
        for path in ("/health/live", "/health/ready"):
            _expect(await client.get(path), 200)
        return "/health/live and /health/ready answer 200"

    async def info() -> str:
        answer = await client.get("/info")
        _expect(answer, 200)
        data = _json(answer)
        if not isinstance(data, dict) or data.get("name") != state.get("name"):
            raise _FailedError(f"/info name must be {state.get('name')!r}")
        if not isinstance(data.get("version"), str) or not isinstance(data.get("endpoints"), dict):
            raise _FailedError("/info must carry version (string) and endpoints (object)")
        return f"{data['name']} {data['version']}"

    async def run_inline() -> str:
        name = str(state.get("name", ""))
        ctx = await sample_context(settings, symbol=symbol, timeframe=timeframe,
                                   now_ms=clock(), agent=name)  # fmt: skip
        state["context"] = ctx
        data = await client.run(ctx)
        problem = check_answer(data, name)
        if problem:
            raise _FailedError(problem)
        step = parse_answer(name, 200, orjson.dumps(data), duration_ms=0.0, now_iso=iso_ms(clock()))
        if step.status != "ok":
            raise _FailedError(f"the orchestrator would record {step.status}: {step.error}")
        again = await client.run(ctx)
        if (_verdict(again), again.get("payload")) != (_verdict(data), data.get("payload")):
            raise _FailedError("the same context answered differently")
        return f"score {data['score']}, confidence {data['confidence']}, deterministic"

    async def as_of() -> str:
        ctx = state.get("context")
        if ctx is None:
            raise _FailedError("needs the inline run to pass first")
        back = ctx["asOf"] - AS_OF_BARS_BACK * Timeframe.parse(timeframe).ms
        full = await client.run(dict(ctx, asOf=back))
        cut = await client.run(cut_at(ctx, back))
        name = str(state.get("name"))
        problem = check_answer(full, name) or check_answer(cut, name)
        if problem or full["meta"].get("status") != "ok":
            raise _FailedError(problem or f"as of {iso_ms(back)}: {full['meta'].get('reason')}")
        if _verdict(full) != _verdict(cut) or full.get("payload") != cut.get("payload"):
            raise _FailedError(
                f"bars after asOf changed the answer: {_verdict(full)} vs {_verdict(cut)}"
            )
        seen = full["meta"].get("as_of")
        if seen is None:  # an agent that reads no bar (the risk manager) has no as_of
            return f"asOf {iso_ms(back)}: no bar used, later bars ignored"
        if not isinstance(seen, str) or seen > iso_ms(back):
            raise _FailedError(f"meta.as_of {seen!r} is after asOf {iso_ms(back)}")
        return f"asOf {iso_ms(back)}: as_of {seen}, later bars ignored"

    async def ids_only() -> str:
        answer = await client.post(orjson.dumps({"symbol": symbol, "timeframe": timeframe}))
        if answer.status_code == 422:
            _error_field(answer, 422, "candles")
            return "422 naming candles (no data layer of its own)"
        _expect(answer, 200)
        problem = check_answer(_json(answer), str(state.get("name")))
        if problem:
            raise _FailedError(problem)
        return "answered from its own data layer"

    async def bad_input() -> str:
        ctx = state.get("context") or {"symbol": symbol, "timeframe": timeframe}
        _error_field(await client.post(b'{"symbol": "BTCUSDT",'), 400, None)
        _error_field(await client.post(b"symbol=BTCUSDT", content_type="text/plain"), 415, None)
        missing = {k: v for k, v in ctx.items() if k != "symbol"}
        _error_field(await client.post(orjson.dumps(missing)), 422, "symbol")
        _error_field(await client.post(orjson.dumps(dict(ctx, timeframe="7x"))), 422, "timeframe")
        if "candles" in ctx:
            broken = {tf: dict(cols) for tf, cols in ctx["candles"].items()}
            cols = broken[timeframe]
            cols["high"] = [*cols["high"][:-3], min(cols["low"][-3:]) - 1.0, *cols["high"][-2:]]
            _error_field(await client.post(orjson.dumps(dict(ctx, candles=broken))), 422, "candles")
        return "400 malformed, 415 type, 422 symbol, timeframe and candle row, JSON errors"

    return [("health", health), ("probes", probes), ("info", info),
            ("run: inline data", run_inline), ("run: asOf", as_of),
            ("run: ids only", ids_only), ("run: bad input", bad_input)]  # fmt: skip


async def _signing(client: _Client, state: dict[str, Any]) -> str:
    body = orjson.dumps(state.get("context") or {"symbol": "BTCUSDT", "timeframe": "1h"})
    unsigned = await client.post(body, sign=False)
    if unsigned.status_code != 401:
        raise _FailedError(f"an unsigned call answered {unsigned.status_code}, expected 401")
    altered = await client.post(body, signed_body=body + b" ")
    if altered.status_code != 401:
        raise _FailedError(f"a call whose body was altered answered {altered.status_code}, not 401")
    return "signed calls accepted; unsigned and altered ones 401"


#: The paths of the contract (an agent's ``/metrics`` is an operational extra, not in it).
CONTRACT_PATHS = ("/health", "/health/live", "/health/ready", "/info", "/run")
CONTRACT_INFO = {
    "title": "Conclave agent contract",
    "version": "1",
    "description": (
        "What any agent service, in any language, answers; `conclave agents check URL` checks"
        " a running one. POST /run takes the context the orchestrator sends (data inline,"
        " used as of `asOf`; a service with no data layer of its own may answer 422 naming"
        " `candles` to a context of ids only). When CONCLAVE_AGENTS__SECRET is set every"
        " /run call carries X-Conclave-Timestamp (ms), X-Conclave-Nonce and"
        " X-Conclave-Signature: v1=hex(HMAC-SHA256(secret, METHOD\\nPATH\\nTIMESTAMP\\n"
        "NONCE\\nhex(SHA-256(body))))), at most 5 s old; anything else is 401."
    ),
}


def contract_openapi(settings: Settings, agent: str = "momentum") -> dict[str, Any]:
    """The contract as an OpenAPI document: the agent app's own spec (one factory serves
    every agent, so any agent's gives it), its contract paths, a neutral title."""
    from conclave.services.agent_app import create_agent_app  # the app: only to document

    spec = create_agent_app(agent, settings).openapi()
    spec["info"] = CONTRACT_INFO
    spec["paths"] = {p: spec["paths"][p] for p in CONTRACT_PATHS}
    return spec


if (
    __name__ == "__main__"
):  # python -m conclave.services.agent_contract > docs/agent-contract.openapi.json
    import sys

    doc = contract_openapi(Settings(_env_file=None))
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")


__all__ = [
    "CONTRACT_PATHS",
    "Check",
    "check_agent",
    "check_answer",
    "contract_openapi",
    "cut_at",
    "sample_context",
]
