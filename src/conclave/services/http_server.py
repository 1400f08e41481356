"""How every Conclave service is served: uvicorn with a bounded, timed request head.

uvicorn's default HTTP parser (httptools) keeps whatever header block a client sends and
waits for it as long as the client likes: a connection that sends half a head, or nothing,
stays open. `server_options` gives uvicorn a parser protocol that bounds the head as it
arrives:

- more than `MAX_HEADERS` headers, or more than `MAX_HEADER_BYTES` of request line and
  headers: 431 and the connection closes, before the rest is buffered;
- a head not complete within ``head_timeout_s`` of its first byte (of the connection, for
  a fresh one): 408 and the connection closes (a connection that sent nothing is closed
  without an answer).

The body is timed and bounded in the app (`conclave.services.http_common.
BodyLimitMiddleware`), which also counts headers, so the limits hold under any server.
Without httptools uvicorn falls back to h11, whose head limit is set to the same size.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import orjson

from conclave.services.http_common import MAX_HEADER_BYTES, MAX_HEADERS, error_body

try:
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
except ImportError:  # pragma: no cover - uvicorn[standard] brings httptools
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


class _HeadTooLargeError(Exception):
    """Raised inside the parser's callback: the head passed a bound."""


if HttpToolsProtocol is not None:

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol with a bounded, timed request head (the module)."""

        head_timeout_s: ClassVar[float] = 10.0
        max_headers: ClassVar[int] = MAX_HEADERS
        max_head_bytes: ClassVar[int] = MAX_HEADER_BYTES

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._in_head, self._too_large = True, False
            self._head_bytes = self._head_size = self._head_count = 0
            self._head_timer: asyncio.TimerHandle | None = None
            self._head_since: float | None = None  # when the head being read began
            super().connection_made(transport)
            self._arm(self.loop.time())  # a fresh connection's first head: from now

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self, since: float) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_at(since + self.head_timeout_s, self._head_late)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def data_received(self, data: bytes) -> None:
            if self.transport.is_closing():
                return
            if self._in_head:
                self._head_bytes += len(data)
            super().data_received(data)
            if self._in_head and self._head_bytes > self.max_head_bytes:
                self._too_large = True
                self._refuse(431, f"request head over {self.max_head_bytes} bytes")
            elif self._head_since is not None:
                # a head is still incomplete after this chunk: time it from its first byte
                # (one whole in a chunk, the common case, never needs a timer)
                self._arm(self._head_since)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head, self._head_size, self._head_count = True, 0, 0
            self._head_since = self.loop.time()

        def on_url(self, url: bytes) -> None:
            self._head_size += len(url)
            if self._head_size > self.max_head_bytes:
                self._too_large = True
                raise _HeadTooLargeError
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._head_count += 1
            self._head_size += len(name) + len(value) + 4
            if self._head_count > self.max_headers or self._head_size > self.max_head_bytes:
                self._too_large = True
                raise _HeadTooLargeError
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head, self._head_since = False, None
            self._disarm()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head, self._head_bytes = True, 0  # what follows is the next head

        def send_400_response(self, msg: str) -> None:
            if not self._too_large:  # the parser refused the request itself
                super().send_400_response(msg)
                return
            self._refuse(431, f"more than {self.max_headers} request headers, or a request"
                         f" head over {self.max_head_bytes} bytes")  # fmt: skip

        def _head_late(self) -> None:
            self._head_timer = None
            if not self._in_head or self.transport.is_closing():
                return
            if self._head_bytes == 0 and self.cycle is None:  # connected, sent nothing
                self.transport.close()
                return
            self._refuse(408, f"request head not received within {self.head_timeout_s:g} s")

        def _refuse(self, status: int, message: str) -> None:
            if self.transport.is_closing():
                return
            code = "headers_too_large" if status == 431 else "request_timeout"
            body = orjson.dumps(error_body(code, message, "headers"))
            head = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body)]
            head.append(b"connection: close\r\n\r\n")
            self.transport.write(b"".join(head) + body)
            self.transport.close()


def server_options(head_timeout_s: float) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.Config` / `uvicorn.run`: the bounded parser (its head
    timed to ``head_timeout_s``), or h11 with the same head limit when httptools is absent."""
    options: dict[str, Any] = {"h11_max_incomplete_event_size": MAX_HEADER_BYTES}
    if HttpToolsProtocol is None:  # pragma: no cover
        return options | {"http": "h11"}
    protocol = type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {"head_timeout_s": head_timeout_s},
    )
    return options | {"http": protocol}
