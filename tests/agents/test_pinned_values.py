"""The nine agents say exactly what they said before the speed-ups of issue 16.

tests/agents/data/pinned_values.json was written by scripts/pin_agent_values.py from the
code before any change; these tests recompute the same records with the current code and
hold them equal bit for bit (JSON floats round-trip exactly).
"""

from __future__ import annotations

import importlib.util
import json
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from conclave.agents import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
PINNED = Path(__file__).parent / "data" / "pinned_values.json"


@cache
def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pins", ROOT / "scripts/pin_agent_values.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def _want() -> dict[str, Any]:
    return dict(json.loads(PINNED.read_text()))


@cache
def _got(data: Path | None) -> dict[str, Any]:
    return dict(_script().compute(data))


def _same(got: object, want: object) -> bool:
    return json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_live_run_on_a_simulated_market_is_unchanged(name: str) -> None:
    """Score, confidence, status, reason and payload of `Agent.run` at each pinned time."""
    got, want = _got(None)["sim"]["live"], _want()["sim"]["live"]
    assert set(got) == set(want)
    for as_of in want:
        assert _same(got[as_of][name], want[as_of][name]), (as_of, got[as_of][name])


@pytest.mark.parametrize("name", list(REGISTRY))
def test_series_on_a_simulated_market_is_unchanged(name: str) -> None:
    """Every per-bar array of `Agent.series` (by hash of its bytes) and its evidence."""
    assert _same(_got(None)["sim"]["series"][name], _want()["sim"]["series"][name])


@pytest.mark.shared_data
def test_real_candles_give_the_pinned_values(shared_data: Path) -> None:
    """On real Binance candles (BTC 1h, ETH 4h) the live records and the series match."""
    got, want = _got(shared_data)["real"], _want()["real"]
    assert set(got) == set(want)
    for file in want:
        for as_of, per_agent in want[file]["live"].items():
            for name, digest in per_agent.items():
                assert got[file]["live"][as_of][name] == digest, (file, as_of, name)
        for name, rec in want[file]["series"].items():
            assert _same(got[file]["series"][name], rec), (file, name)
