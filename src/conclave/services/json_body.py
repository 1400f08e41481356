"""A request body read as JSON, exactly one way for every Conclave service.

Split out of `conclave.services.http_common` (which keeps the edge guard, the error shape
and the handlers) so the parsing rules live in one small module: the FastAPI routes read
their bodies with `read_json`, and the agent services' pure ASGI ``POST /run``
(`conclave.services.agent_app.RunRoute`) uses the same pieces, `check_json_type` and
`parse_json`. The rules (RELIABILITY.md E11):

- a content type other than ``application/json`` (charset, if given, ``utf-8``): 415
  naming ``content-type``;
- malformed JSON, or an object with a duplicate key: 400 naming ``body`` (orjson would keep
  the last value silently; two parsers could disagree on which one counts).

The body's size and arrival time are bounded before it gets here, on the stream
(`conclave.services.http_common.BodyLimitMiddleware`).
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from fastapi import Request

from conclave.services.http_common import ApiError


def check_json_type(content_type: str) -> None:
    """`ApiError` 415 naming ``content-type`` unless ``application/json`` (any charset
    parameter must be ``utf-8``: JSON is UTF-8, RFC 8259)."""
    media, _, params = content_type.partition(";")
    ok = media.strip().lower() == "application/json"
    for param in params.split(";") if ok and params else ():
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() != "utf-8":
            ok = False
    if not ok:
        raise ApiError(415, "unsupported_media_type", "expected Content-Type: application/json",
                       field="content-type")  # fmt: skip


#: Every byte but the braces (``bytes.translate`` deletes them, leaving the structure).
_NOT_BRACES = bytes(b for b in range(256) if b not in b"{}")
_BACKSLASH = b"\\"
_COLON = re.compile(rb"[ \t\r\n]*:")


def has_duplicate_keys(raw: bytes) -> bool:
    """Whether the valid JSON ``raw`` has an object with the same key twice.

    The quotes are found with ``bytes.find`` (memchr speed over the number arrays); a quote
    after an odd run of backslashes is escaped. A string followed by a colon is a key; the
    braces between strings (found the same way, taken in order) open and close the objects
    whose keys are compared, decoded when they hold an escape (``"\\u0061"`` is ``"a"``).
    Only the strings reach Python, never the numbers: about a third of ``orjson.loads``'s
    time on an agent's 40 KB context.
    """
    find = raw.find
    quote = find(b'"')
    if quote < 0:
        return False
    seen: list[set[bytes]] = []

    def braces(start: int, stop: int) -> None:
        if find(b"{", start, stop) < 0 and find(b"}", start, stop) < 0:
            return
        for brace in raw[start:stop].translate(None, _NOT_BRACES):
            if brace == 0x7B:
                seen.append(set())
            else:
                seen.pop()

    braces(0, quote)
    while quote >= 0:
        end = find(b'"', quote + 1)
        while True:  # skip escaped quotes: an odd run of backslashes before one
            k = end - 1
            while raw[k] == 0x5C:
                k -= 1
            if (end - 1 - k) % 2 == 0:
                break
            end = find(b'"', end + 1)
        following = find(b'"', end + 1)
        stop = following if following >= 0 else len(raw)
        if seen and _COLON.match(raw, end + 1):
            name = raw[quote + 1 : end]
            if _BACKSLASH in name:
                name = json.loads(b'"' + name + b'"').encode("utf-8", "surrogatepass")
            if name in seen[-1]:
                return True
            seen[-1].add(name)
        braces(end + 1, stop)
        quote = following
    return False


def keys_all_kept(raw: bytes, parsed: Any) -> bool:
    """True when parsing ``raw`` (valid JSON, parsed as ``parsed``) provably kept every
    key: no object of ``raw`` has a key twice. False means "cannot tell this way" (ask
    `has_duplicate_keys`).

    Every ``:`` of ``raw`` outside a string follows a key, so ``raw`` holds as many as its
    keys plus those inside its strings; when it holds no backslash (no escape: a string's
    bytes are its text) the walk of ``parsed`` counts the same sum over what was kept, and
    the two are equal only when nothing was dropped. The walk visits the objects and the
    strings, never the numbers: a list whose first item is not an object, a list or a
    string is not walked (should it hold a key or a ``:`` all the same, the sums differ).
    Counting one byte is memchr speed: about a quarter of `has_duplicate_keys`' time on an
    agent's context.
    """
    if _BACKSLASH in raw:
        return False
    counted = 0  # keys plus the colons inside the strings kept
    todo = [parsed] if type(parsed) in _WALKED else []
    while todo:
        node = todo.pop()
        kind = type(node)
        if kind is dict:
            counted += len(node)
            for key, value in node.items():
                counted += key.count(":")
                if type(value) in _WALKED:
                    todo.append(value)
        elif kind is str:
            counted += node.count(":")
        elif kind is list and node and type(node[0]) in _WALKED:  # objects, lists, strings
            todo.extend(node)
    return raw.count(b":") == counted


_WALKED = frozenset({dict, list, str})


def parse_json(raw: bytes) -> Any:
    """``raw`` parsed with orjson; `ApiError` 400 naming ``body`` when malformed or when an
    object has a duplicate key."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson's message names the position only, never echoes the input
        raise ApiError(400, "invalid_json", f"malformed JSON: {exc}", field="body") from None
    if not keys_all_kept(raw, parsed) and has_duplicate_keys(raw):
        raise ApiError(400, "invalid_json", "malformed JSON: an object has a duplicate key",
                       field="body")  # fmt: skip
    return parsed


async def read_json(request: Request) -> Any:
    """The request body parsed as JSON: 415 unless JSON, 400 naming ``body`` if malformed."""
    check_json_type(request.headers.get("content-type", ""))
    return parse_json(await request.body())
