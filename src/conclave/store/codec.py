"""Between a run's wire dict (`PipelineRun.to_wire`) and the rows of the run store.

`encode` splits the wire into a ``runs`` row, one ``run_steps`` row per agent (in the
wire's order) and a ``decisions`` row; `decode` puts them back together so that the result
equals the saved dict. Keys this module does not know go into each row's ``extra`` JSON
instead of being dropped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: (wire key, column) of the ``runs`` row, in `PipelineRun.to_wire` order.
RUN_FIELDS: tuple[tuple[str, str], ...] = (
    ("runId", "run_id"),
    ("symbol", "symbol"),
    ("timeframe", "timeframe"),
    ("asOf", "as_of"),
    ("accountId", "account_id"),
    ("simulated", "simulated"),
    ("source", "source"),
)
RUN_TAIL_FIELDS: tuple[tuple[str, str], ...] = (
    ("degraded", "degraded"),
    ("missingAgents", "missing_agents"),
    ("durationMs", "duration_ms"),
)
STEP_FIELDS: tuple[tuple[str, str], ...] = (
    ("score", "score"),
    ("confidence", "confidence"),
    ("payload", "payload"),
    ("meta", "meta"),
)
DECISION_FIELDS: tuple[tuple[str, str], ...] = (
    ("status", "status"),
    ("action", "action"),
    ("strength", "strength"),
    ("conviction", "conviction"),
    ("confidence", "confidence"),
    ("sizeMultiplier", "size_multiplier"),
    ("tradable", "tradable"),
    ("degraded", "degraded"),
    ("missingAgents", "missing_agents"),
    ("reason", "reason"),
    ("quorum", "quorum"),
    ("contributions", "contributions"),
)
_RUN_KNOWN = {k for k, _ in RUN_FIELDS + RUN_TAIL_FIELDS} | {"steps", "decision"}


@dataclass(frozen=True, slots=True)
class RunRows:
    """The rows of one run, ready to insert in one transaction."""

    run: dict[str, Any]
    steps: list[dict[str, Any]]
    decision: dict[str, Any]

    @property
    def run_id(self) -> str:
        """The run's id."""
        return str(self.run["run_id"])


def _columns(
    wire: Mapping[str, Any], fields: Sequence[tuple[str, str]], what: str
) -> dict[str, Any]:
    missing = [k for k, _ in fields if k not in wire]
    if missing:
        raise ValueError(f"{what} lacks {', '.join(missing)}")
    return {col: wire[key] for key, col in fields}


def _extra(wire: Mapping[str, Any], known: set[str]) -> dict[str, Any] | None:
    rest = {k: v for k, v in wire.items() if k not in known}
    return rest or None


def _finite(value: Any, what: str) -> Any:
    # NaN would be stored as NULL by SQLite and refused by PostgreSQL's JSON: refuse it here
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{what} is not finite ({value})")
    return value


def encode(wire: Mapping[str, Any]) -> RunRows:
    """Split ``wire`` into rows; raise `ValueError` when a key the schema needs is missing."""
    run = _columns(wire, RUN_FIELDS + RUN_TAIL_FIELDS, "run")
    if not isinstance(run["run_id"], str) or not run["run_id"]:
        raise ValueError("run.runId must be a non-empty string")
    decision_wire = wire.get("decision")
    steps_wire = wire.get("steps")
    if not isinstance(decision_wire, Mapping) or not isinstance(steps_wire, Mapping):
        raise ValueError("run lacks its steps or decision object")
    decision = _columns(decision_wire, DECISION_FIELDS, "run.decision")
    run["missing_agents"] = list(run["missing_agents"])
    run["duration_ms"] = _finite(run["duration_ms"], "run.durationMs")
    run["status"] = decision["status"]
    run["action"] = decision["action"]
    run["extra"] = _extra(wire, _RUN_KNOWN)
    decision["run_id"] = run["run_id"]
    decision["extra"] = _extra(decision_wire, {k for k, _ in DECISION_FIELDS})
    for col in ("strength", "conviction", "confidence", "size_multiplier"):
        decision[col] = _finite(decision[col], f"run.decision.{col}")
    steps: list[dict[str, Any]] = []
    for position, (agent, step_wire) in enumerate(steps_wire.items()):
        if not isinstance(step_wire, Mapping):
            raise ValueError(f"run.steps.{agent} is not an object")
        row = _columns(step_wire, STEP_FIELDS, f"run.steps.{agent}")
        meta = row["meta"] if isinstance(row["meta"], Mapping) else {}
        for col in ("score", "confidence"):
            row[col] = _finite(row[col], f"run.steps.{agent}.{col}")
        row.update(
            run_id=run["run_id"],
            agent=agent,
            position=position,
            status=str(meta.get("status", "")),
            extra=_extra(step_wire, {k for k, _ in STEP_FIELDS}),
        )
        steps.append(row)
    return RunRows(run, steps, decision)


def _wire(row: Mapping[Any, Any], fields: Sequence[tuple[str, str]]) -> dict[str, Any]:
    return {key: row[col] for key, col in fields}


def decode(
    run: Mapping[Any, Any], steps: Sequence[Mapping[Any, Any]], decision: Mapping[Any, Any]
) -> dict[str, Any]:
    """The wire dict of a stored run; ``steps`` ordered by their position."""
    out = _wire(run, RUN_FIELDS)
    out["steps"] = {s["agent"]: _wire(s, STEP_FIELDS) | (s["extra"] or {}) for s in steps}
    out["decision"] = _wire(decision, DECISION_FIELDS) | (decision["extra"] or {})
    out.update(_wire(run, RUN_TAIL_FIELDS))
    out.update(run["extra"] or {})
    return out
