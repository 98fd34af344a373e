"""The desk's analysis agents, the models they poll, and the LLM client.

Per symbol and bar: an `IndicatorSet` turns the bar into an `IndicatorSnapshot`; the
`TechnicalAnalysisAgent` reads trend, bias and confidence from it, the `RegimeDetectionAgent`
the market regime; the `TradingDecisionAgent` polls a panel of `DecisionModel`s on the
resulting `DecisionContext` and returns a `TradeDecision` with the consensus. Every output is
a frozen value, ready to publish on the bus or store. See docs/concepts/agents.md.
"""

from __future__ import annotations

from legato.trading.agents.decision import (
    Consensus,
    DecisionSettings,
    TradeDecision,
    TradingDecisionAgent,
    weigh_votes,
)
from legato.trading.agents.indicators import (
    ADX,
    ATR,
    EMA,
    MACD,
    RSI,
    SMA,
    ADXValue,
    BollingerBands,
    BollingerValue,
    DonchianChannel,
    DonchianValue,
    MACDValue,
    RealizedVolatility,
)
from legato.trading.agents.llm import (
    ChatMessage,
    InvalidAnswerError,
    LLMAnswer,
    LLMClient,
    LLMSettings,
    LLMUsage,
    TokenUsage,
)
from legato.trading.agents.llm_model import LLMDecisionAnswer, LLMDecisionModel, decision_prompt
from legato.trading.agents.models import (
    NO_SETUP_CONFIDENCE,
    BreakoutModel,
    DecisionContext,
    DecisionModel,
    ImmediateDecisionModel,
    MeanReversionModel,
    ModelDecision,
    TradeAction,
    TrendFollowingModel,
    allowed_actions,
    default_models,
)
from legato.trading.agents.regime import (
    Regime,
    RegimeAssessment,
    RegimeDetectionAgent,
    RegimeSettings,
)
from legato.trading.agents.snapshot import IndicatorSet, IndicatorSettings, IndicatorSnapshot
from legato.trading.agents.technical import (
    Bias,
    Signal,
    TechnicalAnalysis,
    TechnicalAnalysisAgent,
    TechnicalSettings,
    Trend,
)

__all__ = [
    "ADX",
    "ATR",
    "EMA",
    "MACD",
    "NO_SETUP_CONFIDENCE",
    "RSI",
    "SMA",
    "ADXValue",
    "Bias",
    "BollingerBands",
    "BollingerValue",
    "BreakoutModel",
    "ChatMessage",
    "Consensus",
    "DecisionContext",
    "DecisionModel",
    "DecisionSettings",
    "DonchianChannel",
    "DonchianValue",
    "ImmediateDecisionModel",
    "IndicatorSet",
    "IndicatorSettings",
    "IndicatorSnapshot",
    "InvalidAnswerError",
    "LLMAnswer",
    "LLMClient",
    "LLMDecisionAnswer",
    "LLMDecisionModel",
    "LLMSettings",
    "LLMUsage",
    "MACDValue",
    "MeanReversionModel",
    "ModelDecision",
    "RealizedVolatility",
    "Regime",
    "RegimeAssessment",
    "RegimeDetectionAgent",
    "RegimeSettings",
    "Signal",
    "TechnicalAnalysis",
    "TechnicalAnalysisAgent",
    "TechnicalSettings",
    "TokenUsage",
    "TradeAction",
    "TradeDecision",
    "TradingDecisionAgent",
    "Trend",
    "TrendFollowingModel",
    "allowed_actions",
    "decision_prompt",
    "default_models",
    "weigh_votes",
]
