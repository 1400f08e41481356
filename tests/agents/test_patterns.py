"""Chart patterns: each one built as a price path is detected; a near miss of each is not."""

from __future__ import annotations

import numpy as np
import pytest

from conclave.agents import REGISTRY
from conclave.agents import chart_patterns as cp
from conclave.market.candles import Candles
from tests.agents.helpers import candles_from_close, make_input, path

BASE = 150


def build(points: list[tuple[int, float]]) -> Candles:
    """A quiet base of BASE bars, then the pattern's waypoints (bars counted from its start)."""
    t = np.arange(BASE)
    base = points[0][1] + 0.2 * np.sin(t / 5.0)
    shape = path([(0, base[-1]), *[(b + 1, p) for b, p in points[1:]]])
    return candles_from_close(np.r_[base, shape[1:]], wick=0.001)


def events(c: Candles, kind: str) -> list[tuple[int, float]]:
    """(bar, direction) of every confirmation of ``kind`` in the pattern part of the path."""
    for d in cp.detect(c.high, c.low, c.close, cp.Settings()):
        if d.kind == kind:
            return [(int(t), float(d.direction[t])) for t in np.flatnonzero(d.events) if t >= BASE]
    raise AssertionError(kind)


CASES = {
    "double_top": (
        [(0, 100), (20, 120), (35, 108), (50, 120.5), (70, 100)],
        [(0, 100), (20, 120), (35, 108), (50, 130), (70, 100)],  # tops 8 % apart
        -1.0,
    ),
    "double_bottom": (
        [(0, 100), (20, 80), (35, 92), (50, 79.5), (70, 100)],
        [(0, 100), (20, 80), (35, 92), (50, 79.5), (70, 90)],  # never closes above the neckline
        1.0,
    ),
    "head_and_shoulders": (
        [(0, 100), (15, 115), (25, 108), (40, 125), (52, 108.5), (65, 115.5), (85, 100)],
        [
            (0, 100),
            (15, 115),
            (25, 108),
            (40, 116),
            (52, 108.5),
            (65, 115.5),
            (85, 100),
        ],  # flat head
        -1.0,
    ),
    "inverse_head_and_shoulders": (
        [(0, 100), (15, 85), (25, 92), (40, 75), (52, 91.5), (65, 84.5), (85, 100)],
        [(0, 100), (15, 85), (25, 92), (40, 75), (52, 91.5), (65, 78), (85, 100)],  # lopsided
        1.0,
    ),
    "ascending_triangle": (
        [(0, 100), (15, 120), (30, 105), (45, 120.2), (60, 112), (75, 126)],
        [
            (0, 100),
            (15, 120),
            (30, 105),
            (45, 126),
            (60, 112),
            (75, 132),
        ],  # rising highs: a channel
        1.0,
    ),
    "descending_triangle": (
        [(0, 110), (15, 125), (30, 100), (45, 118), (60, 100.3), (68, 107), (85, 90)],
        [(0, 110), (15, 125), (30, 100), (45, 118), (60, 94), (68, 104), (85, 85)],  # falling lows
        -1.0,
    ),
    "symmetric_triangle": (
        [(0, 110), (15, 125), (30, 100), (45, 119), (60, 106), (75, 125)],
        [
            (0, 110),
            (15, 125),
            (30, 100),
            (45, 124.5),
            (60, 106),
            (75, 130),
        ],  # flat highs: ascending
        1.0,
    ),
    "resistance_breakout": (
        [(0, 100), (20, 120), (35, 110), (50, 120.5), (60, 112), (80, 130)],
        [(0, 100), (20, 120), (35, 110), (50, 120.5), (60, 112), (80, 120.3)],  # stalls below
        1.0,
    ),
    "support_breakdown": (
        [(0, 100), (20, 80), (35, 90), (50, 79.6), (60, 88), (80, 70)],
        [(0, 100), (20, 80), (35, 90), (50, 79.6), (60, 88), (80, 80.2)],  # holds above
        -1.0,
    ),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_pattern_is_detected(kind: str) -> None:
    """The textbook shape is confirmed exactly once, in its direction."""
    shape, _, direction = CASES[kind]
    found = events(build(shape), kind)
    assert len(found) == 1, found
    assert found[0][1] == direction


@pytest.mark.parametrize("kind", list(CASES))
def test_near_miss_is_not_detected(kind: str) -> None:
    """The shape with one defining condition broken is not reported as that pattern."""
    _, near, _ = CASES[kind]
    assert events(build(near), kind) == []


def test_patterns_never_repaint() -> None:
    """Run bar by bar, a confirmation appears at its bar and stays the same afterwards."""
    c = build(CASES["head_and_shoulders"][0])
    ((t_event, _),) = events(c, "head_and_shoulders")
    for stop in range(t_event - 5, len(c) + 1):
        part = c.take(slice(0, stop))
        got = [t for t, _ in events(part, "head_and_shoulders")]
        assert got == ([t_event] if stop > t_event else [])


def test_agent_reports_kind_times_and_levels() -> None:
    """The agent's payload lists the confirmed pattern with kind, times and key levels."""
    c = build(CASES["double_top"][0])
    ((t_event, _),) = events(c, "double_top")
    c = c.take(slice(0, t_event + 3))
    res = REGISTRY["pattern-recognition"]().run(make_input(c), now_iso="x")
    tops = [p for p in res.payload["patterns"] if p["kind"] == "double_top"]
    assert len(tops) == 1
    top = tops[0]
    assert top["direction"] == "bearish"
    assert top["type"] == "chart"
    assert top["start"] < top["end"]
    assert top["levels"]["neckline"] < top["levels"]["top"]
    assert res.score < 0
    assert res.confidence > 0
