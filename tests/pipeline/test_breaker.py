"""The circuit breaker's states on a controllable clock (RELIABILITY C2, C3, C9)."""

from __future__ import annotations

import pytest

from conclave.pipeline.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_five_consecutive_failures_not_before() -> None:
    """Four failures keep it closed; the fifth opens it and calls are refused."""
    b = CircuitBreaker(clock=Clock())
    for _ in range(4):
        assert b.allow()
        b.record(False)
    assert b.state == "closed"
    assert b.allow()
    b.record(False)
    assert b.state == "open"
    assert not b.allow()


def test_a_success_resets_the_count() -> None:
    """Failures must be consecutive: a success in between starts again (C3: slow but fine)."""
    b = CircuitBreaker(clock=Clock())
    for _ in range(3):
        b.record(False)
    b.record(True)
    for _ in range(4):
        b.record(False)
    assert b.state == "closed"


def test_one_probe_after_open_s_closes_on_success() -> None:
    """Open for 30 s, then exactly one probe at a time; its success closes the breaker."""
    clock = Clock()
    b = CircuitBreaker(clock=clock)
    for _ in range(5):
        b.record(False)
    clock.now += 29.9
    assert not b.allow()
    assert b.retry_in_s() == pytest.approx(0.1)
    clock.now += 0.2
    assert b.state == "half_open"
    assert b.allow()  # the probe
    assert not b.allow()  # nobody else while it is out
    b.record(True)
    assert b.state == "closed"
    assert b.allow()


def test_a_failed_probe_opens_it_for_another_period() -> None:
    """A probe that fails opens the breaker again at once, for a full open_s."""
    clock = Clock()
    b = CircuitBreaker(clock=clock)
    for _ in range(5):
        b.record(False)
    clock.now += 30.0
    assert b.allow()
    b.record(False)
    assert b.state == "open"
    clock.now += 29.0
    assert not b.allow()
    clock.now += 1.0
    assert b.allow()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="failures"):
        CircuitBreaker(failures=0)


def test_two_probes_must_both_succeed_to_close() -> None:
    """probes=2: one good probe leaves it half open; the second closes it; a bad one reopens."""
    clock = Clock()
    b = CircuitBreaker(failures=1, open_s=10.0, probes=2, clock=clock)
    b.record(False)
    clock.now += 10.0
    assert b.allow()
    assert not b.allow()  # one probe at a time
    b.record(True)
    assert b.state == "half_open"
    assert b.allow()
    b.record(True)
    assert b.state == "closed"
    b.record(False)
    clock.now += 10.0
    assert b.allow()
    b.record(True)
    assert b.allow()
    b.record(False)
    assert b.state == "open"


def test_settings_reach_the_breaker(monkeypatch: pytest.MonkeyPatch) -> None:
    """CONCLAVE_AGENTS__BREAKER__*: a threshold of 2 opens after 2 failures, for open_s."""
    from conclave.settings import Settings

    monkeypatch.setenv("CONCLAVE_AGENTS__BREAKER__FAILURES", "2")
    monkeypatch.setenv("CONCLAVE_AGENTS__BREAKER__OPEN_S", "7.5")
    monkeypatch.setenv("CONCLAVE_AGENTS__BREAKER__PROBES", "3")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    clock = Clock()
    b = CircuitBreaker.from_settings(settings.agents.breaker, clock=clock)
    assert (b.failures, b.open_s, b.probes) == (2, 7.5, 3)
    b.record(False)
    assert b.state == "closed"
    b.record(False)
    assert b.state == "open"
    assert b.snapshot()["nextProbeInS"] == 7.5
    clock.now += 7.5
    assert b.state == "half_open"


def test_defaults_follow_reliability_md() -> None:
    """5 failures, 30 s open, 1 probe; a misspelt breaker setting fails loudly."""
    from pydantic import ValidationError

    from conclave.settings import AgentServiceSettings, BreakerSettings

    assert BreakerSettings() == BreakerSettings(failures=5, open_s=30.0, probes=1)
    with pytest.raises(ValidationError):
        AgentServiceSettings.model_validate({"breaker": {"failure": 2}})
    with pytest.raises(ValidationError):
        BreakerSettings(probes=0)
