"""The orchestrator's door (issue 12): API keys, per-key rate limits and CORS on every request.

`install_edge` puts two pure-ASGI layers in front of the routes and answers an `Edge`
whose `Edge.start` runs in the app's lifespan, once the run store is open:

- the start-up check (`conclave.security.startup.check_api_startup`, RELIABILITY E10):
  bound beyond loopback with no active key, or with an empty, default or short secret, the
  app refuses to start with `ConfigurationError` naming the setting; on loopback with no
  key it serves OPEN and logs so (``api_open``);
- `EdgeAuthMiddleware`: the verdict of `KeyAuthenticator` on each request (401 with
  ``WWW-Authenticate: Bearer``, 403 for a scope too low: E5, E6), then, for a request that
  presented a key, `KeyRateLimiter` (429 with ``Retry-After`` and ``RateLimit-*``; every
  other answer carries ``RateLimit-*``: E7). Errors are the common ``{"error": ...}`` body.
- CORS (`starlette.middleware.cors.CORSMiddleware`) for the origins of
  ``CONCLAVE_SECURITY__CORS_ORIGINS`` only (default none): a foreign origin never gets an
  ``Access-Control-Allow-Origin`` (E10). ``*`` is refused: it is not an allowlist.

Open mode ends by itself: an open API re-checks "any active key?" at most once per
``key_cache_ttl_s`` (the key cache's TTL), so the first key created while it runs closes it
within that time on every replica, without a restart. Once closed it never reopens in that
process: revoking every key leaves an API that answers 401, never an open one. A key store
that cannot be read answers 503 with ``Retry-After``, never a pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import orjson
import structlog
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conclave.agents.registry import Registry
from conclave.errors import ConfigurationError
from conclave.security.auth import AuthResult, CachedKeyLookup, KeyAuthenticator
from conclave.security.keys import KeyHasher, required_scope
from conclave.security.ratelimit import KeyRateLimiter, RateDecision
from conclave.security.startup import StartupVerdict, check_api_startup, is_loopback
from conclave.services.http_common import error_body
from conclave.settings import Settings

if TYPE_CHECKING:
    from conclave.store.keys_repo import KeyRepo

log = structlog.get_logger(__name__)

CORS_SETTING = "CONCLAVE_SECURITY__CORS_ORIGINS"
#: Seconds a client should wait when the key store cannot be read.
RETRY_AFTER_S = 5
_RUN_PATH = "/pipeline/run"
_CORS_HEADERS = ("Authorization", "X-API-Key", "Content-Type", "Idempotency-Key")
_EXPOSED = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "Retry-After",
            "Idempotent-Replayed")  # fmt: skip


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def agent_urls(settings: Settings, registry: Registry) -> list[str]:
    """The service URL of every agent of ``registry``: a request may call any over HTTP."""
    return [settings.agent_url(name, registry) for name in registry]


async def startup_verdict(
    settings: Settings, store: object, agent_urls: Iterable[str]
) -> StartupVerdict:
    """The start-up verdict for ``settings`` (bound to ``settings.api.host``) over ``store``.

    A store that is not the real `RunStore` (a test's fake) holds no key.
    """
    from conclave.store import RunStore
    from conclave.store.keys_repo import KeyRepo

    active = 0
    if isinstance(store, RunStore):
        active = await KeyRepo(store).count_active(_wall_ms())
    return check_api_startup(
        host=settings.api.host,
        active_keys=active,
        key_secret=settings.security.key_secret,
        agent_secret=settings.agents.secret,
        agent_urls=agent_urls,
    )


class Edge:
    """What the edge middleware decides with; built in the lifespan by `start`.

    Until `start` has run, only the always-open routes pass (anything else is 503).
    """

    def __init__(
        self, settings: Settings, agent_urls: list[str], now_ms: Callable[[], int]
    ) -> None:
        self.settings = settings
        self.agent_urls = agent_urls
        self.now_ms = now_ms
        self.started = False
        self.authenticator: KeyAuthenticator | None = None
        self.limiter: KeyRateLimiter | None = None
        self._repo: KeyRepo | None = None  # when the store is the real one
        self._open = False
        self._open_checked = 0.0  # monotonic seconds of the last "any key?" check

    async def start(self, store: object) -> StartupVerdict:
        """Check the start-up (raise `ConfigurationError` when refused), build the parts."""
        from conclave.store import RunStore
        from conclave.store.keys_repo import KeyRepo

        sec = self.settings.security
        verdict = (await startup_verdict(self.settings, store, self.agent_urls)).raise_if_refused()
        if isinstance(store, RunStore):
            self._repo = KeyRepo(store)
        if sec.key_secret is not None and self._repo is not None:
            lookup = CachedKeyLookup(self._repo, ttl_s=sec.key_cache_ttl_s)
            self.authenticator = KeyAuthenticator(
                lookup, KeyHasher(sec.key_secret), now_ms=self.now_ms,
                open_health=sec.open_health, open_metrics=sec.open_metrics,
            )  # fmt: skip
        self.limiter = KeyRateLimiter.from_settings(self.settings)
        self._open = verdict.open and is_loopback(self.settings.api.host)
        self._open_checked = time.monotonic()
        if self._open:
            log.warning("api_open", message=verdict.message)
        else:
            log.info("api_keys_required", message=verdict.message,
                     rate_limits="redis" if self.limiter.shared else "per process")  # fmt: skip
        self.started = True
        return verdict

    async def still_open(self) -> bool:
        """Whether the API still serves without keys: re-checked once per cache TTL."""
        if not self._open:
            return False
        now = time.monotonic()
        if now - self._open_checked < self.settings.security.key_cache_ttl_s:
            return True
        if self._repo is None:
            return True  # no key store, no key can appear
        active = await self._repo.count_active(self.now_ms())  # raises: the caller answers 503
        self._open_checked = now
        if active:
            self._open = False  # for good in this process
            log.warning("api_closed", reason="an API key was created", active_keys=active)
        return self._open

    async def aclose(self) -> None:
        """Close the limiter's Redis connections."""
        if self.limiter is not None:
            await self.limiter.aclose()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _answer(
    send: Send, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> None:
    raw = orjson.dumps(error_body(code, message))
    out = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(raw))]
    out += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": raw})


