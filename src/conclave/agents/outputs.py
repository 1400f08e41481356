"""What an agent answers: a score and confidence per bar (`SeriesOutput`), and the live
result of the last bar in the shape of the wire contract (`AgentResult`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from conclave.agents.plain import wire_answer
from conclave.slots import slot_setters

F64 = npt.NDArray[np.float64]
Status = Literal["ok", "no_data", "insufficient_data", "stale_data", "error"]
#: Name of the optional per-bar column saying where an agent had input: 1.0 where it had,
#: 0.0 where it had none (it then has nothing to say there: status ``no_data``).
HAS_DATA = "has_data"


# Nine of each object below are built per pipeline run. A frozen dataclass's generated
# ``__init__`` sets each field through ``object.__setattr__``; the ``__init__`` methods
# below write the slots through their descriptors instead (bound at the end of the module):
# the same objects, every field set, in about half the time.


@dataclass(frozen=True, slots=True, eq=False, init=False)
class SeriesOutput:
    """Per-bar score (-1..1) and confidence (0..100), same length as the candles.

    ``evidence`` describes the last bar in plain JSON types. ``status``/``reason`` let an
    agent say why it has no view: ``no_data`` when it had no input to speak from at the
    last bar (news-sentiment without a news source, or without headlines in its horizon);
    it is not a failure, but the decision leaves the agent out of its sums and its quorum.
    ``columns`` holds per-bar numbers the decision reads (each the same length as
    ``score``; volatility-regime: ``size_multiplier``), so the backtester has every bar's
    value, not only the last one's. An agent whose input can be missing at some bars gives
    the column `HAS_DATA` (1.0 where it had input, 0.0 where not) and status ``no_data``
    exactly when the last bar has none; status ``no_data`` without that column means no
    bar had any (`has_data`).
    """

    score: F64
    confidence: F64
    evidence: dict[str, Any]
    status: Status = "ok"
    reason: str = ""
    columns: Mapping[str, F64] = field(default_factory=dict)

    def __init__(
        self,
        score: F64,
        confidence: F64,
        evidence: dict[str, Any],
        status: Status = "ok",
        reason: str = "",
        columns: Mapping[str, F64] | None = None,
    ) -> None:
        _so_score(self, score)
        _so_confidence(self, confidence)
        _so_evidence(self, evidence)
        _so_status(self, status)
        _so_reason(self, reason)
        _so_columns(self, {} if columns is None else columns)

    def has_data(self) -> npt.NDArray[np.bool_]:
        """Per bar, whether the agent had input there: the `HAS_DATA` column when given,
        else every bar unless the status is ``no_data`` (then none)."""
        col = self.columns.get(HAS_DATA)
        if col is not None:
            return np.asarray(col) > 0.0
        return np.full(self.score.shape, self.status != "no_data", dtype=np.bool_)


@dataclass(frozen=True, slots=True, init=False)
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

    def __init__(
        self,
        score: float,
        confidence: float,
        payload: dict[str, Any],
        agent: str,
        version: str,
        duration_ms: float,
        timestamp: str,
        as_of: str | None,
        status: Status = "ok",
        reason: str = "",
    ) -> None:
        _ar_score(self, score)
        _ar_confidence(self, confidence)
        _ar_payload(self, payload)
        _ar_agent(self, agent)
        _ar_version(self, version)
        _ar_duration_ms(self, duration_ms)
        _ar_timestamp(self, timestamp)
        _ar_as_of(self, as_of)
        _ar_status(self, status)
        _ar_reason(self, reason)

    def to_wire(self) -> dict[str, Any]:
        """``{"score", "confidence", "payload", "meta": {...}}`` exactly as on the wire."""
        return wire_answer(
            self.score, self.confidence, self.payload,
            agent=self.agent, version=self.version, duration_ms=self.duration_ms,
            timestamp=self.timestamp, as_of=self.as_of, status=self.status, reason=self.reason,
        )  # fmt: skip


(_so_score, _so_confidence, _so_evidence, _so_status, _so_reason, _so_columns) = slot_setters(
    SeriesOutput
)
(
    _ar_score, _ar_confidence, _ar_payload, _ar_agent, _ar_version, _ar_duration_ms,
    _ar_timestamp, _ar_as_of, _ar_status, _ar_reason,
) = slot_setters(AgentResult)  # fmt: skip
