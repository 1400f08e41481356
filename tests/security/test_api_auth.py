"""API keys on the real orchestrator app (E5, E6), per-key limits in process, CORS (E10).

Keys are created through `KeyRepo` on a real SQLite file in ``tmp_path``; the app runs in
process (ASGI transport, lifespan on) over that file and the sim market. Every route the
app declares is asked (enumerated from ``app.routes``, not listed by hand).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fastapi import FastAPI
from structlog.testing import capture_logs

from conclave.errors import ConfigurationError, StoreUnavailableError
from conclave.security.keys import KeyHasher, Scope
from conclave.services.api import create_app
from conclave.settings import SecuritySettings, Settings
from conclave.store import RunStore
from conclave.store.keys_repo import KeyRepo
from tests.security.conftest import SECRET

PROBES = frozenset({"/health/live", "/health/ready"})
RUN = {"symbol": "BTCUSDT", "timeframe": "1h"}
DAY_MS = 86_400_000


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def make_settings(tmp_path: Path, **security: Any) -> Settings:
    """Embedded defaults in ``tmp_path`` (no .env, no Redis), with these security settings."""
    # a high per-second limit unless asked: these tests send bursts on purpose
    sec = SecuritySettings(**({"key_secret": SECRET, "requests_per_second": 1000} | security))
    return Settings(_env_file=None, data_dir=tmp_path, logs_dir=tmp_path / "logs",
                    database_url=None, redis_url=None, use_http_agents=False,
                    security=sec)  # fmt: skip


async def create_keys(tmp_path: Path, *specs: tuple[str, Scope], now_ms: int | None = None
                      ) -> dict[str, tuple[str, str]]:  # fmt: skip
    """Keys named and scoped by ``specs`` in the SQLite file of ``tmp_path``: name -> (id, key)."""
    store = await RunStore.open(None, data_dir=tmp_path)
    try:
        repo, hasher = KeyRepo(store), KeyHasher(SECRET)
        out = {}
        for name, scope in specs:
            made, record = await repo.create(name, scope, hasher, now_ms=now_ms or wall_ms())
            out[name] = (record.id, made.key)
        return out
    finally:
        await store.aclose()


async def on_repo(tmp_path: Path, act: Callable[[KeyRepo], Any]) -> Any:
    store = await RunStore.open(None, data_dir=tmp_path)
    try:
        return await act(KeyRepo(store))
    finally:
        await store.aclose()


@asynccontextmanager
async def client_of(app: FastAPI) -> AsyncIterator[httpx2.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx2.AsyncClient(transport=transport, base_url="http://api") as c:
            yield c


def _routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, set[str]]]:
    """(path, methods) of ``routes``, into included routers (FastAPI keeps them nested)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _routes(inner.routes, prefix + route.include_context.prefix)
            continue
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        if path is not None and methods:
            yield prefix + path, set(methods)


def endpoints(app: FastAPI) -> list[tuple[str, str]]:
    """Every (method, concrete path) the app declares, but the two probes."""
    out = set()
    for path, methods in _routes(list(app.routes)):
        if path in PROBES:
            continue
        concrete = re.sub(r"\{[^}]+\}", "0123456789abcdef0123456789abcdef", path)
        out |= {(m, concrete) for m in methods if m != "HEAD"}
    return sorted(out)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def ask(c: httpx2.AsyncClient, method: str, path: str, headers: dict[str, str]) -> Any:
    body = RUN if (method, path) == ("POST", "/pipeline/run") else {}
    if method in ("GET", "DELETE", "OPTIONS"):
        return await c.request(method, path, headers=headers)
    return await c.request(method, path, headers=headers, json=body)


def assert_error(resp: Any, status: int, code: str) -> None:
    assert resp.status_code == status, (resp.request.method, resp.request.url.path, resp.text)
    assert resp.json()["error"]["code"] == code
    assert resp.json()["error"]["message"]


