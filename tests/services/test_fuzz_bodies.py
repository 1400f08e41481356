"""E2: 1,000 generated malformed bodies against the real servers get only 400/408/413/415/422.

A seeded generator (the same 1,000 bodies on every run) sends bad JSON, wrong types, 1 MB
strings, 10k-deep nesting, NULs and lone surrogates, duplicate keys, extra fields and other
content types to the orchestrator's POST routes and an agent's ``POST /run``, both served by
uvicorn on loopback as processes. Both must answer every one with a client error, still
answer ``/health/live`` afterwards, and grow by less than 20 MB resident (after a warm-up).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from tests.services.edge_servers import Served, agent, orchestrator, rss_bytes

ALLOWED = {400, 408, 413, 415, 422}
SEED = 20261202
TOTAL = 1000
WARM_UP = 100
MAX_RSS_GROWTH = 20 * 1024 * 1024
ORCHESTRATOR_PATHS = ("/pipeline/run", "/accounts", "/scheduler/jobs",
                      "/accounts/paper-0000000000000000/pause")  # fmt: skip

Body = tuple[bytes, str]  # raw body, content type


def _bad_json(rng: random.Random) -> Body:
    good = orjson.dumps({"symbol": "BTCUSDT", "timeframe": "1h", "name": "x", "balance": 5})
    cut = good[: rng.randrange(1, len(good) - 1)]
    pool = [
        cut,
        b"",
        b"{'symbol': 'BTCUSDT'}",
        b'{"symbol": "BTCUSDT",}',
        b'{"balance": NaN}',
        b'{"balance": Infinity}',
        b'{"a": 1} {"b": 2}',
        b"/* c */ {}",
        b"\xef\xbb\xbf{}",
        bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))),
        b'{"symbol": "BTC' + bytes([rng.randrange(0x80, 0x100)]) + b'"}',
        b'{"symbol": "\xed\xa0\x80"}',  # a lone surrogate in UTF-8: not UTF-8
        b'{"symbol": "\\ud800"}',  # an escaped lone surrogate
        b'{"symbol": "BTC\x00USDT"}',  # a raw NUL inside a string
        b'{"symbol":"BTCUSDT","symbol":"ETHUSDT","timeframe":"1h"}',
    ]
    return rng.choice(pool), "application/json"


def _wrong_types(rng: random.Random) -> Body:
    values: list[Any] = [None, True, 0, -1, 1.5, 1e308, "", "x", [], {}, [1, "a"], {"a": None},
                         2**70, "BTCUSDT\x00", "\u0000", "1M", "../etc", "btcusdt"]  # fmt: skip
    keys = ["symbol", "timeframe", "accountId", "useHttpAgents", "name", "balance", "quote",
            "reason", "limits", "asOf", "candles", "news", "account"]  # fmt: skip
    body: Any = {k: rng.choice(values) for k in rng.sample(keys, rng.randrange(1, 6))}
    if rng.random() < 0.2:
        body = rng.choice(values)
    if isinstance(body, dict):
        body["timeframe"] = rng.choice([7, None, [], "", "1M", "1 h", "1h\x00"])
    return json.dumps(body).encode(), "application/json"  # json: integers past 64 bits


def _huge_string(rng: random.Random) -> Body:
    field = rng.choice(["symbol", "name", "reason", "timeframe", "accountId"])
    text = rng.choice(["A", "é", "\x00", "\ud7ff"]) * 1_000_000
    return orjson.dumps({field: text}), "application/json"


def _deep(rng: random.Random) -> Body:
    depth = rng.choice([1025, 5000, 10_000])
    if rng.random() < 0.5:
        return b"[" * depth + b"]" * depth, "application/json"
    return b'{"a":' * depth + b"1" + b"}" * depth, "application/json"


def _unicode(rng: random.Random) -> Body:
    text = "".join(rng.choice(["\x00", "\x1f", "\u2028", "\ufffd", "\U0001f600", "é", "A"])
                   for _ in range(rng.randrange(1, 40)))  # fmt: skip
    body = {"symbol": text, "timeframe": text[:8], "name": text, "reason": text, "quote": text,
            "balance": 1}  # fmt: skip
    return orjson.dumps(body), "application/json"


def _extra_fields(rng: random.Random) -> Body:
    extra = {f"x{rng.randrange(1000)}": rng.choice([1, "a", None, [], {}])}
    bodies = [
        # an extra top-level key: 422 at the orchestrator; an agent ignores it (seed clients
        # send extras), so the body is wrong for it in another way too
        {"symbol": "BTCUSDT", "timeframe": "1h", "asOf": "not a time"} | extra,
        {"name": "a", "balance": 1, "quote": "USDT", "limits": extra},
        {"reason": "r"} | extra,
        # inline context with an unknown column (an agent ignores unknown top-level keys)
        {"symbol": "BTCUSDT", "timeframe": "1h", "asOf": 1, "candles": {"1h": extra}},
        {"symbol": "BTCUSDT", "timeframe": "1h", "asOf": 1, "candles": {}, "news": [extra]},
    ]
    return orjson.dumps(rng.choice(bodies)), "application/json"


def _other_media(rng: random.Random) -> Body:
    ctype = rng.choice(["text/plain", "application/x-www-form-urlencoded", "", "*/*",
                        "multipart/form-data", "application/json; charset=latin-1",
                        "application/xml"])  # fmt: skip
    return orjson.dumps({"symbol": "BTCUSDT", "timeframe": "1h"}), ctype


GENERATORS: list[Callable[[random.Random], Body]] = [
    _bad_json, _wrong_types, _huge_string, _deep, _unicode, _extra_fields, _other_media,
]  # fmt: skip


def bodies(count: int, seed: int) -> Iterator[Body]:
    """``count`` malformed bodies, the same for the same ``seed``."""
    rng = random.Random(seed)
    for i in range(count):
        yield GENERATORS[i % len(GENERATORS)](rng)


def _send(client: httpx2.Client, served: Served, path: str, body: Body) -> int:
    raw, ctype = body
    headers = {"content-type": ctype} if ctype else {}
    return client.post(f"{served.url}{path}", content=raw, headers=headers).status_code


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Served]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    with orchestrator(tmp) as orch, agent(tmp) as momentum:
        yield {"orchestrator": orch, "agent": momentum}


def test_malformed_bodies_get_only_client_errors(served: dict[str, Served], tmp_path: Path) -> None:
    """1,000 bodies, each sent to a POST route of each service: only 400/408/413/415/422,
    both alive after, RSS growth under 20 MB each."""
    orch, agent_service = served["orchestrator"], served["agent"]
    statuses: dict[int, int] = {}
    seen: list[tuple[str, int, bytes]] = []
    with httpx2.Client(timeout=30.0, trust_env=False) as client:
        generated = list(bodies(WARM_UP + TOTAL, SEED))
        before: dict[int, int] = {}
        for i, body in enumerate(generated):
            if i == WARM_UP:
                before = {s.proc.pid: rss_bytes(s.proc.pid) for s in (orch, agent_service)}
            path = ORCHESTRATOR_PATHS[i % len(ORCHESTRATOR_PATHS)]
            for target, route in ((orch, path), (agent_service, "/run")):
                status = _send(client, target, route, body)
                statuses[status] = statuses.get(status, 0) + 1
                if status not in ALLOWED:
                    seen.append((route, status, body[0][:120]))
        growth = {pid: rss_bytes(pid) - rss for pid, rss in before.items()}
        for target in (orch, agent_service):
            assert client.get(f"{target.url}/health/live").status_code == 200
    assert not seen, seen[:10]
    assert sum(statuses.values()) == 2 * (WARM_UP + TOTAL)
    print(f"statuses {sorted(statuses.items())}; RSS growth (MB) "
          f"{ {pid: round(g / 2**20, 1) for pid, g in growth.items()} }")  # fmt: skip
    for pid, grew in growth.items():
        assert grew < MAX_RSS_GROWTH, f"pid {pid} grew {grew / 2**20:.1f} MB"
