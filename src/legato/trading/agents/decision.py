"""The trading-decision agent: polls a panel of models and turns their votes into one decision.

Consensus is weighted by confidence. Each action's weight is the sum of the confidences of
the models that chose it; the leading action is the heaviest, and its consensus strength is
its weight over the weight of all votes (a share from 0 to 1). Ties go to the more cautious
action (CLOSE, then HOLD); a tie between BUY and SELL is HOLD. A model that fails or runs past
`model_timeout` is recorded with its error and counts for nothing.

The final action is the leading one only when its strength reaches `min_consensus`; a weaker
lead is a split vote, and the decision is HOLD (with `leading_action` and `split` kept, so
the coordinator can see the conflict and resolve it). BUY and SELL come with an entry (the
bar's close), a stop `stop_atr` ATRs away and a target `target_atr` ATRs away, in Decimal.
With a `tick_size`, the entry is rounded to the nearest tick, the stop away from the entry and
the target towards it, so rounding never tightens the stop nor stretches the target.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from typing import cast

from legato.kernel.errors import ValidationError
from legato.trading.agents.models import (
    DecisionContext,
    DecisionModel,
    ImmediateDecisionModel,
    ModelDecision,
    TradeAction,
    default_models,
)
from legato.trading.agents.records import slot_init

__all__ = [
    "Consensus",
    "DecisionSettings",
    "TradeDecision",
    "TradingDecisionAgent",
    "weigh_votes",
]

# Ties go to the earlier action in this list: reducing risk beats doing nothing beats trading.
_CAUTION_ORDER = (TradeAction.CLOSE, TradeAction.HOLD, TradeAction.BUY, TradeAction.SELL)
_HOLD_SLOT = _CAUTION_ORDER.index(TradeAction.HOLD)
_BUY_SLOT = _CAUTION_ORDER.index(TradeAction.BUY)
_SELL_SLOT = _CAUTION_ORDER.index(TradeAction.SELL)


@slot_init
@dataclass(frozen=True, slots=True)
class Consensus:
    """The weighted tally of a panel's votes.

    `weights` maps each action to the summed confidence of its voters; `strength` is the
    leading action's share of the total weight; `agreeing` counts the models that chose it.
    """

    leading_action: TradeAction
    strength: float
    weights: tuple[tuple[TradeAction, float], ...]
    agreeing: int
    voters: int


def weigh_votes(decisions: Sequence[ModelDecision]) -> Consensus:
    """Tally `decisions` by confidence; failed models (with `error`) do not count."""
    # Lists indexed in _CAUTION_ORDER rather than dicts keyed by action: Enum hashing (and
    # `.value`) is slow in Python, and this runs for every bar of a backtest. `index` finds
    # the member by identity, in C.
    weights = [0.0, 0.0, 0.0, 0.0]
    counts = [0, 0, 0, 0]
    voters = 0
    for decision in decisions:
        if decision.error is not None:
            continue
        voters += 1
        slot = _CAUTION_ORDER.index(decision.action)
        weights[slot] += decision.confidence
        counts[slot] += 1
    total = sum(weights)
    if total <= 0:
        leading = _HOLD_SLOT
    else:
        top = max(weights)
        # The first of the heaviest (confidences are never NaN: a vote checks its own).
        leading = weights.index(top)
        if leading == _BUY_SLOT and weights[_SELL_SLOT] == top:
            # Opposite entries with equal weight (and nothing heavier): the panel has no view.
            leading = _HOLD_SLOT
    close, hold, buy, sell = _CAUTION_ORDER
    return Consensus(
        leading_action=_CAUTION_ORDER[leading],
        strength=weights[leading] / total if total > 0 else 0.0,
        weights=((close, weights[0]), (hold, weights[1]), (buy, weights[2]), (sell, weights[3])),
        agreeing=counts[leading],
        voters=voters,
    )


@dataclass(frozen=True, slots=True)
class DecisionSettings:
    """How the decision agent turns votes into orders' levels."""

    min_consensus: float = 0.5
    stop_atr: Decimal = Decimal(2)
    target_atr: Decimal = Decimal(3)
    tick_size: Decimal | None = None
    model_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_consensus <= 1:
            raise ValidationError("min_consensus", self.min_consensus, "a share in [0, 1]")
        for field in ("stop_atr", "target_atr"):
            value = getattr(self, field)
            if not isinstance(value, Decimal) or not value.is_finite() or value <= 0:
                raise ValidationError(field, value, "a Decimal number of ATRs > 0")
        if self.tick_size is not None and (
            not isinstance(self.tick_size, Decimal) or not self.tick_size > 0
        ):
            raise ValidationError("tick_size", self.tick_size, "a Decimal > 0, or None")
        if not self.model_timeout > 0:
            raise ValidationError("model_timeout", self.model_timeout, "seconds > 0")


