"""The httptools keep-alive client against raw loopback servers: answers never shift."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from conclave.pipeline import http_conn
from conclave.pipeline.http_conn import HttptoolsTransport
from conclave.pipeline.http_runner import AgentCallError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


def answer(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def test_an_interim_1xx_answer_does_not_shift_later_answers() -> None:
    """103 Early Hints before the 200: each request still gets its own answer."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ")[1]
                if path == b"/a":
                    writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.05)
                writer.write(answer(b'"' + path.strip(b"/") + b'"'))
                await writer.drain()

    async with raw_server(handler) as url:
        client = HttptoolsTransport(8, 15.0)
        got = [await client.request("GET", f"{url}/{p}", None, 2.0) for p in "abc"]
        await client.aclose()
    assert got == [(200, b'"a"'), (200, b'"b"'), (200, b'"c"')]


async def test_a_cancelled_request_closes_its_connection() -> None:
    """Cancelled from outside (a run deadline): the socket is closed, not leaked or pooled."""
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.read()  # never answers; returns when the client hangs up
        closed.set()

    async with raw_server(handler) as url:
        client = HttptoolsTransport(8, 15.0)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await client.request("GET", f"{url}/hang", None, 5.0)
        await asyncio.wait_for(closed.wait(), 2.0)
        assert sum(len(p) for p in client._idle.values()) == 0
        await client.aclose()


async def test_an_oversized_answer_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer larger than the cap fails the call instead of filling our memory."""
    monkeypatch.setattr(http_conn, "MAX_ANSWER_BYTES", 1000)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer(b"x" * 5000))
            await writer.drain()

    async with raw_server(handler) as url:
        client = HttptoolsTransport(8, 15.0)
        with pytest.raises(AgentCallError, match="larger than 1000 bytes"):
            await client.request("GET", f"{url}/big", None, 2.0)
        await client.aclose()
