"""Synthetic steps and a counting source for the pipeline tests."""

from __future__ import annotations

from collections import Counter
from typing import Any

from conclave.market.candles import Candles
from conclave.market.sources.base import CandleSource
from conclave.pipeline import ALL_AGENTS, StepResult
from conclave.pipeline.context import StepStatus
from conclave.timeframes import Timeframe

AS_OF = 1_665_486_060_000  # one minute after the shared BTC 1h file's last bar closed
NOW_ISO = "2022-10-11T11:01:00.000Z"


def step(
    agent: str,
    score: float | None = 0.5,
    confidence: float | None = 80.0,
    *,
    status: StepStatus = "ok",
    payload: dict[str, Any] | None = None,
) -> StepResult:
    """A step as a runner would record it (values not checked: the decision must)."""
    return StepResult(agent, status, score, confidence, payload or {}, 1.0, error="")


def risk(allowed: Any = True, mult: Any = 1.0, reason: str = "within limits") -> StepResult:
    payload = {"allowed": allowed, "size_multiplier": mult, "level": "ok", "reason": reason}
    return step("risk-manager", 0.0, 100.0, payload=payload)


def steps(
    score: float = 0.5, confidence: float = 80.0, **override: StepResult
) -> dict[str, StepResult]:
    """All nine healthy: directional agents at ``score``/``confidence``, neutral sizing."""
    out = {a: step(a, score, confidence) for a in ALL_AGENTS}
    out["volatility-regime"] = step(
        "volatility-regime", 0.0, 90.0, payload={"regime": "normal", "size_multiplier": 1.0}
    )
    out["risk-manager"] = risk()
    for key, value in override.items():
        out[key.replace("_", "-")] = value
    return out


class CountingSource:
    """Wraps a source and counts `get_candles` calls per (symbol, timeframe)."""

    def __init__(self, inner: CandleSource) -> None:
        self.inner = inner
        self.name = inner.name
        self.simulated = inner.simulated
        self.calls: Counter[tuple[str, str]] = Counter()

    async def get_candles(
        self, symbol: str, timeframe: Timeframe | str, limit: int, end: int | None = None
    ) -> Candles:
        self.calls[(symbol, Timeframe.parse(timeframe).name)] += 1
        return await self.inner.get_candles(symbol, timeframe, limit, end)

    async def aclose(self) -> None:
        await self.inner.aclose()
