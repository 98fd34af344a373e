"""TradingDecisionAgent: consensus arithmetic, levels from ATR, failing models, determinism
and no look-ahead over recorded data."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from decimal import Decimal
from itertools import islice

import pytest

from legato.kernel.clock import Clock
from legato.kernel.errors import ValidationError
from legato.trading.agents.decision import (
    DecisionSettings,
    TradeDecision,
    TradingDecisionAgent,
    weigh_votes,
)
from legato.trading.agents.models import (
    DecisionContext,
    DecisionModel,
    ModelDecision,
    TradeAction,
)
from legato.trading.market_data import Bar, default_market_data_dir, load_bars
from legato.trading.positions import PositionSide

from .scripted_bars import contexts, flat, trend

DATA = default_market_data_dir()
BTC = "binance_BTC-USDT-PERP_5m_2023-01.csv"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"recorded data not found at {DATA}")


class FixedModel:
    """A panel member that always gives the same answer (a test stand-in for a real model)."""

    def __init__(self, name: str, action: TradeAction, confidence: float) -> None:
        self.name = name
        self.action = action
        self.confidence = confidence

    async def decide(self, context: DecisionContext) -> ModelDecision:
        return ModelDecision(self.name, self.action, self.confidence, "fixed")


class SlowModel:
    """A panel member that takes `delay` seconds of clock time to answer."""

    def __init__(self, name: str, delay: float) -> None:
        self.name = name
        self.delay = delay

    async def decide(self, context: DecisionContext) -> ModelDecision:
        await asyncio.sleep(self.delay)
        return ModelDecision(self.name, TradeAction.BUY, 1.0, "late")


class BrokenModel:
    """A panel member whose every call fails."""

    name = "broken"

    async def decide(self, context: DecisionContext) -> ModelDecision:
        raise RuntimeError("model crashed")


def vote(action: TradeAction, confidence: float, name: str = "m") -> ModelDecision:
    return ModelDecision(name, action, confidence, "test")


def test_consensus_is_the_leading_actions_share_of_the_confidence_weight() -> None:
    tally = weigh_votes(
        [
            vote(TradeAction.BUY, 0.8),
            vote(TradeAction.BUY, 0.6),
            vote(TradeAction.SELL, 0.5),
            vote(TradeAction.HOLD, 0.3),
        ]
    )
    assert tally.leading_action is TradeAction.BUY
    assert tally.strength == pytest.approx(1.4 / 2.2)
    assert tally.agreeing == 2
    assert tally.voters == 4
    assert dict(tally.weights)[TradeAction.SELL] == pytest.approx(0.5)


def test_a_confident_minority_can_outweigh_a_hesitant_majority() -> None:
    tally = weigh_votes(
        [vote(TradeAction.SELL, 0.9), vote(TradeAction.BUY, 0.3), vote(TradeAction.BUY, 0.3)]
    )
    assert tally.leading_action is TradeAction.SELL
    assert tally.strength == pytest.approx(0.9 / 1.5)


@pytest.mark.parametrize(
    ("votes", "leading"),
    [
        ([(TradeAction.BUY, 0.5), (TradeAction.SELL, 0.5)], TradeAction.HOLD),
        ([(TradeAction.CLOSE, 0.5), (TradeAction.HOLD, 0.5)], TradeAction.CLOSE),
        ([(TradeAction.HOLD, 0.5), (TradeAction.BUY, 0.5)], TradeAction.HOLD),
        ([(TradeAction.SELL, 0.4), (TradeAction.HOLD, 0.4)], TradeAction.HOLD),
    ],
)
def test_ties_go_to_the_more_cautious_action(
    votes: list[tuple[TradeAction, float]], leading: TradeAction
) -> None:
    assert weigh_votes([vote(action, weight) for action, weight in votes]).leading_action is leading


def test_failed_votes_count_for_nothing_and_no_weight_means_hold() -> None:
    failed = replace(vote(TradeAction.BUY, 1.0), error="timed out")
    tally = weigh_votes([failed, vote(TradeAction.SELL, 0.4)])
    assert tally.leading_action is TradeAction.SELL
    assert tally.strength == 1.0
    assert tally.voters == 1
    empty = weigh_votes([failed, vote(TradeAction.BUY, 0.0)])
    assert empty.leading_action is TradeAction.HOLD
    assert empty.strength == 0.0


def _flat_context() -> DecisionContext:
    return contexts(flat(200))[-1]


async def test_a_buy_gets_entry_stop_and_target_from_atr_multiples() -> None:
    context = _flat_context()
    agent = TradingDecisionAgent([FixedModel("a", TradeAction.BUY, 0.9)])
    decision = await agent.decide(context)
    atr = Decimal(f"{context.indicators.atr:.12g}")
    close = context.indicators.close_price
    assert decision.action is TradeAction.BUY
    assert decision.consensus == 1.0
    assert decision.entry == close
    assert decision.stop == close - 2 * atr
    assert decision.target == close + 3 * atr
    assert decision.risk_reward == Decimal("1.5")


async def test_a_sell_mirrors_the_levels_and_ticks_round_the_conservative_way() -> None:
    context = _flat_context()
    tick = Decimal("0.5")
    settings = DecisionSettings(stop_atr=Decimal(1), target_atr=Decimal(2), tick_size=tick)
    agent = TradingDecisionAgent([FixedModel("a", TradeAction.SELL, 0.9)], settings)
    decision = await agent.decide(context)
    assert decision.entry is not None
    assert decision.stop is not None
    assert decision.target is not None
    atr = Decimal(f"{context.indicators.atr:.12g}")
    assert decision.entry % tick == 0
    assert decision.stop % tick == 0
    assert decision.target % tick == 0
    # The stop never moves closer than one ATR; the target never further than two.
    assert decision.stop - decision.entry >= atr
    assert decision.entry - decision.target <= 2 * atr


async def test_a_split_vote_holds_but_keeps_the_leading_action() -> None:
    panel = [
        FixedModel("a", TradeAction.BUY, 0.6),
        FixedModel("b", TradeAction.SELL, 0.4),
        FixedModel("c", TradeAction.HOLD, 0.25),
        FixedModel("d", TradeAction.HOLD, 0.25),
    ]
    decision = await TradingDecisionAgent(panel).decide(_flat_context())
    assert decision.leading_action is TradeAction.BUY
    assert decision.consensus == pytest.approx(0.6 / 1.5)
    assert decision.split
    assert decision.action is TradeAction.HOLD
    assert decision.entry is None
    assert "split vote" in decision.reasoning
    assert [item.model for item in decision.votes] == ["a", "b", "c", "d"]


async def test_a_vote_the_position_does_not_allow_is_void() -> None:
    context = replace(_flat_context(), position=PositionSide.LONG)
    panel = [FixedModel("a", TradeAction.BUY, 0.9), FixedModel("b", TradeAction.CLOSE, 0.4)]
    decision = await TradingDecisionAgent(panel).decide(context)
    assert decision.action is TradeAction.CLOSE
    assert decision.votes[0].error is not None
    assert "not allowed" in decision.votes[0].error


async def test_a_crashing_or_slow_model_is_void_and_the_rest_still_decide(clock: Clock) -> None:
    panel: list[DecisionModel] = [
        BrokenModel(),
        SlowModel("slow", delay=60.0),
        FixedModel("steady", TradeAction.SELL, 0.7),
    ]
    agent = TradingDecisionAgent(panel, DecisionSettings(model_timeout=5.0))
    started = clock.monotonic()
    decision = await agent.decide(_flat_context())
    assert clock.monotonic() - started == pytest.approx(5.0)
    assert decision.action is TradeAction.SELL
    errors = {item.model: item.error for item in decision.votes}
    assert errors["broken"] == "RuntimeError: model crashed"
    assert errors["slow"] is not None
    assert "5.0s" in errors["slow"]
    assert errors["steady"] is None


async def test_slow_models_are_polled_concurrently(clock: Clock) -> None:
    panel = [SlowModel(f"slow-{index}", delay=2.0) for index in range(4)]
    started = clock.monotonic()
    decision = await TradingDecisionAgent(panel).decide(_flat_context())
    assert clock.monotonic() - started == pytest.approx(2.0)
    assert decision.action is TradeAction.BUY


async def test_the_default_panel_buys_a_clean_uptrend_with_a_clear_consensus() -> None:
    context = contexts(trend(150, drift=0.004))[-1]
    decision = await TradingDecisionAgent().decide(context)
    assert context.technical.bias.value == "long"
    assert context.regime.regime.value == "trending_bull"
    assert decision.action is TradeAction.BUY
    assert decision.consensus >= 0.5
    assert len(decision.votes) == 6


async def test_the_default_panel_holds_in_a_quiet_range() -> None:
    holds = 0
    built = contexts(flat(300))
    for context in built:
        decision = await TradingDecisionAgent().decide(context)
        holds += decision.action is TradeAction.HOLD
    assert holds / len(built) > 0.8


async def _decisions(bars: list[Bar]) -> list[TradeDecision]:
    agent = TradingDecisionAgent()
    return [await agent.decide(context) for context in contexts(bars)]


def _recorded(count: int) -> list[Bar]:
    return [replace(bar, symbol="BTC-USDT-PERP") for bar in islice(load_bars(DATA / BTC), count)]


@needs_data
async def test_same_bars_give_the_same_decisions() -> None:
    bars = _recorded(1500)
    first = await _decisions(bars)
    second = await _decisions(bars)
    assert first == second
    assert {decision.action for decision in first} >= {TradeAction.HOLD, TradeAction.BUY}


@needs_data
async def test_changing_future_bars_does_not_change_past_decisions() -> None:
    bars = _recorded(1500)
    cut = 1000
    # A different future: every later bar's prices doubled, a shock no indicator could ignore.
    shocked = bars[:cut] + [
        replace(bar, open=bar.open * 2, high=bar.high * 2, low=bar.low * 2, close=bar.close * 2)
        for bar in bars[cut:]
    ]
    original = await _decisions(bars)
    changed = await _decisions(shocked)
    past = [decision for decision in original if decision.timestamp < bars[cut].timestamp]
    assert len(past) > 800
    assert changed[: len(past)] == past
    assert changed[len(past) :] != original[len(past) :]


def test_a_panel_needs_uniquely_named_models() -> None:
    with pytest.raises(ValidationError):
        TradingDecisionAgent([])
    with pytest.raises(ValidationError):
        TradingDecisionAgent(
            [FixedModel("a", TradeAction.BUY, 1.0), FixedModel("a", TradeAction.SELL, 1.0)]
        )


@pytest.mark.parametrize(
    "overrides",
    [
        {"min_consensus": 1.5},
        {"stop_atr": Decimal(0)},
        {"target_atr": 3.0},
        {"tick_size": Decimal(-1)},
        {"model_timeout": 0.0},
    ],
)
def test_bad_decision_settings_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        DecisionSettings(**overrides)  # type: ignore[arg-type]


def test_the_tally_matches_its_definition_on_every_kind_of_tie() -> None:
    # The leader is the first heaviest action in caution order, except that BUY and SELL
    # tied on top (with nothing heavier) is HOLD: written out plainly and compared with
    # `weigh_votes` on panels full of ties.
    import random

    order = [TradeAction.CLOSE, TradeAction.HOLD, TradeAction.BUY, TradeAction.SELL]
    rng = random.Random(7)
    for _ in range(3_000):
        votes = [
            vote(rng.choice(order), rng.choice([0.0, 0.25, 0.5, 0.5, 1.0]), f"m{i}")
            for i in range(rng.randint(0, 7))
        ]
        weights = {action: 0.0 for action in order}
        for ballot in votes:
            weights[ballot.action] += ballot.confidence
        total = sum(weights.values())
        top = max(weights.values())
        leaders = [action for action in order if weights[action] == top]
        if total <= 0 or leaders == [TradeAction.BUY, TradeAction.SELL]:
            expected = TradeAction.HOLD
        else:
            expected = leaders[0]
        tally = weigh_votes(votes)
        assert tally.leading_action is expected
        assert tally.weights == tuple((action, weights[action]) for action in order)
        assert tally.strength == (weights[expected] / total if total > 0 else 0.0)
        assert tally.voters == len(votes)
        assert tally.agreeing == sum(1 for ballot in votes if ballot.action is expected)
