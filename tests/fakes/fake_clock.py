"""A fake clock for rate-limit tests (re-exported by `tests.fakes.fake_binance`)."""

from __future__ import annotations


class FakeClock:
    """A clock and an async sleep that only advance time, instantly; records every sleep."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
