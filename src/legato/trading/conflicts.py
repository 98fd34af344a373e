"""Conflicts between the desk's agents, and how they are resolved: by rules or by an LLM.

`detect_conflicts(decision, technical, regime, settings)` is pure. It looks at the entry the
panel leans to (the decision's action, or the leading action of a split vote) and reports:

    HIGH_VOLATILITY     an entry while the regime agent sees high volatility
    SPLIT_VOTE          the panel leaned to an entry but its consensus was under the
                        agent's threshold (the decision itself is HOLD)
    WEAK_CONSENSUS      an agreed entry whose consensus is under `weak_consensus`
    AGAINST_BIAS        a long while the technical bias is short, or the reverse
    AGAINST_REGIME      a long in a trending-bear regime, or a short in a trending bull

A HOLD or CLOSE has no conflicts: doing nothing or reducing risk needs no arbitration.

A `Resolution` says what to do: PROCEED, MODIFY_SIZE (trade `size_factor` of the normal
size), WAIT (skip this bar) or ABORT (drop the idea), with reasoning and a confidence.
`RuleResolver` decides from the conflicts alone, in microseconds and offline. `LLMResolver`
asks an OpenAI-compatible chat API for a JSON `LLMResolutionAnswer`; an answer that is slow,
malformed, or out of range falls back to the rules, and the fallback says why.
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, Protocol

import pydantic

from legato.kernel.errors import LegatoError, ValidationError
from legato.trading.agents.decision import TradeDecision
from legato.trading.agents.llm import ChatMessage, InvalidAnswerError, LLMClient, TokenUsage
from legato.trading.agents.models import TradeAction
from legato.trading.agents.regime import Regime, RegimeAssessment
from legato.trading.agents.technical import Bias, TechnicalAnalysis

__all__ = [
    "Conflict",
    "ConflictCase",
    "ConflictKind",
    "ConflictResolver",
    "ConflictSettings",
    "LLMResolutionAnswer",
    "LLMResolver",
    "Resolution",
    "ResolutionAction",
    "RuleResolver",
    "candidate_action",
    "detect_conflicts",
    "resolution_prompt",
]

_ONE = Decimal(1)
_ENTRIES = (TradeAction.BUY, TradeAction.SELL)


class ConflictKind(enum.Enum):
    """What the agents disagree about."""

    HIGH_VOLATILITY = "high_volatility"
    SPLIT_VOTE = "split_vote"
    WEAK_CONSENSUS = "weak_consensus"
    AGAINST_BIAS = "against_bias"
    AGAINST_REGIME = "against_regime"


class ResolutionAction(enum.Enum):
    """What the desk does about a conflicted entry."""

    PROCEED = "proceed"
    MODIFY_SIZE = "modify_size"
    WAIT = "wait"
    ABORT = "abort"


@dataclass(frozen=True, slots=True)
class Conflict:
    """One conflict: its kind and a sentence saying what disagrees with what."""

    kind: ConflictKind
    description: str


@dataclass(frozen=True, slots=True)
class ConflictSettings:
    """Thresholds of conflict detection and of the rule resolver.

    `weak_consensus`: an agreed entry under this consensus is a WEAK_CONSENSUS conflict.
    `high_volatility_size`: the share of size the rules allow in a high-volatility regime.
    `weak_size`: the share they allow for a weak consensus or a trade against the bias.
    """

    weak_consensus: float = 0.6
    high_volatility_size: Decimal = Decimal("0.5")
    weak_size: Decimal = Decimal("0.5")

    def __post_init__(self) -> None:
        if not 0 <= self.weak_consensus <= 1:
            raise ValidationError("weak_consensus", self.weak_consensus, "a share in [0, 1]")
        for name in ("high_volatility_size", "weak_size"):
            value = getattr(self, name)
            if not isinstance(value, Decimal) or not 0 < value <= 1:
                raise ValidationError(name, value, "a Decimal share in (0, 1]")


@dataclass(frozen=True, slots=True)
class Resolution:
    """How a conflicted entry is settled, by whom, and why.

    `size_factor` scales the normal size (1 unless MODIFY_SIZE). `source` is "rules" or
    "llm"; `fallback_reason` is set when the LLM was asked but the rules decided. Token
    counts and cost account for the LLM call, answered or not.
    """

    action: ResolutionAction
    size_factor: Decimal
    reasoning: str
    confidence: float
    source: str
    fallback_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        if not isinstance(self.size_factor, Decimal) or not 0 <= self.size_factor <= 1:
            raise ValidationError("size_factor", self.size_factor, "a Decimal in [0, 1]")
        if not 0 <= self.confidence <= 1:
            raise ValidationError("confidence", self.confidence, "a number in [0, 1]")

    @property
    def trades(self) -> bool:
        """True when the entry goes ahead (PROCEED or MODIFY_SIZE with some size)."""
        return (
            self.action in (ResolutionAction.PROCEED, ResolutionAction.MODIFY_SIZE)
            and self.size_factor > 0
        )


@dataclass(frozen=True, slots=True)
class ConflictCase:
    """What a resolver looks at: the decision, the analyses, and the conflicts found."""

    decision: TradeDecision
    technical: TechnicalAnalysis
    regime: RegimeAssessment
    conflicts: tuple[Conflict, ...]

    @property
    def action(self) -> TradeAction:
        """The entry in question (the leading action of a split vote)."""
        return candidate_action(self.decision)


def candidate_action(decision: TradeDecision) -> TradeAction:
    """The action the panel leans to: the decision's, or the leader of a split vote."""
    return decision.leading_action if decision.split else decision.action


