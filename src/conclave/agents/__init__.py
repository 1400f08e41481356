"""The nine analysis agents and their explicit registry (ports 5001..5009, in this order)."""

from __future__ import annotations

from conclave.agents.base import Agent
from conclave.agents.inputs import AccountRisk, AccountState, AgentInput, Needs
from conclave.agents.market_structure import MarketStructure
from conclave.agents.momentum import Momentum
from conclave.agents.multi_timeframe import MultiTimeframe
from conclave.agents.news_sentiment import NewsSentiment
from conclave.agents.order_flow import OrderFlow
from conclave.agents.outputs import AgentResult, SeriesOutput, Status
from conclave.agents.params import AgentParams
from conclave.agents.pattern_recognition import PatternRecognition
from conclave.agents.registry import Registry
from conclave.agents.risk_manager import RiskManager
from conclave.agents.statistical_edge import StatisticalEdge
from conclave.agents.volatility_regime import VolatilityRegime

#: The nine agents, in the architecture table's order (ports 5001..5009 follow it).
REGISTRY = Registry(
    {
        "market-structure": MarketStructure,
        "order-flow": OrderFlow,
        "momentum": Momentum,
        "volatility-regime": VolatilityRegime,
        "news-sentiment": NewsSentiment,
        "multi-timeframe": MultiTimeframe,
        "pattern-recognition": PatternRecognition,
        "statistical-edge": StatisticalEdge,
        "risk-manager": RiskManager,
    },
    sizing="volatility-regime",
    risk="risk-manager",
)

#: Default HTTP port of each agent's service (`Registry.ports` of `REGISTRY`).
PORTS = REGISTRY.ports

__all__ = [
    "PORTS",
    "REGISTRY",
    "AccountRisk",
    "AccountState",
    "Agent",
    "AgentInput",
    "AgentParams",
    "AgentResult",
    "Needs",
    "Registry",
    "SeriesOutput",
    "Status",
]
