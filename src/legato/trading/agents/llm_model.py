"""A decision model that asks a chat LLM, and falls back to a rule-based model when it cannot.

`LLMDecisionModel` sends the bar's readings (indicators, the technical analysis, the regime,
the position and the actions allowed) to an `LLMClient` and asks for a JSON object matching
`LLMDecisionAnswer`: an action, a confidence in [0, 1] and a short reasoning.

It never leaves the panel without a vote. When the LLM is slow (past `timeout`, or the
client's own deadline), unreachable, refuses the request, or answers with something that is
not the schema or picks an action the position does not allow, the model asks its `fallback`
(a rule-based model) instead and records why in `ModelDecision.fallback_reason`. Tokens are
accounted on the decision whenever the LLM answered, even when the answer was then refused.
"""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import pydantic

from legato.kernel.errors import LegatoError, ValidationError
from legato.trading.agents.llm import ChatMessage, InvalidAnswerError, LLMClient, TokenUsage
from legato.trading.agents.models import (
    DecisionContext,
    DecisionModel,
    ModelDecision,
    TradeAction,
)

__all__ = ["LLMDecisionAnswer", "LLMDecisionModel", "decision_prompt"]


class LLMDecisionAnswer(pydantic.BaseModel):
    """The JSON object the LLM must answer with."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    action: Literal["BUY", "SELL", "HOLD", "CLOSE"]
    confidence: float = pydantic.Field(ge=0.0, le=1.0)
    reasoning: str = pydantic.Field(min_length=1, max_length=1000)


_SCHEMA = json.dumps(LLMDecisionAnswer.model_json_schema(), sort_keys=True)
_SYSTEM_PROMPT = (
    "You are one voting member of a trading desk's decision panel. You get one symbol's "
    "indicator readings at the close of a bar. Answer with one JSON object and nothing else, "
    "matching this JSON schema:\n{schema}\n"
    "Choose only among the allowed actions. BUY opens a long, SELL opens a short, CLOSE exits "
    "the position held, HOLD does nothing. confidence is how sure you are, from 0 to 1."
)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def decision_prompt(context: DecisionContext) -> list[ChatMessage]:
    """Return the chat messages that ask an LLM to decide on `context`."""
    snapshot = context.indicators
    readings = {
        "symbol": context.symbol,
        "time": context.timestamp.isoformat(),
        "position": context.position.value if context.position is not None else "flat",
        "allowed_actions": sorted(action.value for action in context.allowed),
        "close": str(snapshot.close_price),
        "ema_fast": _rounded(snapshot.ema_fast),
        "ema_slow": _rounded(snapshot.ema_slow),
        "sma": _rounded(snapshot.sma),
        "rsi": _rounded(snapshot.rsi),
        "macd_histogram": _rounded(snapshot.macd.histogram if snapshot.macd else None),
        "atr_share_of_price": _rounded(snapshot.atr_share),
        "bollinger_percent_b": _rounded(
            snapshot.bollinger.percent_b if snapshot.bollinger else None
        ),
        "adx": _rounded(snapshot.adx.adx if snapshot.adx else None),
        "volatility_ratio": _rounded(snapshot.volatility_ratio),
        "technical": {
            "trend": context.technical.trend.value,
            "bias": context.technical.bias.value,
            "confidence": round(context.technical.confidence, 3),
            "agreeing_signals": list(context.technical.agreeing),
        },
        "regime": {
            "regime": context.regime.regime.value,
            "confidence": round(context.regime.confidence, 3),
            "reasons": list(context.regime.reasons),
        },
    }
    return [
        ChatMessage("system", _SYSTEM_PROMPT.format(schema=_SCHEMA)),
        ChatMessage("user", json.dumps(readings, sort_keys=True)),
    ]


class LLMDecisionModel:
    """Asks an LLM for a decision; falls back to `fallback` when the LLM is slow or wrong."""

    __slots__ = ("_client", "_fallback", "_name", "_timeout")

    def __init__(
        self,
        client: LLMClient,
        fallback: DecisionModel,
        *,
        name: str = "llm",
        timeout: float | None = None,
    ) -> None:
        if timeout is not None and not timeout > 0:
            raise ValidationError("timeout", timeout, "seconds > 0, or None for the client's")
        self._client = client
        self._fallback = fallback
        self._name = name
        self._timeout = timeout

    @property
    def name(self) -> str:
        """Return the model's name."""
        return self._name

    async def decide(self, context: DecisionContext) -> ModelDecision:
        """Return the LLM's decision, or the fallback's with the reason the LLM's was not used."""
        usage = TokenUsage()
        try:
            async with asyncio.timeout(self._timeout):
                answer = await self._client.complete_json(
                    decision_prompt(context), LLMDecisionAnswer
                )
        except TimeoutError:
            return await self._fall_back(context, f"no answer within {self._timeout}s", usage)
        except InvalidAnswerError as error:
            return await self._fall_back(context, error.message, error.usage)
        except LegatoError as error:
            return await self._fall_back(context, f"{error.kind.value}: {error}", usage)
        usage = answer.usage
        action = TradeAction(answer.value.action)
        if action not in context.allowed:
            allowed = ", ".join(sorted(item.value for item in context.allowed))
            return await self._fall_back(
                context, f"answered {action.value}, not one of the allowed {allowed}", usage
            )
        return ModelDecision(
            model=self._name,
            action=action,
            confidence=answer.value.confidence,
            reasoning=answer.value.reasoning,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost=usage.cost,
        )

    async def _fall_back(
        self, context: DecisionContext, reason: str, usage: TokenUsage
    ) -> ModelDecision:
        stand_in = await self._fallback.decide(context)
        return ModelDecision(
            model=self._name,
            action=stand_in.action,
            confidence=stand_in.confidence,
            reasoning=f"{self._fallback.name}: {stand_in.reasoning}",
            fallback_reason=reason,
            error=stand_in.error,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost=usage.cost,
        )