def detect_conflicts(
    decision: TradeDecision,
    technical: TechnicalAnalysis,
    regime: RegimeAssessment,
    settings: ConflictSettings | None = None,
) -> tuple[Conflict, ...]:
    """Return the conflicts around the entry `decision` leans to (none for HOLD or CLOSE)."""
    cfg = settings if settings is not None else ConflictSettings()
    action = candidate_action(decision)
    if action not in _ENTRIES:
        return ()
    long = action is TradeAction.BUY
    side = "long" if long else "short"
    found: list[Conflict] = []
    if regime.regime is Regime.HIGH_VOLATILITY:
        found.append(
            Conflict(
                ConflictKind.HIGH_VOLATILITY,
                f"a {side} entry in a high-volatility regime ({'; '.join(regime.reasons)})",
            )
        )
    if decision.split:
        found.append(
            Conflict(
                ConflictKind.SPLIT_VOTE,
                f"split vote: {action.value} leads with only {decision.consensus:.1%} of the "
                "weight",
            )
        )
    elif decision.consensus < cfg.weak_consensus:
        found.append(
            Conflict(
                ConflictKind.WEAK_CONSENSUS,
                # One decimal: 59.6% shown as "60%, under 60%" reads as a contradiction.
                f"{action.value} agreed with {decision.consensus:.1%} of the weight, under "
                f"{cfg.weak_consensus:.0%}",
            )
        )
    against = Bias.SHORT if long else Bias.LONG
    if technical.bias is against:
        found.append(
            Conflict(
                ConflictKind.AGAINST_BIAS,
                f"a {side} entry against the technical bias ({technical.bias.value}, score "
                f"{technical.score:+.2f})",
            )
        )
    opposite = Regime.TRENDING_BEAR if long else Regime.TRENDING_BULL
    if regime.regime is opposite:
        found.append(
            Conflict(
                ConflictKind.AGAINST_REGIME,
                f"a {side} entry in a {regime.regime.value} regime",
            )
        )
    return tuple(found)


class ConflictResolver(Protocol):
    """Settles a conflicted entry."""

    async def resolve(self, case: ConflictCase) -> Resolution:
        """Return the resolution of `case`."""
        ...


class RuleResolver:
    """Resolves conflicts by fixed rules, most severe first.

    - a trade against the regime's trend: ABORT;
    - a split vote: WAIT for a clearer bar;
    - high volatility: MODIFY_SIZE to `high_volatility_size`;
    - a weak consensus or a trade against the technical bias: MODIFY_SIZE to `weak_size`
      (multiplied with the volatility cut when both apply);
    - no conflict: PROCEED.
    """

    __slots__ = ("_settings",)

    def __init__(self, settings: ConflictSettings | None = None) -> None:
        self._settings = settings if settings is not None else ConflictSettings()

    async def resolve(self, case: ConflictCase) -> Resolution:
        """Return the rules' resolution of `case`."""
        return self.resolve_now(case.conflicts)

    def resolve_now(self, conflicts: Sequence[Conflict]) -> Resolution:
        """Return the rules' resolution of `conflicts` (no I/O)."""
        kinds = {conflict.kind for conflict in conflicts}
        if not kinds:
            return Resolution(ResolutionAction.PROCEED, _ONE, "no conflict", 1.0, "rules")
        if ConflictKind.AGAINST_REGIME in kinds:
            return Resolution(
                ResolutionAction.ABORT,
                Decimal(0),
                "the entry goes against the regime's trend: not taken",
                0.8,
                "rules",
            )
        if ConflictKind.SPLIT_VOTE in kinds:
            return Resolution(
                ResolutionAction.WAIT,
                Decimal(0),
                "the panel is split: wait for a bar it agrees on",
                0.7,
                "rules",
            )
        factor = _ONE
        reasons = []
        if ConflictKind.HIGH_VOLATILITY in kinds:
            factor *= self._settings.high_volatility_size
            reasons.append(f"high volatility: size x{self._settings.high_volatility_size}")
        if kinds & {ConflictKind.WEAK_CONSENSUS, ConflictKind.AGAINST_BIAS}:
            factor *= self._settings.weak_size
            reasons.append(f"weak agreement with the analysis: size x{self._settings.weak_size}")
        return Resolution(ResolutionAction.MODIFY_SIZE, factor, "; ".join(reasons), 0.6, "rules")


