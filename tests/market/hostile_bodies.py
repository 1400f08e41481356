"""Hostile kline bodies for A7: what a broken or hostile server might send."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

GOOD_ROW: list[Any] = [
    1634943780000, "60685.22", "60729.84", "60670.90", "60719.27", "21.63272000",
    1634943839999, "1313200.01340410", 617, "12.28492000", "745719.41022840", "0",
]  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=12,
)


@st.composite
def malformed_bodies(draw: st.DrawFn) -> bytes:
    """Bodies a broken or hostile server might send (a hypothesis strategy); some are valid."""
    kind = draw(st.integers(0, 7))
    good = [list(GOOD_ROW) for _ in range(draw(st.integers(0, 5)))]
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        html = "<html><head><title>502 Bad Gateway</title></head><body>{}</body></html>"
        return html.format(draw(st.text(max_size=50))).encode()
    if kind == 2:
        text = json.dumps(good)
        return text[: draw(st.integers(0, max(0, len(text) - 1)))].encode()
    if kind == 3:
        return json.dumps(draw(json_values), allow_nan=True).encode()
    if kind == 4 and good:
        row = draw(st.sampled_from(good))
        row[draw(st.integers(0, 11))] = draw(json_values)
        return json.dumps(good, allow_nan=True).encode()
    if kind == 5 and good:
        row = draw(st.sampled_from(good))
        del row[draw(st.integers(0, 11)) :]
        return json.dumps(good).encode()
    if kind == 6:
        return json.dumps({"code": draw(st.integers(-2100, 0)), "msg": "x"}).encode()
    return json.dumps(good).encode()
