"""The pipeline: one market snapshot, the nine agents, one decision (see ARCHITECTURE.md)."""

from __future__ import annotations

from conclave.pipeline.context import AccountReader, PipelineContext, StepResult, StepStatus
from conclave.pipeline.decision import (
    ALL_AGENTS,
    ANALYSIS_AGENTS,
    DIRECTIONAL_AGENTS,
    Contribution,
    Decision,
    DecisionConfig,
    decide,
)
from conclave.pipeline.orchestrator import Pipeline, PipelineRun
from conclave.pipeline.runners import (
    DEFAULT_EXECUTOR,
    AgentRunner,
    ExecutorKind,
    LocalRunner,
    execute_agent,
    make_executor,
)

__all__ = [
    "ALL_AGENTS",
    "ANALYSIS_AGENTS",
    "DEFAULT_EXECUTOR",
    "DIRECTIONAL_AGENTS",
    "AccountReader",
    "AgentRunner",
    "Contribution",
    "Decision",
    "DecisionConfig",
    "ExecutorKind",
    "LocalRunner",
    "Pipeline",
    "PipelineContext",
    "PipelineRun",
    "StepResult",
    "StepStatus",
    "decide",
    "execute_agent",
    "make_executor",
]