async def test_every_non_probe_endpoint_is_401_without_a_live_key(tmp_path: Path) -> None:
    """No key, a malformed, unknown, wrong, revoked or expired key: 401 with
    WWW-Authenticate: Bearer on every route the app declares but the two probes (E5)."""
    now = wall_ms()
    keys = await create_keys(tmp_path, ("live", Scope.ADMIN), ("gone", Scope.ADMIN))
    old = await create_keys(tmp_path, ("old", Scope.ADMIN), now_ms=now - 2 * DAY_MS)
    await on_repo(tmp_path, lambda r: r.revoke(keys["gone"][0], now_ms=now))
    await on_repo(tmp_path, lambda r: r.rotate(old["old"][0], KeyHasher(SECRET),
                                               now_ms=now - DAY_MS, overlap_s=1))  # fmt: skip
    live_key = keys["live"][1]
    wrong = live_key[:-4] + ("AAAA" if not live_key.endswith("AAAA") else "BBBB")
    unknown = f"ck_{'f' * 16}_{'x' * 43}"
    bad: dict[str, dict[str, str]] = {
        "none": {},
        "empty bearer": {"Authorization": "Bearer "},
        "malformed": bearer("not-a-key"),
        "unknown": bearer(unknown),
        "wrong secret": {"X-API-Key": wrong},
        "revoked": bearer(keys["gone"][1]),
        "expired": {"X-API-Key": old["old"][1]},
        "basic scheme": {"Authorization": f"Basic {live_key}"},
    }
    app = create_app(make_settings(tmp_path))
    routes = endpoints(app)
    assert ("POST", "/pipeline/run") in routes
    assert {("GET", "/metrics"), ("GET", "/health"), ("GET", "/openapi.json")} <= set(routes)
    async with client_of(app) as c:
        for method, path in routes:
            for label, headers in bad.items():
                resp = await ask(c, method, path, headers)
                assert_error(resp, 401, "unauthorized")
                assert resp.headers["www-authenticate"].startswith("Bearer"), label
                assert live_key not in resp.text
                assert SECRET not in resp.text
        for probe in sorted(PROBES):
            assert (await c.get(probe)).status_code == 200
        ok = await c.get("/pipeline/runs", headers={"X-API-Key": live_key})
        assert ok.status_code == 200
    assert len(routes) * len(bad) >= 100  # the figure behind "100 % of endpoints"


async def test_scopes_read_run_admin_403_when_too_low(tmp_path: Path) -> None:
    """A read key may GET anything but gets 403 on POST /pipeline/run and every write; a
    run key may also run (201) but gets 403 on the admin writes; admin passes all (E6)."""
    keys = await create_keys(tmp_path, ("r", Scope.READ), ("x", Scope.RUN), ("a", Scope.ADMIN))
    app = create_app(make_settings(tmp_path))
    routes = endpoints(app)
    reads = [(m, p) for m, p in routes if m == "GET"]
    writes = [(m, p) for m, p in routes if m != "GET" and (m, p) != ("POST", "/pipeline/run")]
    assert writes, "the app has admin routes (accounts, scheduler jobs)"
    async with client_of(app) as c:
        for method, path in reads:
            for name in ("r", "x", "a"):
                resp = await ask(c, method, path, bearer(keys[name][1]))
                assert resp.status_code not in (401, 403), (name, path, resp.text)
        assert_error(await ask(c, "POST", "/pipeline/run", bearer(keys["r"][1])), 403, "forbidden")
        ran = await ask(c, "POST", "/pipeline/run", bearer(keys["x"][1]))
        assert ran.status_code == 201, ran.text
        for method, path in writes:
            for name in ("r", "x"):
                resp = await ask(c, method, path, {"X-API-Key": keys[name][1]})
                assert_error(resp, 403, "forbidden")
                assert "admin" in resp.json()["error"]["message"]
            resp = await ask(c, method, path, bearer(keys["a"][1]))
            assert resp.status_code not in (401, 403), (method, path, resp.text)


async def test_rotation_overlap_both_keys_work_then_the_old_one_is_401(tmp_path: Path) -> None:
    """After `rotate --overlap 60` both keys work; 61 s later (injected clock) the old one
    is 401 while still in the key cache: expiry is checked on every request (E5)."""
    now = [wall_ms()]
    keys = await create_keys(tmp_path, ("ci", Scope.READ), now_ms=now[0])
    old_id, old_key = keys["ci"]
    made, _, _ = await on_repo(tmp_path, lambda r: r.rotate(
        old_id, KeyHasher(SECRET), now_ms=now[0], overlap_s=60))  # fmt: skip
    app = create_app(make_settings(tmp_path), now_ms=lambda: now[0])
    async with client_of(app) as c:
        for key in (old_key, made.key):
            assert (await c.get("/pipeline/runs", headers=bearer(key))).status_code == 200
        now[0] += 61_000
        gone = await c.get("/pipeline/runs", headers=bearer(old_key))
        assert_error(gone, 401, "unauthorized")
        assert "expired" in gone.json()["error"]["message"]
        assert (await c.get("/pipeline/runs", headers=bearer(made.key))).status_code == 200


