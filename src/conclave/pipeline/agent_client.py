r"""`AgentHttpClient`: the one pooled aiohttp client the nine `HttpRunner`\ s share.

One keep-alive connection set per orchestrator process, so a run costs nine requests on warm
connections, never nine handshakes. No retry of its own (the run is the retry unit), with
one exception: a request the server dropped before the first byte of its answer on a reused
pooled connection is sent once more on a new connection (see `AgentHttpClient.request`).
Failures are `AgentCallError`\ s with a reason code (`conclave.pipeline.http_runner` lists
them); with a `Signer` every send is signed afresh, so a resent POST is never refused as a
replay of the first attempt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import SimpleNamespace
from urllib.parse import urlsplit

import aiohttp
from aiohttp.client import IDEMPOTENT_METHODS
from aiohttp.http import RawResponseMessage

from conclave.security.signing import Signer

_JSON = {"content-type": "application/json", "accept": "application/json"}
#: Seconds an idle pooled connection is kept; below the services' keep-alive (30 s).
KEEPALIVE_S = 15.0
#: The largest answer body read from an agent service (a few KB is normal).
MAX_ANSWER_BYTES = 8 * 1024 * 1024


class AgentCallError(Exception):
    """A call that got no HTTP answer; ``reason`` is one of the codes in the docstring."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _UnansweredError(Exception):
    """The server closed or reset the connection before the first byte of its answer."""


def _refused(exc: BaseException | None) -> bool:
    """True when ``exc`` or an exception it was raised from is a refused connection."""
    for _ in range(6):
        if exc is None:
            return False
        if isinstance(exc, ConnectionRefusedError) or "connection refused" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _nothing_read(exc: aiohttp.ClientError) -> bool:
    """True when ``exc``, raised before the answer's headers, means no answer byte came.

    A clean close: aiohttp's C parser hands over the message it had begun, so a single
    byte read shows (its pure-Python parser does not: there a cut status line passes for
    nothing). A reset (ECONNRESET, EPIPE) before the headers counts as unanswered: it is
    what a server does to a request that reached a connection it had already closed.
    """
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return not isinstance(exc.message, RawResponseMessage)
    connector = isinstance(exc, aiohttp.ClientConnectorError)  # no connection: not a drop
    return not connector and isinstance(exc, aiohttp.ClientOSError | ConnectionResetError)


async def _body(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body (Content-Length, chunked or up to the close); refused over ``limit``.

    Raising leaves the rest unread, and aiohttp closes a connection released half-read:
    it is never pooled, and no more than ``limit`` plus aiohttp's read-ahead (its flow
    control stops reading at a few times 64 KiB) is ever held.
    """
    too_large = AgentCallError("protocol_error", f"answer larger than {limit} bytes")
    if resp.content_length is not None:
        if resp.content_length > limit:
            raise too_large
        return await resp.read()
    chunks: list[bytes] = []
    size = 0
    while chunk := await resp.content.readany():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _exchange(
    session: aiohttp.ClientSession, method: str, url: str, body: bytes | None, limit: int,
    headers: Mapping[str, str] | None = None, trace: dict[str, bool] | None = None,
) -> tuple[int, bytes]:  # fmt: skip
    """One request on ``session``: status and body; `_UnansweredError` if no answer byte came.

    ``trace`` (for a session made with `_REUSE_TRACE`) gets ``reused`` True when the request
    went out on a pooled connection rather than a new one."""
    headers_in = False
    sent = _JSON if not headers else {**_JSON, **headers}
    try:
        async with session.request(
            method, url, data=body, headers=sent, allow_redirects=False,
            trace_request_ctx=trace,
        ) as resp:  # fmt: skip
            headers_in = True  # from here on, a failure is a broken answer: never resent
            return resp.status, await _body(resp, limit)
    except aiohttp.ClientError as exc:
        if headers_in or not _nothing_read(exc):
            raise
        why = f"closed before any byte of an answer ({type(exc).__name__}: {exc})"
        raise _UnansweredError(why) from exc


async def _on_reuse(_session: object, ctx: SimpleNamespace, _params: object) -> None:
    if isinstance(ctx.trace_request_ctx, dict):
        ctx.trace_request_ctx["reused"] = True


def _reuse_trace() -> aiohttp.TraceConfig:
    """Marks a request's ``trace_request_ctx`` when it took a pooled connection."""
    config = aiohttp.TraceConfig()
    config.on_connection_reuseconn.append(_on_reuse)
    return config


