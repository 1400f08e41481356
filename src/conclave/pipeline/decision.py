"""The decision: a weighted, confidence-aware combination of the analysis agents' steps.

`decide` is a pure function of the steps and a `DecisionConfig`. Over the *healthy*
directional agents (status ok, score finite in [-1, 1], confidence finite in [0, 100]),
with weight ``w_i``, score ``s_i`` and confidence ``c_i``:

    conviction     = sum_i w_i c_i s_i / sum_i w_i c_i       (0 when every c_i is 0)  in [-1, 1]
    contribution_i = w_i c_i s_i / sum_j w_j c_j              (they sum to the conviction)

a confidence-weighted mean of the scores: each agent's evidence enters once, on the
scores' scale, and its confidence says how much it counts next to the others' (unanimous
agents at score ``s`` give ``s``). The former ``sum w c s / sum w`` counted strength twice
(score and confidence both carry it); weighting by ``w`` alone would drop what only the
confidence says (statistical-edge: does mean reversion hold). Failed agents and those with
status ``no_data`` (no input) are left out of both sums, never counted as a score of 0.

    agreement  = |sum w_i c_i s_i| / sum w_i c_i |s_i|     (1: all on one side, 0: cancel)
    confidence = (sum w_i c_i / sum w_i) * agreement                              in [0, 100]

`DEFAULT_WEIGHTS`: agents whose scores correlate at 0.7 or more on both shared 1h files
(BTC, ETH 2017-2022) share one vote. Thresholds: buy/sell at the 80th percentile of
|conviction| on those files with those weights, strong at the 97th; never tuned on returns.

Action: BUY when conviction >= ``buy_threshold``, SELL when <= -``sell_threshold``, else
HOLD. Strength: ``min(1, |conviction| / strong_threshold)`` for BUY/SELL, 0 for HOLD.
Size multiplier: for a BUY, strength x the volatility-regime's ``size_multiplier``
(``volatility_fallback`` when that step failed) x the risk manager's ``size_multiplier``;
for a SELL (an exit), strength alone: the risk rules shrink entries, never exits.

Gates, in order: fewer healthy analysis agents with data than ``quorum`` -> status
``failed``, reason ``insufficient_agents``, no action (RELIABILITY C6); risk manager
missing, failed or with an invalid verdict -> action ``BLOCKED``, never tradable (C5); risk veto
(``allowed`` false) -> a BUY becomes HOLD, not tradable, the risk manager's reason, while a
SELL stays a tradable SELL (the veto blocks entries only; ``risk_veto`` true in both). Any
failed or missing step marks the decision degraded and names it (C1, C4); an analysis step
with status ``no_data`` does not (the agent had nothing to read, it did not fail).

Which agents are directional, which one sizes and which one is the risk manager comes from
the `Registry` given to `decide` (default `conclave.agents.REGISTRY`); a `DecisionConfig` is
validated against one (`DecisionConfig.for_registry`; the default registry otherwise).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from conclave.agents import REGISTRY
from conclave.agents.registry import Registry
from conclave.pipeline.context import StepResult

# The default registry's roles, for the backtester (which computes over these nine).
ALL_AGENTS: tuple[str, ...] = REGISTRY.names
RISK_AGENT: str = REGISTRY.risk
SIZING_AGENT: str = REGISTRY.sizing
ANALYSIS_AGENTS: tuple[str, ...] = REGISTRY.analysis
DIRECTIONAL_AGENTS: tuple[str, ...] = REGISTRY.directional

Action = Literal["BUY", "SELL", "HOLD", "BLOCKED"]
DecisionStatus = Literal["ok", "blocked", "failed", "no_signal"]

#: Default weights (others 1.0): market-structure and multi-timeframe share one trend vote
#: (scores correlate at 0.82 on BTC and ETH 1h; the next pair at 0.55).
DEFAULT_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {"market-structure": 0.5, "multi-timeframe": 0.5}
)


class DecisionConfig(BaseModel):
    """Weights, thresholds and quorum of the decision; frozen, unknown keys are errors.

    ``weights`` maps directional agents to a weight >= 0 (missing ones take
    `DEFAULT_WEIGHTS`, else 1.0; the sizing and risk agents take none). Thresholds apply to
    conviction in [-1, 1]. ``quorum`` counts healthy analysis agents that had data (not
    ``no_data``; at most 8 of the nine): 6 decides without a news source (7 with data) and
    one agent down, never with four of nine missing (C6). Names and quorum are checked
    against `conclave.agents.REGISTRY`, or the registry given to `for_registry`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    weights: dict[str, float] = Field(default_factory=dict)
    # p80 and p97 of |conviction| on the shared BTC and ETH 1h files (module docstring)
    buy_threshold: float = Field(0.59, gt=0.0, le=1.0)
    sell_threshold: float = Field(0.59, gt=0.0, le=1.0)
    strong_threshold: float = Field(0.72, gt=0.0, le=1.0)
    quorum: int = Field(6, ge=1)
    volatility_fallback: float = Field(0.5, ge=0.0, le=1.0)

    @classmethod
    def for_registry(cls, registry: Registry, **values: Any) -> DecisionConfig:
        """A config of ``values`` whose weights and quorum are checked against ``registry``."""
        return cls.model_validate(values, context={"registry": registry})

    @field_validator("weights", mode="before")
    @classmethod
    def _known_agents(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, Mapping):
            return value
        registry = _registry(info)
        directional = registry.directional
        for key, w in value.items():
            if key not in directional:
                if key in registry:
                    raise ValueError(f"agent {key!r} is not directional and takes no weight")
                near = difflib.get_close_matches(str(key), directional, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise ValueError(f"unknown agent {key!r} in weights{hint}")
            if isinstance(w, int | float) and not (math.isfinite(w) and w >= 0):
                raise ValueError(f"weight of {key!r} must be a finite number >= 0, got {w!r}")
        return {a: float(value.get(a, DEFAULT_WEIGHTS.get(a, 1.0))) for a in directional}

    @field_validator("quorum")
    @classmethod
    def _at_most_all(cls, value: int, info: ValidationInfo) -> int:
        most = len(_registry(info).analysis)
        if value > most:
            raise PydanticCustomError(
                "less_than_equal", "Input should be less than or equal to {le}", {"le": most}
            )
        return value

    @model_validator(mode="after")
    def _coherent(self, info: ValidationInfo) -> DecisionConfig:
        if self.strong_threshold < max(self.buy_threshold, self.sell_threshold):
            raise ValueError("strong_threshold must be at least the buy and sell thresholds")
        registry = _registry(info)
        if sum(self.weight(a, registry) for a in registry.directional) <= 0:
            raise ValueError("at least one directional agent needs a weight above 0")
        return self

    def weight(self, agent: str, registry: Registry = REGISTRY) -> float:
        """The weight of ``agent``: as configured for a directional agent of ``registry``
        (default `DEFAULT_WEIGHTS`, else 1.0), 0 for the others."""
        if agent not in registry.directional:
            return 0.0
        return self.weights.get(agent, DEFAULT_WEIGHTS.get(agent, 1.0))

    def check(self, registry: Registry) -> None:
        """Raise `ValueError` unless this config fits ``registry``: weights only for its
        directional agents, a quorum no larger than its analysis agents."""
        if self.weights and self.weights.keys() != set(registry.directional):
            raise ValueError(
                f"the decision's weights are for {sorted(self.weights)}, the registry's"
                f" directional agents are {sorted(registry.directional)}: build the config"
                " with DecisionConfig.for_registry(registry, ...)"
            )
        if self.quorum > len(registry.analysis):
            raise ValueError(
                f"quorum {self.quorum} is above the registry's {len(registry.analysis)}"
                " analysis agents"
            )


def _registry(info: ValidationInfo) -> Registry:
    """The registry a config is validated against: the context's, else `REGISTRY`."""
    context = info.context
    found = context.get("registry") if isinstance(context, Mapping) else None
    return found if isinstance(found, Registry) else REGISTRY


@dataclass(frozen=True, slots=True)
class Contribution:
    """One agent's part in the decision; ``contribution`` is None when the step failed."""

    agent: str
    status: str
    weight: float
    score: float | None
    confidence: float | None
    contribution: float | None

    def to_wire(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "status": self.status,
            "weight": self.weight,
            "score": self.score,
            "confidence": self.confidence,
            "contribution": self.contribution,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """What the run concluded. ``action`` is None when no decision was made (status failed
    or no_signal); ``tradable`` is true only for BUY/SELL with a size above 0.
    ``risk_veto``: the risk manager did not allow trading, which turns a BUY into HOLD
    and leaves a SELL (an exit) tradable."""

    status: DecisionStatus
    action: Action | None
    reason: str
    strength: float = 0.0
    conviction: float | None = None
    confidence: float | None = None
    size_multiplier: float = 0.0
    tradable: bool = False
    risk_veto: bool = False
    degraded: bool = False
    missing_agents: tuple[str, ...] = ()
    healthy_analysis: int = 0
    quorum: int = 0
    contributions: tuple[Contribution, ...] = field(default_factory=tuple)

    @classmethod
    def no_signal(cls, reason: str, missing: tuple[str, ...], *, quorum: int) -> Decision:
        """No decision because the data could not be used (stale data, source down)."""
        return cls("no_signal", None, reason, degraded=True, missing_agents=missing,
                   quorum=quorum)  # fmt: skip

    def to_wire(self) -> dict[str, Any]:
        """camelCase JSON form."""
        return {
            "status": self.status,
            "action": self.action,
            "strength": self.strength,
            "conviction": self.conviction,
            "confidence": self.confidence,
            "sizeMultiplier": self.size_multiplier,
            "tradable": self.tradable,
            "degraded": self.degraded,
            "missingAgents": list(self.missing_agents),
            "reason": self.reason,
            "quorum": {"healthy": self.healthy_analysis, "required": self.quorum},
            "contributions": {c.agent: c.to_wire() for c in self.contributions},
            # last: the run store keeps it in the row's extra JSON, which reads back last
            "riskVeto": self.risk_veto,
        }


def _multiplier(step: StepResult | None) -> float | None:
    """The step's payload ``size_multiplier`` when the step is healthy and it is in [0, 1]."""
    if step is None or not step.ok:
        return None
    m = step.payload.get("size_multiplier")
    if isinstance(m, bool) or not isinstance(m, int | float):
        return None
    return float(m) if math.isfinite(m) and 0.0 <= m <= 1.0 else None


def _risk_verdict(step: StepResult | None) -> tuple[bool, float, str] | None:
    """(allowed, size multiplier, reason) from a healthy risk step, else None."""
    mult = _multiplier(step)
    if step is None or mult is None or not isinstance(step.payload.get("allowed"), bool):
        return None
    return bool(step.payload["allowed"]), mult, str(step.payload.get("reason", ""))


def _usable(agent: str, step: StepResult | None, registry: Registry) -> bool:
    """Healthy, and for the sizing and risk agents with a valid multiplier and verdict."""
    if step is None or not step.ok:
        return False
    if agent == registry.sizing:
        return _multiplier(step) is not None
    if agent == registry.risk:
        return _risk_verdict(step) is not None
    return True


def _no_data(step: StepResult | None) -> bool:
    """The agent had no input to speak from: left out of the sums, not counted as failed."""
    return step is not None and step.status == "no_data"


def _why(step: StepResult | None) -> str:
    if step is None:
        return "no result"
    if not step.ok:
        return f"{step.status}: {step.error}" if step.error else step.status
    return "invalid verdict (allowed must be a boolean, size_multiplier in [0, 1])"


def _contribution(
    agent: str,
    step: StepResult | None,
    usable: bool,
    weight: float,
    parts: Mapping[str, float],
) -> Contribution:
    w = weight
    if step is None:
        return Contribution(agent, "missing", w, None, None, None)
    if not usable:
        status = "invalid_output" if step.status == "ok" else step.status
        return Contribution(agent, status, w, None, None, None)
    return Contribution(agent, "ok", w, step.score, step.confidence, parts.get(agent, 0.0))


def decide(
    steps: Mapping[str, StepResult], config: DecisionConfig, registry: Registry = REGISTRY
) -> Decision:
    """Combine the steps of ``registry``'s agents into one `Decision` (formula and gates in
    the module docstring); `ValueError` if ``config`` does not fit ``registry``."""
    config.check(registry)
    names = registry.names
    usable = {a: _usable(a, steps.get(a), registry) for a in names}
    no_data = tuple(a for a in registry.analysis if _no_data(steps.get(a)))
    missing = tuple(a for a in names if not usable[a] and a not in no_data)
    healthy = [a for a in registry.analysis if usable[a]]
    degraded = bool(missing)

    weights = {a: config.weight(a, registry) for a in registry.directional}
    directional = [a for a in registry.directional if usable[a]]
    total_w = sum(weights[a] for a in directional)
    # the operations and their order are `backtest.signals.pre_decide`'s: equal bits
    wc = {a: weights[a] * float(steps[a].confidence or 0.0) for a in directional}  # not None
    pull = {a: wc[a] * float(steps[a].score or 0.0) for a in directional}
    sum_wc = net = spread = 0.0
    for a in directional:
        sum_wc += wc[a]
        net += pull[a]
        spread += abs(pull[a])
    parts = {a: pull[a] / sum_wc if sum_wc > 0 else 0.0 for a in directional}
    contributions = tuple(
        _contribution(a, steps.get(a), usable[a], weights.get(a, 0.0), parts) for a in names
    )
    common: dict[str, Any] = {
        "degraded": degraded,
        "missing_agents": missing,
        "healthy_analysis": len(healthy),
        "quorum": config.quorum,
        "contributions": contributions,
    }
    if len(healthy) < config.quorum:
        reason = (
            f"insufficient_agents: {len(healthy)} of {len(registry.analysis)} analysis agents"
            f" healthy with data, quorum {config.quorum}"
            + "".join(f"; {k} {', '.join(v)}" for k, v in
                      (("missing", missing), ("no data", no_data)) if v)
        )  # fmt: skip
        return Decision("failed", None, reason, **common)
    if total_w <= 0:
        reason = "insufficient_agents: no healthy directional agent has a weight above 0"
        return Decision("failed", None, reason, **common)

    conviction = net / sum_wc if sum_wc > 0 else 0.0
    agreement = abs(net) / spread if spread > 0 else 0.0
    confidence = min(100.0, sum_wc / total_w * agreement)
    if conviction >= config.buy_threshold:
        action: Action = "BUY"
    elif conviction <= -config.sell_threshold:
        action = "SELL"
    else:
        action = "HOLD"
    strength = min(1.0, abs(conviction) / config.strong_threshold) if action != "HOLD" else 0.0
    vol = _multiplier(steps.get(registry.sizing))
    vol_mult = config.volatility_fallback if vol is None else vol
    numbers: dict[str, Any] = {"conviction": conviction, "confidence": confidence}

    risk_step = steps.get(registry.risk)
    verdict = _risk_verdict(risk_step)
    if verdict is None:
        reason = f"risk_manager_unavailable: {_why(risk_step)}; never tradable without it"
        return Decision("blocked", "BLOCKED", reason, **numbers, **common)
    allowed, risk_mult, risk_reason = verdict
    veto = f"risk_veto: {risk_reason or 'the risk manager did not allow trading'}"
    if not allowed and action != "SELL":
        return Decision("ok", "HOLD", veto, risk_veto=True, **numbers, **common)

    # the risk rules shrink or block entries only: an exit is sized by the decision alone
    size = strength if action == "SELL" else strength * vol_mult * risk_mult
    tradable = action in ("BUY", "SELL") and size > 0
    bits = [f"conviction {conviction:+.3f}"]
    if not allowed:
        bits.append(f"{veto} (blocks entries only: an exit goes through)")
    if action == "HOLD":
        bits.append(f"inside the thresholds (-{config.sell_threshold}, {config.buy_threshold})")
    if vol is None and action != "SELL":
        bits.append(f"{registry.sizing} unavailable: size x{config.volatility_fallback}")
    if degraded:
        bits.append(f"degraded without {', '.join(missing)}")
    return Decision(
        "ok",
        action,
        "; ".join(bits),
        strength=strength,
        size_multiplier=size,
        tradable=tradable,
        risk_veto=not allowed,
        **numbers,
        **common,
    )
