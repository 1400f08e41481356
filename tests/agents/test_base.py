"""The base class owns the lifecycle: parameters, length check, validation, timing, errors."""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pytest

from conclave.agents import REGISTRY, Agent, AgentInput, AgentParams, Needs, SeriesOutput
from conclave.errors import AgentConfigError, AgentError, AgentOutputError, SkipStepError
from conclave.timeframes import iso_ms
from tests.agents.helpers import make_input, random_candles

NOW = "2025-01-01T00:00:00.000Z"


class _Params(AgentParams):
    value: float = 0.5


class _Fake(Agent):
    name: ClassVar[str] = "fake"
    version: ClassVar[str] = "0.0.1"
    description: ClassVar[str] = "test double"
    needs: ClassVar[Needs] = Needs(min_bars=10, lookback=10)
    Params: ClassVar[type[AgentParams]] = _Params
    params: _Params

    def compute(self, data: AgentInput) -> SeriesOutput:
        n = len(data.candles)
        if self.params.value == 99:
            raise ZeroDivisionError("boom")
        s = np.full(n, self.params.value)
        ev: dict[str, object] = {"v": self.params.value}
        if self.params.value == 7:
            ev = {"bad": np.float64(1.0).item() * float("nan")}
        return SeriesOutput(s, np.full(n, 50.0), ev)  # type: ignore[arg-type]


def test_unknown_parameter_suggests_the_nearest_name() -> None:
    """A misspelled parameter fails loudly and names the nearest valid one."""
    with pytest.raises(AgentConfigError, match="did you mean 'swing_k'"):
        REGISTRY["market-structure"]({"swingk": 3})
    with pytest.raises(AgentConfigError, match="invalid parameter 'fast'"):
        REGISTRY["market-structure"]({"fast": 0})


def test_parameters_are_frozen() -> None:
    """Parameters cannot be changed after construction."""
    agent = REGISTRY["momentum"]({"period": 10})
    with pytest.raises(Exception, match="frozen"):
        agent.params.period = 3  # type: ignore[misc]
    assert agent.info()["parameters"]["period"] == 10


def test_wire_shape_and_meta() -> None:
    """to_wire gives exactly score, confidence, payload and meta with the contract's keys."""
    c = random_candles(1, 50)
    res = _Fake().run(make_input(c), now_iso=NOW)
    wire = res.to_wire()
    assert set(wire) == {"score", "confidence", "payload", "meta"}
    assert set(wire["meta"]) == {
        "agent", "version", "duration_ms", "timestamp", "as_of", "status", "reason"
    }  # fmt: skip
    assert wire["meta"]["timestamp"] == NOW
    assert wire["meta"]["as_of"] == iso_ms(int(c.close_time[-1]))
    assert wire["meta"]["duration_ms"] >= 0
    assert wire["score"] == 0.5
    json.dumps(wire)


def test_out_of_range_output_is_an_output_error() -> None:
    """A score outside [-1, 1] or a non-finite payload is an AgentOutputError naming the agent."""
    c = random_candles(1, 50)
    with pytest.raises(AgentOutputError, match="fake") as info:
        _Fake({"value": 7.0}).run(make_input(c), now_iso=NOW)
    assert info.value.agent == "fake"
    with pytest.raises(AgentOutputError, match="fake"):
        _Fake({"value": 7.0 + 1}).run(make_input(c), now_iso=NOW)


def test_exceptions_are_wrapped_naming_the_agent() -> None:
    """Any exception inside compute becomes an AgentError (a skip-step error) naming it."""
    with pytest.raises(AgentError, match="fake failed") as info:
        _Fake({"value": 99.0}).run(make_input(random_candles(1, 50)), now_iso=NOW)
    assert isinstance(info.value, SkipStepError)
    assert info.value.agent == "fake"
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_insufficient_data_is_a_status() -> None:
    """Too few bars: status insufficient_data with the counts, score and confidence 0."""
    res = _Fake().run(make_input(random_candles(1, 4)), now_iso=NOW)
    assert (res.status, res.score, res.confidence) == ("insufficient_data", 0.0, 0.0)
    assert "needs 10" in res.reason
    assert "got 4" in res.reason


def test_higher_timeframes_relative_to_the_run() -> None:
    """Multiples map to the nearest exchange interval the run's timeframe tiles."""
    needs = Needs(min_bars=1, lookback=1, higher=(4, 24))
    assert needs.higher_timeframes("1h") == ("4h", "1d")
    assert needs.higher_timeframes("15m") == ("1h", "6h")
    assert needs.higher_timeframes("1d") == ("1w", "1M")
    assert needs.higher_timeframes("1M") == ()
