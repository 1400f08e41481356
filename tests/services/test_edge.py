"""The hardened HTTP edge (issue 12 item 7): timeouts, header bounds, duplicate keys, JSON
only, one body limit per service type. Timeouts and header bounds are proven with raw
sockets against real servers on loopback, with both cores kept busy."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conclave.agents import REGISTRY
from conclave.pipeline import Pipeline
from conclave.pipeline.wire import encode_input
from conclave.services.agent_app import create_agent_app
from conclave.services.api import create_app
from conclave.services.http_common import MAX_HEADER_BYTES, MAX_HEADERS, ApiError
from conclave.services.json_body import has_duplicate_keys, keys_all_kept, parse_json
from conclave.settings import Settings
from tests.services.edge_servers import (
    SHORT_TIMEOUT_S,
    Exchange,
    Served,
    agent,
    busy_cores,
    orchestrator,
    raw_exchange,
)
from tests.services.helpers import SIM_NOW, sim_gateway

#: How late a timeout may fire, with both cores busy: the event loop's timer is on time to
#: a few ms when idle; a spinning neighbour on each core delays it by a scheduler slice or
#: two, far under this.
TOLERANCE_S = 1.0
JSON_CT = {"content-type": "application/json"}
RUN = {"symbol": "BTCUSDT", "timeframe": "1h"}


def make_settings(tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path,
        logs_dir=tmp_path / "logs",
        database_url=None,
        redis_url=None,
        use_http_agents=False,
    )


@contextlib.asynccontextmanager
async def in_process(app: Any) -> AsyncIterator[httpx2.AsyncClient]:
    transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client,
    ):
        yield client


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx2.AsyncClient]:
    async with in_process(create_app(make_settings(tmp_path))) as client:
        yield client


@pytest.fixture
async def agent_api(tmp_path: Path) -> AsyncIterator[httpx2.AsyncClient]:
    app = create_agent_app("momentum", make_settings(tmp_path), now_ms=lambda: SIM_NOW,
                           gateway=sim_gateway())  # fmt: skip
    async with in_process(app) as client:
        yield client


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The orchestrator and one agent service, real processes, body timeout 1 s."""
    tmp = tmp_path_factory.mktemp("edge")
    with orchestrator(tmp) as orch, agent(tmp) as momentum:
        yield {"orchestrator": orch, "agent": momentum}


def error_code(resp: httpx2.Response | Exchange, status: int) -> str:
    if isinstance(resp, Exchange):
        assert resp.status == status, resp.data[:300]
        body = json.loads(resp.data.split(b"\r\n\r\n", 1)[1])
    else:
        assert resp.status_code == status, resp.text
        body = resp.json()
    assert set(body) == {"error"}
    return str(body["error"]["code"])


def head(path: str, length: int, extra: bytes = b"") -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n%s\r\n" % (path.encode(), length, extra))  # fmt: skip


# -- the body timeout (raw sockets, real servers, both cores busy) --------------------------


@pytest.mark.parametrize(
    ("server", "path"),
    [("orchestrator", "/pipeline/run"), ("orchestrator", "/accounts"), ("agent", "/run")],
)
def test_a_body_that_stops_gets_408_and_the_connection_closes(
    servers: dict[str, Served], server: str, path: str
) -> None:
    """100 bytes announced, 10 sent: 408 and the close within the timeout + 1 s."""
    with busy_cores():
        got = raw_exchange(servers[server].port, head(path, 100), b'{"symbol":')
    print(f"{server} {path}: 408 after {got.first_byte_s:.3f} s, closed after {got.closed_s} s")
    assert error_code(got, 408) == "request_timeout"
    assert b"connection: close" in got.data.lower()
    assert got.closed_s is not None, "the server kept the connection open"
    assert SHORT_TIMEOUT_S - 0.1 <= got.first_byte_s <= SHORT_TIMEOUT_S + TOLERANCE_S
    assert got.closed_s <= SHORT_TIMEOUT_S + TOLERANCE_S


@pytest.mark.parametrize("server", ["orchestrator", "agent"])
def test_the_timeout_is_for_the_whole_body_not_each_chunk(
    servers: dict[str, Served], server: str
) -> None:
    """A byte every 0.1 s (never idle for long) still gets 408 once the timeout has passed."""
    path = "/run" if server == "agent" else "/pipeline/run"
    with socket.create_connection(("127.0.0.1", servers[server].port), timeout=10) as sock:
        sock.sendall(head(path, 200))
        t0 = time.monotonic()
        answer = b""
        with contextlib.suppress(OSError):
            for _ in range(100):  # 10 s of trickle if nothing stopped it
                sock.sendall(b" ")
                sock.settimeout(0.1)
                with contextlib.suppress(TimeoutError):
                    answer += sock.recv(65536)
                if answer:
                    break
        took = time.monotonic() - t0
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert took <= SHORT_TIMEOUT_S + TOLERANCE_S