async def _first_status(c: httpx2.AsyncClient, headers: dict[str, str], want: int,
                        within_s: float) -> float:  # fmt: skip
    """Seconds until GET /pipeline/runs answers ``want`` (polled every 50 ms); fails past
    ``within_s``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within_s:
        if (await c.get("/pipeline/runs", headers=headers)).status_code == want:
            return time.monotonic() - t0
        await asyncio.sleep(0.05)
    pytest.fail(f"no {want} within {within_s} s")


async def test_a_revocation_reaches_a_second_replica_within_the_cache_ttl(tmp_path: Path) -> None:
    """Two app instances on one database, key cache TTL 1 s: after a revocation through the
    store, both refuse the key within the TTL (tolerance +2 s for a loaded machine) (E5)."""
    ttl = 1.0
    keys = await create_keys(tmp_path, ("k", Scope.READ))
    key_id, key = keys["k"]
    first = create_app(make_settings(tmp_path, key_cache_ttl_s=ttl))
    second = create_app(make_settings(tmp_path, key_cache_ttl_s=ttl))
    async with client_of(first) as a, client_of(second) as b:
        for c in (a, b):  # both have the key cached now
            assert (await c.get("/pipeline/runs", headers=bearer(key))).status_code == 200
        await on_repo(tmp_path, lambda r: r.revoke(key_id, now_ms=wall_ms()))
        took = await _first_status(b, bearer(key), 401, within_s=ttl + 2.0)
        assert took <= ttl + 2.0
        assert (await a.get("/pipeline/runs", headers=bearer(key))).status_code == 401


async def test_loopback_without_keys_is_open_until_the_first_key_appears(tmp_path: Path) -> None:
    """No key on 127.0.0.1: open, logged as OPEN; the first key created while it runs
    closes it within the cache TTL (1 s, +2 s tolerance), without a restart; the new key
    works; revoking it does not reopen the API."""
    ttl = 1.0
    app = create_app(make_settings(tmp_path, key_cache_ttl_s=ttl))
    with capture_logs() as logs:
        async with client_of(app) as c:
            assert (await c.get("/pipeline/runs")).status_code == 200
            assert (await c.post("/pipeline/run", json=RUN)).status_code == 201
            keys = await create_keys(tmp_path, ("first", Scope.READ))
            await _first_status(c, {}, 401, within_s=ttl + 2.0)
            key_id, key = keys["first"]
            assert (await c.get("/pipeline/runs", headers=bearer(key))).status_code == 200
            await on_repo(tmp_path, lambda r: r.revoke(key_id, now_ms=wall_ms()))
            await asyncio.sleep(ttl + 0.2)
            assert (await c.get("/pipeline/runs")).status_code == 401
    events = [e for e in logs if e["event"] == "api_open"]
    assert events
    assert "OPEN" in events[0]["message"]
    assert "CONCLAVE_API__HOST" in events[0]["message"]
    assert any(e["event"] == "api_closed" for e in logs)


async def test_open_without_a_key_secret_fails_closed_when_a_key_appears(tmp_path: Path) -> None:
    """Open on loopback with no key secret: once a key exists this process cannot check
    keys, so it answers 401 to everything but the probes, never open."""
    app = create_app(make_settings(tmp_path, key_secret=None, key_cache_ttl_s=0.5))
    async with client_of(app) as c:
        assert (await c.get("/agents")).status_code == 200
        keys = await create_keys(tmp_path, ("k", Scope.ADMIN))
        await _first_status(c, {}, 401, within_s=2.5)
        assert (await c.get("/pipeline/runs", headers=bearer(keys["k"][1]))).status_code == 401
        assert (await c.get("/health/live")).status_code == 200


async def test_key_limits_in_process_429_with_retry_after_and_ratelimit_headers(
    tmp_path: Path,
) -> None:
    """Without Redis, per key: 2 runs a minute and 5 requests a second; the refusals are
    429 with Retry-After and RateLimit-*, the answers carry RateLimit-* (E7, one process)."""
    keys = await create_keys(tmp_path, ("a", Scope.RUN), ("b", Scope.RUN))
    app = create_app(make_settings(tmp_path, runs_per_minute=2, requests_per_second=5))
    async with client_of(app) as c:
        a = bearer(keys["a"][1])
        runs = [await c.post("/pipeline/run", json=RUN, headers=a) for _ in range(3)]
        assert [r.status_code for r in runs] == [201, 201, 429]
        assert runs[0].headers["ratelimit-limit"] == "2"
        assert runs[0].headers["ratelimit-remaining"] == "1"
        refused = runs[2]
        assert_error(refused, 429, "rate_limited")
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["ratelimit-remaining"] == "0"
        other = await c.post("/pipeline/run", json=RUN, headers=bearer(keys["b"][1]))
        assert other.status_code == 201  # per key
        b = bearer(keys["b"][1])
        answers = [await c.get("/pipeline/runs", headers=b) for _ in range(6)]
        statuses = [r.status_code for r in answers]
        assert 429 in statuses  # 6 requests (one run before) within a second or two
        assert all(r.headers["ratelimit-limit"] == "5" for r in answers)
        assert (await c.get("/health/live", headers=b)).status_code == 200  # probes: no limit


# -- CORS (E10) -------------------------------------------------------------------------------

DASHBOARD = "http://localhost:3001"
FOREIGN = ("https://evil.example", "http://localhost:3002", "null", "http://localhost:3001.evil.io")


def _preflight(origin: str) -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"}  # fmt: skip


@pytest.mark.parametrize("allowlist", [(), (DASHBOARD,)])
async def test_cors_foreign_origins_get_no_allow_origin(
    tmp_path: Path, allowlist: tuple[str, ...]
) -> None:
    """Preflights and requests from a foreign origin never get Access-Control-Allow-Origin,
    with or without an allowlist; the allowlisted origin does (preflight with no key)."""
    keys = await create_keys(tmp_path, ("r", Scope.READ))
    app = create_app(make_settings(tmp_path, cors_origins=allowlist))
    async with client_of(app) as c:
        for origin in FOREIGN:
            for resp in (
                await c.options("/pipeline/run", headers=_preflight(origin)),
                await c.get("/pipeline/runs", headers={"Origin": origin, **bearer(keys["r"][1])}),
                await c.get("/pipeline/runs", headers={"Origin": origin}),
            ):
                assert "access-control-allow-origin" not in resp.headers, (origin, resp.headers)
        pre = await c.options("/pipeline/run", headers=_preflight(DASHBOARD))
        got = await c.get("/pipeline/runs", headers={"Origin": DASHBOARD, **bearer(keys["r"][1])})
        if allowlist:
            assert pre.status_code == 200
            assert pre.headers["access-control-allow-origin"] == DASHBOARD
            assert "authorization" in pre.headers["access-control-allow-headers"].lower()
            assert got.headers["access-control-allow-origin"] == DASHBOARD
            assert "ratelimit-remaining" in got.headers["access-control-expose-headers"].lower()
        else:
            assert "access-control-allow-origin" not in pre.headers
            assert "access-control-allow-origin" not in got.headers


def test_a_wildcard_cors_origin_is_refused_naming_the_setting(tmp_path: Path) -> None:
    """``*`` is not an allowlist: the app is not built."""
    with pytest.raises(ConfigurationError, match="CONCLAVE_SECURITY__CORS_ORIGINS"):
        create_app(make_settings(tmp_path, cors_origins=("*",)))


async def test_an_unreadable_key_store_is_503_never_a_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a key cannot be looked up (the database is down), the answer is 503 with
    Retry-After, not 200 and not a bare 500; the probes still answer."""
    keys = await create_keys(tmp_path, ("k", Scope.READ))
    app = create_app(make_settings(tmp_path))
    async with client_of(app) as c:

        async def down(self: KeyRepo, key_id: str) -> None:
            raise StoreUnavailableError("database unreachable")

        monkeypatch.setattr(KeyRepo, "find_key", down)
        resp = await c.get("/pipeline/runs", headers=bearer(keys["k"][1]))
        assert_error(resp, 503, "unavailable")
        assert int(resp.headers["retry-after"]) > 0
        assert (await c.get("/health/live")).status_code == 200
