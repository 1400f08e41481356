"""A finished pipeline run (`PipelineRun`) and the gap rule of its decision (B3)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from conclave.market.validation import FillReport
from conclave.pipeline.context import StepResult
from conclave.pipeline.decision import Decision
from conclave.timeframes import iso_ms


@dataclass(frozen=True, slots=True)
class PipelineRun:
    """A finished run: its id, what it read, every step and the decision.

    ``gaps`` names each window that had bars filled (B3) with its counts; empty when every
    window was complete (or no data was read).
    """

    run_id: str
    account_id: str | None
    symbol: str
    timeframe: str
    as_of_ms: int
    simulated: bool
    source: str
    steps: Mapping[str, StepResult]
    decision: Decision
    duration_ms: float
    started_at: str
    gaps: Mapping[str, FillReport] = field(default_factory=dict)

    @property
    def degraded(self) -> bool:
        """True when any step failed or is missing, or a window missed more than 1 % of its
        bars (the decision says which)."""
        return self.decision.degraded

    @property
    def gaps_filled(self) -> bool:
        """True when any bar the agents read was filled (B3)."""
        return any(report.filled for report in self.gaps.values())

    @property
    def missing_agents(self) -> tuple[str, ...]:
        """Agents without a usable answer, in registry order."""
        return self.decision.missing_agents

    def to_wire(self) -> dict[str, Any]:
        """camelCase JSON form; each step in the seed's shape."""
        return {
            "runId": self.run_id,
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "asOf": iso_ms(self.as_of_ms),
            "accountId": self.account_id,
            "simulated": self.simulated,
            "source": self.source,
            "steps": {name: step.to_wire() for name, step in self.steps.items()},
            "decision": self.decision.to_wire(),
            "degraded": self.degraded,
            "missingAgents": list(self.missing_agents),
            "durationMs": round(self.duration_ms, 3),
            # last: the run store keeps it in the row's extra JSON, which reads back last
            "gaps": {name: report.to_wire() for name, report in self.gaps.items()},
        }


def degrade_for_gaps(decision: Decision, gaps: Mapping[str, FillReport]) -> Decision:
    """``decision`` marked degraded, its reason ending ``gaps: <window> N of M bars missing
    (x %)``, when a window of ``gaps`` missed more than 1 % of its bars (B3); else as is."""
    over = [report.describe() for report in gaps.values() if report.degraded]
    if not over:
        return decision
    return replace(decision, degraded=True, reason=f"{decision.reason}; gaps: {', '.join(over)}")
