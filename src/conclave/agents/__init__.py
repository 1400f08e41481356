"""The nine analysis agents and their explicit registry (ports 5001..5009, in this order)."""

from __future__ import annotations

from conclave.agents.base import (
    AccountState,
    Agent,
    AgentInput,
    AgentParams,
    AgentResult,
    Headline,
    Needs,
    SeriesOutput,
)
from conclave.agents.market_structure import MarketStructure
from conclave.agents.momentum import Momentum
from conclave.agents.multi_timeframe import MultiTimeframe
from conclave.agents.news_sentiment import NewsSentiment
from conclave.agents.order_flow import OrderFlow
from conclave.agents.pattern_recognition import PatternRecognition
from conclave.agents.risk_manager import RiskManager
from conclave.agents.statistical_edge import StatisticalEdge
from conclave.agents.volatility_regime import VolatilityRegime

REGISTRY: dict[str, type[Agent]] = {
    "market-structure": MarketStructure,
    "order-flow": OrderFlow,
    "momentum": Momentum,
    "volatility-regime": VolatilityRegime,
    "news-sentiment": NewsSentiment,
    "multi-timeframe": MultiTimeframe,
    "pattern-recognition": PatternRecognition,
    "statistical-edge": StatisticalEdge,
    "risk-manager": RiskManager,
}

#: Default HTTP port of each agent's service.
PORTS: dict[str, int] = {name: 5001 + i for i, name in enumerate(REGISTRY)}

__all__ = [
    "PORTS",
    "REGISTRY",
    "AccountState",
    "Agent",
    "AgentInput",
    "AgentParams",
    "AgentResult",
    "Headline",
    "Needs",
    "SeriesOutput",
]