def _www_authenticate(result: AuthResult) -> dict[str, str]:
    if result.reason == "missing_key":
        return {"WWW-Authenticate": 'Bearer realm="conclave"'}
    return {"WWW-Authenticate": 'Bearer realm="conclave", error="invalid_token"'}


def _limit_message(decision: RateDecision) -> str:
    per = "minute" if decision.name == "runs" else "second"
    return (f"rate limit of {decision.limit} {decision.name} per {per} for this key reached;"
            f" retry after {decision.retry_after_s} s")  # fmt: skip


class EdgeAuthMiddleware:
    """Pure ASGI: authenticate, then rate limit, each HTTP request (see the module)."""

    def __init__(self, app: ASGIApp, *, edge: Edge) -> None:
        self.app = app
        self.edge = edge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        edge, method, path = self.edge, scope["method"], scope["path"]
        sec = edge.settings.security
        if required_scope(method, path, open_health=sec.open_health,
                          open_metrics=sec.open_metrics) is None:  # fmt: skip
            await self.app(scope, receive, send)
            return
        if not edge.started:
            await _answer(send, 503, "unavailable", "the service is starting; retry later",
                          {"Retry-After": "1"})  # fmt: skip
            return
        try:
            still_open = await edge.still_open()
            result = None if still_open else await self._authenticate(scope, method, path)
        except Exception as exc:  # the key store cannot be read: never let the request pass
            log.warning("auth_store_unavailable", path=path, error=type(exc).__name__)
            await _answer(send, 503, "unavailable", "API keys cannot be checked now; retry later",
                          {"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip
            return
        if result is None:  # open: loopback and no key yet
            await self.app(scope, receive, send)
            return
        key = result.key
        if not result.allowed or key is None:
            await self._refuse(send, result, method, path)
            return
        assert edge.limiter is not None
        run = method == "POST" and path.rstrip("/") == _RUN_PATH
        decision = await edge.limiter.check(key.id, run=run)
        if not decision.allowed:
            log.info("rate_limited", key_id=key.id, limit=decision.name, path=path)
            await _answer(send, 429, "rate_limited", _limit_message(decision), decision.headers())
            return
        extra = [(k.lower().encode(), v.encode()) for k, v in decision.headers().items()]

        async def with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        with structlog.contextvars.bound_contextvars(key_id=key.id):
            await self.app(scope, receive, with_limits)

    async def _authenticate(self, scope: Scope, method: str, path: str) -> AuthResult:
        authenticator = self.edge.authenticator
        if authenticator is None:  # keys appeared, but this process cannot check them
            return AuthResult(401, "unverifiable")
        return await authenticator.authenticate(
            method, path, _header(scope, b"authorization"), _header(scope, b"x-api-key")
        )

    async def _refuse(self, send: Send, result: AuthResult, method: str, path: str) -> None:
        key_id = result.key.id if result.key is not None else None
        log.info("auth_refused", status=result.status, reason=result.reason, key_id=key_id,
                 method=method, path=path)  # fmt: skip
        if result.reason == "unverifiable":
            log.error(
                "auth_unverifiable",
                setting="CONCLAVE_SECURITY__KEY_SECRET",
                detail="keys exist but this process has no key secret; restart it",
            )
            await _answer(send, 401, "unauthorized", "an API key is required and cannot be "
                          "checked by this server", _www_authenticate(result))  # fmt: skip
        elif result.status == 403:
            needed = result.needed.value if result.needed is not None else "admin"
            await _answer(send, 403, "forbidden",
                          f"{result.message()}: it needs the {needed} scope")  # fmt: skip
        else:
            await _answer(send, 401, "unauthorized", result.message(), _www_authenticate(result))


def _cors_origins(settings: Settings) -> list[str]:
    origins = [o.strip().rstrip("/") for o in settings.security.cors_origins if o.strip()]
    if any(o == "*" or "*" in o for o in origins):
        raise ConfigurationError(
            f"{CORS_SETTING} must list origins (e.g. http://localhost:3001), not a wildcard"
        )
    return origins


def install_edge(
    app: FastAPI, settings: Settings, *, agent_urls: Iterable[str], now_ms: Callable[[], int]
) -> Edge:
    """Add the edge layers to ``app`` (call before the common middleware, so the metrics
    and traces see their answers); start the answer in the lifespan with `Edge.start`.

    ``agent_urls`` are the agent services the app may call (the start-up check wants the
    agent secret when any is beyond loopback); ``now_ms`` is the wall clock (key expiry).
    `ConfigurationError` for a wildcard CORS origin.
    """
    edge = Edge(settings, list(agent_urls), now_ms)
    app.add_middleware(EdgeAuthMiddleware, edge=edge)
    origins = _cors_origins(settings)
    if origins:  # outside the auth: a preflight carries no key, a 401 still gets CORS
        app.add_middleware(
            CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST", "PUT",
            "PATCH", "DELETE"], allow_headers=list(_CORS_HEADERS),
            expose_headers=list(_EXPOSED), allow_credentials=False, max_age=600,
        )  # fmt: skip
    return edge


__all__ = ["CORS_SETTING", "Edge", "EdgeAuthMiddleware", "agent_urls", "install_edge",
           "startup_verdict"]  # fmt: skip