def test_a_body_in_time_is_served(servers: dict[str, Served]) -> None:
    """A body sent in two parts within the timeout is answered as usual (here 201)."""
    body = orjson.dumps(RUN)
    got = raw_exchange(servers["orchestrator"].port, head("/pipeline/run", len(body),
                       b"Connection: close\r\n"), body[:5], body[5:])  # fmt: skip
    assert got.status == 201, got.data[:300]


def test_a_head_that_stops_gets_408_and_an_idle_connection_closes(
    servers: dict[str, Served],
) -> None:
    """Half a request head: 408 and the close; a connection that sends nothing: closed."""
    with busy_cores():
        got = raw_exchange(servers["orchestrator"].port, b"GET /health HTTP/1.1\r\nHost: x\r\n")
        idle = raw_exchange(servers["agent"].port)
    assert error_code(got, 408) == "request_timeout"
    assert got.closed_s is not None
    assert got.closed_s <= SHORT_TIMEOUT_S + TOLERANCE_S
    assert idle.data == b""
    assert idle.closed_s is not None
    assert idle.closed_s <= SHORT_TIMEOUT_S + TOLERANCE_S


def _answer(sock: socket.socket) -> bytes:
    """One whole answer (head and a Content-Length body) read from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head_part, _, body = data.partition(b"\r\n\r\n")
    length = int(head_part.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head_part + b"\r\n\r\n" + body


def test_a_later_head_is_timed_from_its_first_byte(servers: dict[str, Served]) -> None:
    """On a kept-alive agent connection: a head sent in two parts 0.3 s apart is answered;
    then half a head gets 408 and the close, the timeout counted from its first byte."""
    live = b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", servers["agent"].port), timeout=15) as sock:
        sock.sendall(live)
        assert _answer(sock).startswith(b"HTTP/1.1 200 ")
        sock.sendall(live[:20])
        time.sleep(0.3)
        sock.sendall(live[20:])
        assert _answer(sock).startswith(b"HTTP/1.1 200 ")
        time.sleep(0.5)  # idle between requests: not part of the next head's time
        sock.sendall(live[:20])
        t0 = time.monotonic()
        rest = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                rest += chunk
        closed = time.monotonic() - t0
    assert rest.startswith(b"HTTP/1.1 408 "), rest[:200]
    assert SHORT_TIMEOUT_S - 0.1 <= closed <= SHORT_TIMEOUT_S + TOLERANCE_S


# -- header bounds ---------------------------------------------------------------------------


@pytest.mark.parametrize("server", ["orchestrator", "agent"])
def test_too_many_or_too_large_headers_get_431_from_the_server(
    servers: dict[str, Served], server: str
) -> None:
    """101 headers, or one header of 20 KB, or a 1 MB head that never ends: 431 and close."""
    port = servers[server].port
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS + 1))
    large = b"X-Big: " + b"a" * 20_000 + b"\r\n"
    for extra in (many, large):
        got = raw_exchange(port, b"GET /health/live HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")
        assert error_code(got, 431) == "headers_too_large"
        assert got.closed_s is not None
    endless = raw_exchange(port, b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 1_000_000)
    assert endless.status == 431
    ok = raw_exchange(
        port,
        b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS - 2))
        + b"\r\n",
    )
    assert ok.status == 200  # fmt: skip


async def test_the_middleware_bounds_headers_under_any_server(
    api: httpx2.AsyncClient, agent_api: httpx2.AsyncClient
) -> None:
    """In process (no server limit): more than 100 headers or 16 KiB of them is 431."""
    many = {f"x-h{i}": "v" for i in range(MAX_HEADERS + 1)}
    large = {"x-big": "a" * MAX_HEADER_BYTES}
    for client, path in ((api, "/pipeline/runs"), (agent_api, "/health/live")):
        for headers in (many, large):
            assert error_code(await client.get(path, headers=headers), 431) == "headers_too_large"


# -- duplicate keys, media types, 405 --------------------------------------------------------


async def test_duplicate_keys_are_400_on_every_json_route(
    api: httpx2.AsyncClient, agent_api: httpx2.AsyncClient
) -> None:
    """A key twice in one object is 400 ``body``, top level or nested, on both services."""
    cases = [
        (api, "/pipeline/run", b'{"symbol":"ETHUSDT","symbol":"BTCUSDT","timeframe":"1h"}'),
        (api, "/accounts", b'{"name":"a","balance":1,"quote":"USDT","limits":'
                           b'{"cooldown_bars":1,"cooldown_bars":2}}'),
        (api, "/scheduler/jobs", b'{"symbol":"BTCUSDT","timeframe":"1h","timeframe":"4h"}'),
        (agent_api, "/run", b'{"symbol":"BTCUSDT","timeframe":"1h","asOf":1,'
                            b'"candles":{"1h":{"open":[1],"open":[2]}}}'),
    ]  # fmt: skip
    for client, path, raw in cases:
        resp = await client.post(path, content=raw, headers=JSON_CT)
        assert error_code(resp, 400) == "invalid_json"
        assert resp.json()["error"]["field"] == "body"
    # the same key in two objects is no duplicate
    twice = b'{"symbol":"BTCUSDT","timeframe":"1h","candles":{"1h":{"open":[]},"4h":{"open":[]}}}'
    resp = await agent_api.post("/run", content=twice, headers=JSON_CT)
    assert resp.status_code == 422  # asOf missing: past the parser


DUPLICATE_CASES = [
    (b'{"a":1,"b":2}', False),
    (b'{"a":1,"a":2}', True),
    (b'{"a" : 1 ,\n "a"\t:2}', True),
    (b'{"a":{"b":1},"c":{"b":1}}', False),
    (b'[{"a":1},{"a":1}]', False),
    (b'{"a":"x\\":1, \\"a\\": 2","b":"a:b"}', False),
    (b'{"a":"x\\\\","a":1}', True),
    (b'{"\\u0061":1,"a":2}', True),
    (b'{"k":{"k":{"k":1}}}', False),
    (b"[" * 300 + b'{"a":1,"a":1}' + b"]" * 300, True),
    (b"[" * 300 + b'{"a":1,"b":1}' + b"]" * 300, False),
    (b'"a\\":"', False),
    (b"{}", False),
]


@pytest.mark.parametrize(("raw", "expected"), DUPLICATE_CASES)
def test_duplicate_keys_are_found_exactly(raw: bytes, expected: bool) -> None:
    """Escapes, colons inside strings, whitespace, siblings and deep nesting."""
    assert has_duplicate_keys(raw) is expected


def _has_dup_reference(raw: bytes) -> bool:
    found = False

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal found
        found = found or len({k for k, _ in pairs}) != len(pairs)
        return dict(pairs)

    json.loads(raw, object_pairs_hook=hook)
    return found


_KEYS = st.sampled_from(["a", "b", 'q"uote', "c:o", "\\", "é", "\u2028", "\x00"])
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='ab":\\{}[],\x00é', max_size=6),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(st.tuples(_KEYS, inner), max_size=4).map(lambda kv: ("obj", kv))
    ),
    max_leaves=20,
)


def _write(value: Any) -> str:
    if isinstance(value, tuple) and value[:1] == ("obj",):
        return "{" + ",".join(f"{json.dumps(k)} : {_write(v)}" for k, v in value[1]) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_write(v) for v in value) + "]"
    return json.dumps(value)


@settings(max_examples=300, deadline=None)
@given(_JSON)
def test_duplicate_keys_agree_with_a_reference_parser(value: Any) -> None:
    """Random JSON (keys with quotes, colons, escapes, repeated at will) agrees with the
    standard library's pairs hook."""
    raw = _write(value).encode()
    assert has_duplicate_keys(raw) is _has_dup_reference(raw)