@slot_init
@dataclass(frozen=True, slots=True)
class TradeDecision:
    """The agent's decision for one symbol at one bar, with every model's vote.

    `entry`, `stop` and `target` are set for BUY and SELL only. `leading_action` is what the
    panel leaned towards; `action` differs from it only when the vote was `split`.
    """

    symbol: str
    timestamp: datetime
    action: TradeAction
    leading_action: TradeAction
    consensus: float
    split: bool
    reference_price: Decimal
    entry: Decimal | None
    stop: Decimal | None
    target: Decimal | None
    votes: tuple[ModelDecision, ...]
    reasoning: str

    @property
    def risk_reward(self) -> Decimal | None:
        """Return target distance over stop distance, or None without levels."""
        if self.entry is None or self.stop is None or self.target is None:
            return None
        risk = abs(self.entry - self.stop)
        return abs(self.target - self.entry) / risk if risk else None


def _atr_decimal(atr: float) -> Decimal:
    # Twelve significant digits: far finer than any tick, and a stable text for storage.
    return Decimal(f"{atr:.12g}")


def _round(price: Decimal, tick: Decimal | None, rounding: str) -> Decimal:
    if tick is None:
        return price
    return (price / tick).to_integral_value(rounding=rounding) * tick


def _failed(model: str, error: str) -> ModelDecision:
    return ModelDecision(
        model, TradeAction.HOLD, 0.0, "the model gave no usable answer", error=error
    )


