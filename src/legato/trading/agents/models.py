"""Decision models: what the trading-decision agent polls, and the rule-based ones it ships.

A model is anything with `name` and `async decide(context) -> ModelDecision` (the
`DecisionModel` protocol). It sees one `DecisionContext` (the bar's indicators, the technical
analysis, the regime and the position held) and answers with an action and a confidence.

Actions allowed depend on the position (`allowed_actions`): flat, BUY, SELL or HOLD; holding a
position, HOLD or CLOSE. There is no adding to a position and no reversal in one step: a
reversal is a CLOSE now and an entry on a later bar.

The rule-based models need no network and decide in microseconds; `default_models()` returns
six of them with different parameters, the desk's offline panel:

- `TrendFollowingModel`: enters with a trending regime when the technical bias agrees; closes
  when the regime turns against the position or the bias flips.
- `MeanReversionModel`: in a ranging regime, buys a close below the lower Bollinger band with
  a low RSI, sells one above the upper band with a high RSI; closes back at the middle band.
- `BreakoutModel`: enters when the close leaves the previous bars' Donchian channel by at
  least `atr_buffer` ATRs, with MACD momentum agreeing; closes back inside the channel's middle.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol, runtime_checkable

from legato.kernel.errors import ValidationError
from legato.trading.agents.records import slot_init
from legato.trading.agents.regime import Regime, RegimeAssessment
from legato.trading.agents.snapshot import IndicatorSnapshot
from legato.trading.agents.technical import Bias, TechnicalAnalysis
from legato.trading.positions import PositionSide

__all__ = [
    "NO_SETUP_CONFIDENCE",
    "BreakoutModel",
    "DecisionContext",
    "DecisionModel",
    "ImmediateDecisionModel",
    "MeanReversionModel",
    "ModelDecision",
    "TradeAction",
    "TrendFollowingModel",
    "allowed_actions",
    "default_models",
]


class TradeAction(enum.Enum):
    """What to do about a symbol: open long, open short, do nothing, or close what is held."""

    BUY = "BUY"
    SELL = "SELL"
    HOLD = "HOLD"
    CLOSE = "CLOSE"


_WHEN_FLAT = frozenset({TradeAction.BUY, TradeAction.SELL, TradeAction.HOLD})
_WHEN_HOLDING = frozenset({TradeAction.HOLD, TradeAction.CLOSE})


def allowed_actions(position: PositionSide | None) -> frozenset[TradeAction]:
    """Return the actions that make sense with `position` held (None: flat)."""
    return _WHEN_FLAT if position is None else _WHEN_HOLDING


@slot_init
@dataclass(frozen=True, slots=True)
class DecisionContext:
    """Everything a model may look at for one symbol at one bar; nothing from later bars."""

    symbol: str
    timestamp: datetime
    indicators: IndicatorSnapshot
    technical: TechnicalAnalysis
    regime: RegimeAssessment
    position: PositionSide | None = None

    def __post_init__(self) -> None:
        symbol, timestamp = self.symbol, self.timestamp
        indicators, technical, regime = self.indicators, self.technical, self.regime
        if (
            indicators.symbol is symbol
            and indicators.timestamp is timestamp
            and technical.symbol is symbol
            and technical.timestamp is timestamp
            and regime.symbol is symbol
            and regime.timestamp is timestamp
        ):
            # The very same objects (the coordinator's case, every bar): equal, no comparing.
            return
        for name, part in (
            ("indicators", self.indicators),
            ("technical", self.technical),
            ("regime", self.regime),
        ):
            if part.symbol != self.symbol or part.timestamp != self.timestamp:
                raise ValidationError(
                    name,
                    f"{part.symbol} at {part.timestamp.isoformat()}",
                    f"the context's own bar ({self.symbol} at {self.timestamp.isoformat()})",
                )

    @property
    def allowed(self) -> frozenset[TradeAction]:
        """Return the actions allowed with the position held."""
        return allowed_actions(self.position)


@slot_init
@dataclass(frozen=True, slots=True)
class ModelDecision:
    """One model's answer: the action, its confidence (0..1) and why.

    `fallback_reason` is set when the model could not answer itself (an LLM that was slow or
    wrong) and a stand-in decided instead; `error` when the model failed outright and its vote
    counts for nothing. `prompt_tokens`, `completion_tokens` and `cost` account for paid calls.
    """

    model: str
    action: TradeAction
    confidence: float
    reasoning: str
    fallback_reason: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        if not 0.0 <= self.confidence <= 1.0:
            raise ValidationError(
                "confidence", self.confidence, "a number in [0, 1]", model=self.model
            )


@runtime_checkable
class DecisionModel(Protocol):
    """A source of trade decisions the trading-decision agent can poll."""

    @property
    def name(self) -> str:
        """Return the model's name, unique within one panel (it labels its votes)."""
        ...

    async def decide(self, context: DecisionContext) -> ModelDecision:
        """Return this model's decision for `context`."""
        ...


NO_SETUP_CONFIDENCE = 0.3
"""The confidence of a HOLD that only means "no setup of my kind here": a weak voice."""


