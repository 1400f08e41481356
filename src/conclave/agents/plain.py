"""Plain JSON: the check on evidence, and the wire shape of one agent answer.

Evidence must be plain JSON: str, int, bool, None, finite float, lists and string-keyed dicts.

The common case (exact built-in types) is checked without building any path text; only a
value that fails it is walked again to name the offending path (numpy scalars, which
subclass the built-ins, pass there).
"""

from __future__ import annotations

import math
from typing import Any

_PLAIN = frozenset({str, int, bool, type(None)})
_isfinite = math.isfinite


def _plain_fast(value: Any) -> bool:
    """True when ``value`` is plainly fine (exact JSON types, finite floats); no paths built."""
    t = type(value)
    if t is float:
        return math.isfinite(value)
    if t in _PLAIN:
        return True
    if t is dict:
        for k, v in value.items():
            if type(k) is not str:
                return False
            tv = type(v)  # the leaves inline: most values are
            if tv is float:
                if not _isfinite(v):
                    return False
            elif tv not in _PLAIN and not _plain_fast(v):
                return False
        return True
    if t is list or t is tuple:
        for v in value:
            tv = type(v)
            if tv is float:
                if not _isfinite(v):
                    return False
            elif tv not in _PLAIN and not _plain_fast(v):
                return False
        return True
    return False


def check_plain(value: Any, path: str) -> None:
    """Raise `TypeError` naming the path unless ``value`` is plain JSON with finite floats."""
    if _plain_fast(value):
        return
    _check_plain_slow(value, path)


def _check_plain_slow(value: Any, path: str) -> None:
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"evidence {path} is not finite ({value})")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"evidence key {path}.{k!r} is not a string")
            _check_plain_slow(v, f"{path}.{k}")
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain_slow(v, f"{path}[{i}]")
        return
    raise TypeError(f"evidence {path} has type {type(value).__name__}, not a plain JSON type")


def wire_answer(
    score: float | None,
    confidence: float | None,
    payload: dict[str, Any],
    *,
    agent: str,
    version: str,
    duration_ms: float,
    timestamp: str,
    as_of: str | None,
    status: str,
    reason: str,
) -> dict[str, Any]:
    """One agent answer in the wire contract's shape: the one place its keys are spelled."""
    return {
        "score": score,
        "confidence": confidence,
        "payload": payload,
        "meta": {
            "agent": agent,
            "version": version,
            "duration_ms": duration_ms,
            "timestamp": timestamp,
            "as_of": as_of,
            "status": status,
            "reason": reason,
        },
    }