def _session(connector: aiohttp.TCPConnector, *, trace: bool = False) -> aiohttp.ClientSession:
    # no Accept-Encoding: bodies are read as sent (auto_decompress off); no User-Agent:
    # fewer header bytes for the service to parse; our deadline is the only timeout
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
        timeout=aiohttp.ClientTimeout(),
        trace_configs=[_reuse_trace()] if trace else None,
    )


class AgentHttpClient:
    """The one pooled keep-alive HTTP client (aiohttp) all runners of a process share.

    ``max_connections`` covers nine services times eight runs in flight with room; an
    answer over ``max_answer_bytes`` fails the call. ``signer`` (one per process) signs
    every request; None sends them unsigned (agents on loopback without a secret). Close
    with `aclose` (or ``async with``).
    """

    def __init__(
        self,
        *,
        max_connections: int = 96,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        signer: Signer | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.max_answer_bytes = max_answer_bytes
        self.signer = signer
        self._pooled: aiohttp.ClientSession | None = None
        self._fresh: aiohttp.ClientSession | None = None  # a new connection per request

    async def __aenter__(self) -> AgentHttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _pool(self) -> aiohttp.ClientSession:
        if self._pooled is None:
            limit = self.max_connections
            self._pooled = _session(
                aiohttp.TCPConnector(limit=limit, keepalive_timeout=KEEPALIVE_S), trace=True
            )
        return self._pooled

    def _new_connection(self) -> aiohttp.ClientSession:
        if self._fresh is None:
            self._fresh = _session(
                aiohttp.TCPConnector(limit=self.max_connections, force_close=True)
            )
        return self._fresh

    async def _send(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str] | None
    ) -> tuple[int, bytes]:
        limit = self.max_answer_bytes
        trace = {"reused": False}
        try:
            sent = self._signed(method, url, body, headers)
            return await _exchange(self._pool(), method, url, body, limit, sent, trace)
        except _UnansweredError:
            # aiohttp resends idempotent methods itself, once; a drop on a NEW connection is
            # the agent failing, not a stale keep-alive: one attempt per call (C9)
            if method in IDEMPOTENT_METHODS or not trace["reused"]:
                raise
        sent = self._signed(method, url, body, headers)  # fresh: the first may have arrived
        return await _exchange(self._new_connection(), method, url, body, limit, sent)

    def _signed(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str] | None
    ) -> Mapping[str, str] | None:
        if self.signer is None:
            return headers
        signed = self.signer.headers(method, urlsplit(url).path or "/", body or b"")
        return signed if not headers else {**headers, **signed}

    async def request(
        self, method: str, url: str, body: bytes | None, *, timeout_s: float,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:  # fmt: skip
        """Status and body of one call; `AgentCallError` when no complete HTTP answer came.

        A request the server drops before the first byte of its answer on a connection
        taken from the pool, the signature of a keep-alive connection it closed while ours
        sat idle, is sent once more on a new connection, inside the same ``timeout_s``; a
        second drop fails the call, and so does a drop on a new connection (RELIABILITY C9:
        one attempt per agent per run when the agent itself fails). Nothing else is
        resent: not a timeout, not an error status, not an answer cut
        short (an agent's ``/run`` has no side effects, so resending unanswered is safe).
        aiohttp resends GET by itself (`ClientSession._request`: once, on the next pooled
        connection) but never POST, so only POST is resent here. ``headers`` are sent
        besides the JSON content type.
        """
        try:
            async with asyncio.timeout(timeout_s):
                return await self._send(method, url, body, headers)
        except TimeoutError as exc:
            raise AgentCallError("timeout", f"no answer within {timeout_s * 1000:.0f} ms") from exc
        except aiohttp.ClientConnectorError as exc:
            refused = _refused(exc.os_error) or _refused(exc)
            raise AgentCallError("connection_refused" if refused else "connect_error",
                                 str(exc)) from exc  # fmt: skip
        except _UnansweredError as exc:
            raise AgentCallError("protocol_error", str(exc)) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise AgentCallError("protocol_error", f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        """Close both pools."""
        for session in (self._pooled, self._fresh):
            if session is not None:
                await session.close()
        self._pooled = self._fresh = None