def _parses(raw: bytes) -> bool:
    """True when `parse_json` accepts ``raw``, False when it answers 400 naming ``body``."""
    refused: ApiError | None = None
    try:
        parse_json(raw)
    except ApiError as exc:
        refused = exc
    if refused is None:
        return True
    assert (refused.status_code, refused.field) == (400, "body")
    return False


@pytest.mark.parametrize(("raw", "expected"), DUPLICATE_CASES)
def test_parse_json_refuses_exactly_the_bodies_with_a_duplicate_key(
    raw: bytes, expected: bool
) -> None:
    """The parser's verdict (counting first, the exact scan when counting cannot tell) is
    the exact scan's."""
    assert _parses(raw) is not expected


def _write_plain(value: Any) -> str:
    if isinstance(value, tuple) and value[:1] == ("obj",):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{_write_plain(v)}"
                              for k, v in value[1]) + "}"  # fmt: skip
    if isinstance(value, list):
        return "[" + ",".join(_write_plain(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


@settings(max_examples=300, deadline=None)
@given(_JSON)
def test_counting_never_misses_a_duplicate_key(value: Any) -> None:
    """Random JSON, written with and without escapes and spaces: whenever the count says
    every key was kept the reference finds no duplicate, and the parser agrees with it."""
    for raw in (_write(value).encode(), _write_plain(value).encode()):
        reference = _has_dup_reference(raw)
        if keys_all_kept(raw, orjson.loads(raw)):
            assert not reference, raw
        assert _parses(raw) is not reference, raw


async def test_an_orchestrator_context_is_decided_by_counting(tmp_path: Path) -> None:
    """Every agent's real context needs no scan: the count tells its keys were all kept."""
    async with Pipeline(sim_gateway()) as pipe:
        limit, higher = pipe.plan("1h")
        snap = await pipe.gateway.snapshot("BTCUSDT", "1h", higher=higher, limit=limit,
                                           as_of_ms=SIM_NOW)  # fmt: skip
        ctx = await pipe.context(snap, "acct-1")
        for agent in pipe.agents.values():
            raw = encode_input(ctx.input_for(agent))
            assert keys_all_kept(raw, orjson.loads(raw)), agent.name


@pytest.mark.parametrize(
    "ctype",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/vnd.api+json",
        "application/json; charset=latin-1",
        "",
    ],
)
async def test_only_application_json_is_accepted(
    api: httpx2.AsyncClient, agent_api: httpx2.AsyncClient, ctype: str
) -> None:
    """Anything but application/json (charset utf-8 if given) is 415 on both services."""
    raw = orjson.dumps(RUN)
    for client, path in ((api, "/pipeline/run"), (agent_api, "/run")):
        headers = {"content-type": ctype} if ctype else {}
        resp = await client.post(path, content=raw, headers=headers)
        assert error_code(resp, 415) == "unsupported_media_type"


async def test_json_with_utf8_charset_is_accepted(api: httpx2.AsyncClient) -> None:
    ctype = {"content-type": 'Application/JSON; charset="UTF-8"'}
    resp = await api.post("/scheduler/jobs", content=orjson.dumps(RUN), headers=ctype)
    assert resp.status_code == 201, resp.text


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/accounts", "GET, POST"),
        ("OPTIONS", "/accounts", "GET, POST"),
        ("PUT", "/scheduler/jobs", "GET, POST"),
        ("OPTIONS", "/scheduler/jobs", "GET, POST"),
        ("GET", "/pipeline/run", "POST"),
        ("POST", "/scheduler/jobs/x@BTCUSDT@1h", "DELETE"),
        ("DELETE", "/health", "GET"),
    ],
)
async def test_405_lists_every_method_of_the_path(
    api: httpx2.AsyncClient, method: str, path: str, allow: str
) -> None:
    """Allow names every route's methods, not only the first route's (GET and POST)."""
    resp = await api.request(method, path)
    assert error_code(resp, 405) == "method_not_allowed"
    assert resp.headers["allow"] == allow