class TradingDecisionAgent:
    """Polls its models concurrently and returns a `TradeDecision` with their consensus.

    Models default to `default_models()`, the offline rule-based panel. Model names must be
    unique: they label the votes that are stored and shown.
    """

    __slots__ = ("_all_immediate", "_immediate", "_models", "_settings")

    def __init__(
        self,
        models: Sequence[DecisionModel] | None = None,
        settings: DecisionSettings | None = None,
    ) -> None:
        panel: tuple[DecisionModel, ...] = tuple(models) if models is not None else default_models()
        if not panel:
            raise ValidationError("models", list(panel), "at least one decision model")
        names = [model.name for model in panel]
        if len(set(names)) != len(names):
            raise ValidationError("models", names, "models with unique names")
        self._models = panel
        # Checked once: a runtime protocol check costs more than a rule model's whole answer.
        self._immediate = tuple(isinstance(model, ImmediateDecisionModel) for model in panel)
        self._all_immediate: tuple[ImmediateDecisionModel, ...] | None = (
            cast(tuple[ImmediateDecisionModel, ...], panel) if all(self._immediate) else None
        )
        self._settings = settings if settings is not None else DecisionSettings()

    @property
    def models(self) -> tuple[DecisionModel, ...]:
        """Return the panel, in polling order."""
        return self._models

    @property
    def settings(self) -> DecisionSettings:
        """Return the agent's settings."""
        return self._settings

    async def decide(self, context: DecisionContext) -> TradeDecision:
        """Poll every model on `context` and return the decision their votes support.

        Models that can answer at once (`ImmediateDecisionModel`) are called inline; the
        others are polled concurrently in a task group, each under `model_timeout`.
        """
        if self._all_immediate is not None:
            # Every model answers at once (the offline rule panel): one pass, nothing to wait on.
            answer = self._answer_now
            return self.combine(context, [answer(model, context) for model in self._all_immediate])
        votes: list[ModelDecision | None] = [None] * len(self._models)
        waiting: list[tuple[int, DecisionModel]] = []
        for index, (model, immediate) in enumerate(zip(self._models, self._immediate, strict=True)):
            if immediate:
                votes[index] = self._answer_now(cast(ImmediateDecisionModel, model), context)
            else:
                waiting.append((index, model))
        if waiting:
            async with asyncio.TaskGroup() as group:
                polls = [
                    (
                        index,
                        group.create_task(self._poll(model, context), name=f"decide:{model.name}"),
                    )
                    for index, model in waiting
                ]
            for index, poll in polls:
                votes[index] = poll.result()
        return self.combine(context, [vote for vote in votes if vote is not None])

    def combine(self, context: DecisionContext, votes: Sequence[ModelDecision]) -> TradeDecision:
        """Return the decision `votes` support for `context` (no polling: pure arithmetic)."""
        cfg = self._settings
        # A tuple, not the frozenset: `in` then compares members by identity, in C, instead of
        # hashing each vote's action in Python.
        allowed = tuple(context.allowed)
        # `_value_` is what `.value` returns, without its Python-level property (every bar).
        held = context.position._value_ if context.position is not None else "flat"
        # A vote for an action the position does not allow cannot be carried out.
        checked = tuple(
            [
                vote
                if vote.action in allowed or vote.error is not None
                else replace(vote, error=f"{vote.action.value} is not allowed when {held}")
                for vote in votes
            ]
        )
        tally = weigh_votes(checked)
        split = tally.strength < cfg.min_consensus
        action = TradeAction.HOLD if split else tally.leading_action
        close = context.indicators.close_price
        entry = stop = target = None
        atr = context.indicators.atr
        if action in (TradeAction.BUY, TradeAction.SELL) and atr is not None:
            atr_value = _atr_decimal(atr)
            tick = cfg.tick_size
            entry = _round(close, tick, ROUND_HALF_EVEN)
            if action is TradeAction.BUY:
                stop = _round(entry - cfg.stop_atr * atr_value, tick, ROUND_FLOOR)
                target = _round(entry + cfg.target_atr * atr_value, tick, ROUND_FLOOR)
            else:
                stop = _round(entry + cfg.stop_atr * atr_value, tick, ROUND_CEILING)
                target = _round(entry - cfg.target_atr * atr_value, tick, ROUND_CEILING)
        if split:
            reasoning = (
                f"split vote: {tally.leading_action._value_} leads with {tally.strength:.0%} "
                f"of the weight (< {cfg.min_consensus:.0%}); holding"
            )
        else:
            reasoning = (
                f"{tally.agreeing} of {tally.voters} models chose {action._value_}, "
                f"{tally.strength:.0%} of the weight"
            )
        return TradeDecision(
            symbol=context.symbol,
            timestamp=context.timestamp,
            action=action,
            leading_action=tally.leading_action,
            consensus=tally.strength,
            split=split,
            reference_price=close,
            entry=entry,
            stop=stop,
            target=target,
            votes=checked,
            reasoning=reasoning,
        )

    def _answer_now(self, model: ImmediateDecisionModel, context: DecisionContext) -> ModelDecision:
        try:
            decision = model.decide_now(context)
        except Exception as error:
            return _failed(model.name, f"{type(error).__name__}: {error}")
        return decision if decision.model == model.name else replace(decision, model=model.name)

    async def _poll(self, model: DecisionModel, context: DecisionContext) -> ModelDecision:
        try:
            async with asyncio.timeout(self._settings.model_timeout):
                decision = await model.decide(context)
        except TimeoutError:
            return _failed(model.name, f"no answer within {self._settings.model_timeout}s")
        except Exception as error:
            # One broken model must not take the panel down; its vote is void and says why.
            return _failed(model.name, f"{type(error).__name__}: {error}")
        if decision.model != model.name:
            return replace(decision, model=model.name)
        return decision