@runtime_checkable
class ImmediateDecisionModel(DecisionModel, Protocol):
    """A decision model that can also answer synchronously, without waiting on anything.

    The decision agent calls `decide_now` inline instead of scheduling a task for it, which
    keeps a panel of rule-based models cheap enough for a backtest's every bar.
    """

    def decide_now(self, context: DecisionContext) -> ModelDecision:
        """Return this model's decision for `context`, synchronously."""
        ...


def _mean(*values: float) -> float:
    return sum(values) / len(values)


class _RuleModel:
    """What every rule-based model shares: a name, and a decision that never waits."""

    __slots__ = ("_fixed", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        # The answers that are the same every time they are given, by what decides them
        # (their text, or the regime and bias their text is made of).
        self._fixed: dict[Hashable, ModelDecision] = {}

    @property
    def name(self) -> str:
        """Return the model's name."""
        return self._name

    async def decide(self, context: DecisionContext) -> ModelDecision:
        """Decide at once: rule-based models never wait."""
        return self.decide_now(context)

    def decide_now(self, context: DecisionContext) -> ModelDecision:
        """The model's decision on `context`."""
        raise NotImplementedError

    def _vote(self, action: TradeAction, confidence: float, reasoning: str) -> ModelDecision:
        return ModelDecision(self._name, action, confidence, reasoning)

    def _fixed_vote(self, action: TradeAction, confidence: float, reasoning: str) -> ModelDecision:
        """`_vote` for an answer whose every part is a constant: built once, then shared.

        Most bars get one of a model's few fixed answers ("inside the bands"), and a
        `ModelDecision` is immutable, so one instance serves every bar that gets it.
        """
        # Keyed by the text alone (hashing an Enum member runs Python code); the action and
        # confidence are checked, so a text given with another answer never gets this one.
        vote = self._fixed.get(reasoning)
        if vote is None or vote.action is not action or vote.confidence != confidence:
            vote = self._fixed[reasoning] = self._vote(action, confidence, reasoning)
        return vote

    def _no_setup(self, key: tuple[Hashable, ...], reasoning: Callable[[], str]) -> ModelDecision:
        """The HOLD for no setup whose text is made of `key`'s parts: built once per key.

        The text is only formatted the first time (`reasoning`); a tuple key is never equal
        to the text keys of `_fixed_vote`.
        """
        vote = self._fixed.get(key)
        if vote is None:
            vote = self._fixed[key] = self._vote(TradeAction.HOLD, NO_SETUP_CONFIDENCE, reasoning())
        return vote


class TrendFollowingModel(_RuleModel):
    """Trades with a trending regime when the technical bias agrees."""

    __slots__ = ("_min_regime_confidence",)

    def __init__(self, name: str = "trend-follower", min_regime_confidence: float = 0.5) -> None:
        if not 0 <= min_regime_confidence <= 1:
            raise ValidationError(
                "min_regime_confidence", min_regime_confidence, "a number in [0, 1]"
            )
        super().__init__(name)
        self._min_regime_confidence = min_regime_confidence

    def decide_now(self, context: DecisionContext) -> ModelDecision:
        """Follow the trend: enter with it, close against it."""
        regime = context.regime
        technical = context.technical
        confidence = _mean(regime.confidence, technical.confidence)
        trending_up = regime.regime is Regime.TRENDING_BULL
        trending_down = regime.regime is Regime.TRENDING_BEAR
        sure = regime.confidence >= self._min_regime_confidence
        if context.position is PositionSide.LONG:
            if trending_down or technical.bias is Bias.SHORT:
                return self._vote(TradeAction.CLOSE, confidence, "trend turned against the long")
            return self._vote(TradeAction.HOLD, confidence, "trend still allows the long")
        if context.position is PositionSide.SHORT:
            if trending_up or technical.bias is Bias.LONG:
                return self._vote(TradeAction.CLOSE, confidence, "trend turned against the short")
            return self._vote(TradeAction.HOLD, confidence, "trend still allows the short")
        if trending_up and sure and technical.bias is Bias.LONG:
            return self._vote(TradeAction.BUY, confidence, "trending bull with a long bias")
        if trending_down and sure and technical.bias is Bias.SHORT:
            return self._vote(TradeAction.SELL, confidence, "trending bear with a short bias")
        # The same answer for every bar of a regime and bias.
        return self._no_setup(
            ("no trend entry", regime.regime, technical.bias),
            lambda: f"no trend entry: {regime.regime.value}, bias {technical.bias.value}",
        )


class MeanReversionModel(_RuleModel):
    """Fades band extremes in a ranging market; stays out of trends and volatility."""

    __slots__ = ("_rsi_high", "_rsi_low")

    def __init__(
        self, name: str = "mean-reversion", rsi_low: float = 30.0, rsi_high: float = 70.0
    ) -> None:
        if not 0 < rsi_low < 50 < rsi_high < 100:
            raise ValidationError(
                "rsi_low", (rsi_low, rsi_high), "0 < rsi_low < 50 < rsi_high < 100"
            )
        super().__init__(name)
        self._rsi_low = rsi_low
        self._rsi_high = rsi_high

    def decide_now(self, context: DecisionContext) -> ModelDecision:
        """Buy the bottom of the range, sell the top, close at the middle."""
        snapshot = context.indicators
        bands = snapshot.bollinger
        rsi = snapshot.rsi
        if bands is None or rsi is None:
            return self._fixed_vote(TradeAction.HOLD, 0.0, "indicators warming up")
        close = snapshot.close
        ranging = context.regime.regime is Regime.RANGING
        if context.position is PositionSide.LONG:
            if close >= bands.middle or not ranging:
                return self._fixed_vote(
                    TradeAction.CLOSE, 0.6, "price back at the mean, or range over"
                )
            return self._fixed_vote(TradeAction.HOLD, 0.5, "waiting for the return to the mean")
        if context.position is PositionSide.SHORT:
            if close <= bands.middle or not ranging:
                return self._fixed_vote(
                    TradeAction.CLOSE, 0.6, "price back at the mean, or range over"
                )
            return self._fixed_vote(TradeAction.HOLD, 0.5, "waiting for the return to the mean")
        if not ranging:
            # One answer per regime.
            regime = context.regime.regime
            return self._no_setup(("not a range", regime), lambda: f"not a range ({regime.value})")
        # How far outside the bands the close is, in band widths: 0 at the band, 1 a width out.
        stretch = max(bands.percent_b - 1.0, -bands.percent_b, 0.0)
        confidence = _mean(min(1.0, 0.5 + stretch), context.regime.confidence)
        if close <= bands.lower and rsi <= self._rsi_low:
            return self._vote(
                TradeAction.BUY, confidence, f"below the lower band, RSI {rsi:.1f} oversold"
            )
        if close >= bands.upper and rsi >= self._rsi_high:
            return self._vote(
                TradeAction.SELL, confidence, f"above the upper band, RSI {rsi:.1f} overbought"
            )
        return self._fixed_vote(TradeAction.HOLD, NO_SETUP_CONFIDENCE, "inside the bands")


class BreakoutModel(_RuleModel):
    """Enters when the close breaks out of the previous bars' channel with momentum."""

    __slots__ = ("_atr_buffer",)

    def __init__(self, name: str = "breakout", atr_buffer: float = 0.0) -> None:
        if not atr_buffer >= 0:
            raise ValidationError("atr_buffer", atr_buffer, "ATRs >= 0")
        super().__init__(name)
        self._atr_buffer = atr_buffer

    def decide_now(self, context: DecisionContext) -> ModelDecision:
        """Buy a break above the channel, sell a break below, close back inside."""
        snapshot = context.indicators
        channel = snapshot.donchian
        atr = snapshot.atr
        macd = snapshot.macd
        if channel is None or atr is None or macd is None:
            return self._fixed_vote(TradeAction.HOLD, 0.0, "indicators warming up")
        close = snapshot.close
        buffer = self._atr_buffer * atr
        if context.position is PositionSide.LONG:
            if close < channel.middle:
                return self._fixed_vote(TradeAction.CLOSE, 0.6, "fell back into the channel")
            return self._fixed_vote(TradeAction.HOLD, 0.5, "breakout holding")
        if context.position is PositionSide.SHORT:
            if close > channel.middle:
                return self._fixed_vote(TradeAction.CLOSE, 0.6, "rose back into the channel")
            return self._fixed_vote(TradeAction.HOLD, 0.5, "breakdown holding")
        if context.regime.regime is Regime.HIGH_VOLATILITY:
            return self._fixed_vote(
                TradeAction.HOLD, NO_SETUP_CONFIDENCE, "no breakouts in high volatility"
            )
        # Confidence grows with how far past the channel the close went, in ATRs.
        if close > channel.upper + buffer and macd.histogram > 0:
            reach = (close - channel.upper) / atr if atr > 0 else 0.0
            return self._vote(
                TradeAction.BUY,
                min(1.0, 0.5 + reach / 2),
                f"close {close:.6g} above the channel high {channel.upper:.6g}",
            )
        if close < channel.lower - buffer and macd.histogram < 0:
            reach = (channel.lower - close) / atr if atr > 0 else 0.0
            return self._vote(
                TradeAction.SELL,
                min(1.0, 0.5 + reach / 2),
                f"close {close:.6g} below the channel low {channel.lower:.6g}",
            )
        return self._fixed_vote(TradeAction.HOLD, NO_SETUP_CONFIDENCE, "inside the channel")


def default_models() -> tuple[TrendFollowingModel | MeanReversionModel | BreakoutModel, ...]:
    """Return the offline panel: six rule-based models, two of each kind, tuned differently."""
    return (
        TrendFollowingModel("trend-follower", min_regime_confidence=0.5),
        TrendFollowingModel("trend-follower-strict", min_regime_confidence=0.75),
        MeanReversionModel("mean-reversion", rsi_low=30.0, rsi_high=70.0),
        MeanReversionModel("mean-reversion-wide", rsi_low=35.0, rsi_high=65.0),
        BreakoutModel("breakout", atr_buffer=0.0),
        BreakoutModel("breakout-confirmed", atr_buffer=0.5),
    )