async def test_405_on_the_agent_run_route(agent_api: httpx2.AsyncClient) -> None:
    resp = await agent_api.get("/run")
    assert error_code(resp, 405) == "method_not_allowed"
    assert resp.headers["allow"] == "POST"


# -- one body limit per service type ---------------------------------------------------------


async def largest_context_bytes() -> tuple[int, str]:
    """The largest body the orchestrator sends an agent: every allowed timeframe, each
    agent's own input (candles of its lookback and higher timeframes, news, account)."""
    pipe = Pipeline(sim_gateway(), registry=REGISTRY, executor="inline")
    best, which = 0, ""
    try:
        for tf in Settings(_env_file=None).market.timeframes:  # type: ignore[call-arg]
            limit, higher = pipe.plan(tf)
            snap = await pipe.gateway.snapshot("BTCUSDT", tf, higher=higher, limit=limit,
                                               higher_limit=pipe.higher_limit(tf),
                                               as_of_ms=SIM_NOW)  # fmt: skip
            context = await pipe.context(snap, None)
            for name in REGISTRY:
                size = len(encode_input(context.input_for(REGISTRY[name]())))
                if size > best:
                    best, which = size, f"{name} on {tf}"
    finally:
        await pipe.aclose()
    return best, which


async def test_the_agent_body_limit_holds_the_largest_real_context_twice() -> None:
    """The default agent limit fits the largest context the orchestrator sends, twice over."""
    size, _ = await largest_context_bytes()
    assert 2 * size <= Settings(_env_file=None).agents.max_body_bytes  # type: ignore[call-arg]


async def test_bodies_over_the_limit_are_413_and_close(
    api: httpx2.AsyncClient, agent_api: httpx2.AsyncClient
) -> None:
    """64 KiB + 1 on the orchestrator, the agent limit + 1 on an agent: 413 with a close."""
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    for client, path, limit in ((api, "/accounts", defaults.api.max_body_bytes),
                                (agent_api, "/run", defaults.agents.max_body_bytes)):  # fmt: skip
        big = b'{"pad":"' + b"x" * limit + b'"}'
        resp = await client.post(path, content=big, headers=JSON_CT)
        assert error_code(resp, 413) == "payload_too_large"
        assert resp.headers["connection"] == "close"