class LLMResolutionAnswer(pydantic.BaseModel):
    """The JSON object the LLM must answer a conflict with."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    action: Literal["proceed", "modify_size", "wait", "abort"]
    size_factor: float = pydantic.Field(ge=0.0, le=1.0)
    confidence: float = pydantic.Field(ge=0.0, le=1.0)
    reasoning: str = pydantic.Field(min_length=1, max_length=1000)


_SCHEMA = json.dumps(LLMResolutionAnswer.model_json_schema(), sort_keys=True)
_SYSTEM = (
    "You arbitrate conflicts on a trading desk. The decision panel wants to enter a trade, "
    "but the analysts disagree. Answer with one JSON object and nothing else, matching this "
    "JSON schema:\n{schema}\n"
    "proceed: take the trade at full size (size_factor 1). modify_size: take it at "
    "size_factor of the normal size (between 0 and 1). wait: skip this bar. abort: drop it."
)


def resolution_prompt(case: ConflictCase) -> list[ChatMessage]:
    """Return the chat messages asking an LLM to resolve `case`."""
    decision = case.decision
    facts = {
        "symbol": decision.symbol,
        "time": decision.timestamp.isoformat(),
        "entry": case.action.value,
        "consensus": round(decision.consensus, 3),
        "split_vote": decision.split,
        "votes": [
            {"model": vote.model, "action": vote.action.value, "confidence": vote.confidence}
            for vote in decision.votes
            if vote.error is None
        ],
        "technical": {
            "trend": case.technical.trend.value,
            "bias": case.technical.bias.value,
            "confidence": round(case.technical.confidence, 3),
        },
        "regime": {
            "regime": case.regime.regime.value,
            "confidence": round(case.regime.confidence, 3),
        },
        "conflicts": [
            {"kind": conflict.kind.value, "description": conflict.description}
            for conflict in case.conflicts
        ],
    }
    return [
        ChatMessage("system", _SYSTEM.format(schema=_SCHEMA)),
        ChatMessage("user", json.dumps(facts, sort_keys=True)),
    ]


class LLMResolver:
    """Asks an LLM to resolve a conflict; the rules decide when its answer is unusable.

    `timeout` bounds the whole call (None: the client's own deadline). The client's retries
    happen inside that bound.
    """

    __slots__ = ("_client", "_fallback", "_timeout")

    def __init__(
        self,
        client: LLMClient,
        fallback: RuleResolver | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        if timeout is not None and not timeout > 0:
            raise ValidationError("timeout", timeout, "seconds > 0, or None for the client's")
        self._client = client
        self._fallback = fallback if fallback is not None else RuleResolver()
        self._timeout = timeout

    async def resolve(self, case: ConflictCase) -> Resolution:
        """Return the LLM's resolution of `case`, or the rules' with why the LLM's was not used."""
        try:
            async with asyncio.timeout(self._timeout):
                answer = await self._client.complete_json(
                    resolution_prompt(case), LLMResolutionAnswer
                )
        except TimeoutError:
            return self._fall_back(case, f"no answer within {self._timeout}s", TokenUsage())
        except InvalidAnswerError as error:
            return self._fall_back(case, error.message, error.usage)
        except LegatoError as error:
            return self._fall_back(case, f"{error.kind.value}: {error}", TokenUsage())
        value = answer.value
        action = ResolutionAction(value.action)
        factor = Decimal(repr(value.size_factor))
        if action is ResolutionAction.PROCEED:
            factor = _ONE
        elif action in (ResolutionAction.WAIT, ResolutionAction.ABORT):
            factor = Decimal(0)
        elif factor <= 0:
            return self._fall_back(case, "modify_size with a size_factor of 0", answer.usage)
        return Resolution(
            action=action,
            size_factor=factor,
            reasoning=value.reasoning,
            confidence=value.confidence,
            source="llm",
            prompt_tokens=answer.usage.prompt_tokens,
            completion_tokens=answer.usage.completion_tokens,
            cost=answer.usage.cost,
        )

    def _fall_back(self, case: ConflictCase, reason: str, usage: TokenUsage) -> Resolution:
        ruled = self._fallback.resolve_now(case.conflicts)
        return Resolution(
            action=ruled.action,
            size_factor=ruled.size_factor,
            reasoning=ruled.reasoning,
            confidence=ruled.confidence,
            source="rules",
            fallback_reason=reason,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost=usage.cost,
        )
