"""What an agent answers: a score and confidence per bar (`SeriesOutput`), and the live
result of the last bar in the shape of the wire contract (`AgentResult`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from conclave.agents.plain import wire_answer

F64 = npt.NDArray[np.float64]
Status = Literal["ok", "insufficient_data", "stale_data", "error"]


@dataclass(frozen=True, slots=True, eq=False)
class SeriesOutput:
    """Per-bar score (-1..1) and confidence (0..100), same length as the candles.

    ``evidence`` describes the last bar in plain JSON types. ``status``/``reason`` let an
    agent say why it has no view (news-sentiment without a source: confidence 0 and why).
    ``columns`` holds per-bar numbers the decision reads from the evidence (each the same
    length as ``score``; volatility-regime: ``size_multiplier``), so the backtester has
    every bar's value, not only the last one's.
    """

    score: F64
    confidence: F64
    evidence: dict[str, Any]
    status: Status = "ok"
    reason: str = ""
    columns: Mapping[str, F64] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AgentResult:
    """One agent's answer for the last bar, in the shape of the wire contract."""

    score: float
    confidence: float
    payload: dict[str, Any]
    agent: str
    version: str
    duration_ms: float
    timestamp: str
    as_of: str | None
    status: Status = "ok"
    reason: str = ""

    def to_wire(self) -> dict[str, Any]:
        """``{"score", "confidence", "payload", "meta": {...}}`` exactly as on the wire."""
        return wire_answer(
            self.score, self.confidence, self.payload,
            agent=self.agent, version=self.version, duration_ms=self.duration_ms,
            timestamp=self.timestamp, as_of=self.as_of, status=self.status, reason=self.reason,
        )  # fmt: skip
