"""The rule-based decision models on scripted markets, and the actions a position allows."""

from __future__ import annotations

from dataclasses import replace

import pytest

from legato.kernel.errors import ValidationError
from legato.trading.agents.indicators import BollingerValue
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
from legato.trading.agents.regime import Regime
from legato.trading.positions import PositionSide

from .scripted_bars import burst, contexts, flat, trend


def test_flat_allows_entries_and_a_position_allows_only_hold_or_close() -> None:
    assert allowed_actions(None) == {TradeAction.BUY, TradeAction.SELL, TradeAction.HOLD}
    assert allowed_actions(PositionSide.LONG) == {TradeAction.HOLD, TradeAction.CLOSE}
    assert allowed_actions(PositionSide.SHORT) == {TradeAction.HOLD, TradeAction.CLOSE}


def test_the_default_panel_is_six_uniquely_named_immediate_models() -> None:
    panel = default_models()
    assert len(panel) == 6
    assert len({model.name for model in panel}) == 6
    assert all(isinstance(model, DecisionModel) for model in panel)
    assert all(isinstance(model, ImmediateDecisionModel) for model in panel)


async def test_trend_follower_buys_an_uptrend_and_closes_a_short_in_it() -> None:
    context = contexts(trend(150, drift=0.004))[-1]
    model = TrendFollowingModel()
    decision = await model.decide(context)
    assert decision.action is TradeAction.BUY
    assert decision.confidence == pytest.approx(1.0)
    closing = await model.decide(replace(context, position=PositionSide.SHORT))
    assert closing.action is TradeAction.CLOSE


async def test_trend_follower_sells_a_downtrend_and_sits_out_a_range() -> None:
    model = TrendFollowingModel()
    assert (await model.decide(contexts(trend(150, drift=-0.004))[-1])).action is TradeAction.SELL
    ranging = contexts(flat(200))[-1]
    assert ranging.regime.regime is Regime.RANGING
    sitting_out = await model.decide(ranging)
    assert sitting_out.action is TradeAction.HOLD
    assert sitting_out.confidence == NO_SETUP_CONFIDENCE


def _at_band(context: DecisionContext, *, percent_b: float, rsi: float) -> DecisionContext:
    # Rewrite the readings of a real ranging context so the close sits at `percent_b`.
    snapshot = context.indicators
    bands = snapshot.bollinger
    assert bands is not None
    close = bands.lower + percent_b * (bands.upper - bands.lower)
    moved = BollingerValue(bands.lower, bands.middle, bands.upper, bands.bandwidth, percent_b)
    return replace(context, indicators=replace(snapshot, close=close, rsi=rsi, bollinger=moved))


async def test_mean_reversion_fades_the_band_extremes_of_a_range() -> None:
    ranging = contexts(flat(200))[-1]
    model = MeanReversionModel()
    below = await model.decide(_at_band(ranging, percent_b=-0.2, rsi=25.0))
    above = await model.decide(_at_band(ranging, percent_b=1.2, rsi=75.0))
    inside = await model.decide(_at_band(ranging, percent_b=0.5, rsi=50.0))
    assert below.action is TradeAction.BUY
    assert above.action is TradeAction.SELL
    assert inside.action is TradeAction.HOLD
    # Further outside the bands is a surer signal.
    deeper = await model.decide(_at_band(ranging, percent_b=-0.6, rsi=25.0))
    assert deeper.confidence > below.confidence


async def test_mean_reversion_needs_both_the_band_and_the_rsi() -> None:
    ranging = contexts(flat(200))[-1]
    decision = await MeanReversionModel().decide(_at_band(ranging, percent_b=-0.2, rsi=45.0))
    assert decision.action is TradeAction.HOLD


async def test_mean_reversion_stays_out_of_a_trend_and_closes_at_the_mean() -> None:
    model = MeanReversionModel()
    trending = contexts(trend(150, drift=0.004))[-1]
    assert (await model.decide(trending)).action is TradeAction.HOLD
    ranging = contexts(flat(200))[-1]
    long_at_mean = _at_band(replace(ranging, position=PositionSide.LONG), percent_b=0.6, rsi=50)
    assert (await model.decide(long_at_mean)).action is TradeAction.CLOSE


async def test_breakout_buys_a_close_above_the_previous_channel() -> None:
    context = contexts(trend(150, drift=0.004))[-1]
    channel = context.indicators.donchian
    assert channel is not None
    assert context.indicators.close > channel.upper
    assert (await BreakoutModel().decide(context)).action is TradeAction.BUY


async def test_breakout_with_an_atr_buffer_wants_a_larger_break() -> None:
    context = contexts(trend(150, drift=0.004))[-1]
    snapshot = context.indicators
    assert snapshot.donchian is not None
    assert snapshot.atr is not None
    just_above = replace(snapshot, close=snapshot.donchian.upper + 0.1 * snapshot.atr)
    nudged = replace(context, indicators=just_above)
    assert (await BreakoutModel(atr_buffer=0.0).decide(nudged)).action is TradeAction.BUY
    assert (await BreakoutModel(atr_buffer=0.5).decide(nudged)).action is TradeAction.HOLD


async def test_every_rule_model_answers_only_allowed_actions_on_every_bar() -> None:
    for position in (None, PositionSide.LONG, PositionSide.SHORT):
        for context in contexts(
            flat(150) + trend(150, drift=0.003, start_price=100.0)[:0], position
        ):
            for model in default_models():
                decision = await model.decide(context)
                assert decision.action in context.allowed
                assert decision.model == model.name


def test_a_model_reused_across_bars_answers_each_as_a_fresh_one_would() -> None:
    # Rule models keep the answers that never change ("inside the bands", one per regime
    # and bias) and give them again: each must still be exactly what this bar's reading gives.
    scripted = (
        trend(150, drift=0.004),
        flat(200),
        trend(150, drift=-0.004),
        burst(120, 40),
    )
    panel = default_models()
    seen: set[tuple[TradeAction, str]] = set()
    for position in (None, PositionSide.LONG, PositionSide.SHORT):
        for bars in scripted:
            for context in contexts(bars, position):
                for model, fresh in zip(panel, default_models(), strict=True):
                    answer = model.decide_now(context)
                    assert answer == fresh.decide_now(context)
                    seen.add((answer.action, answer.reasoning))
    # The run went through several regimes and both held sides, not one answer again and again.
    assert any(reasoning.startswith("no trend entry: ranging") for _, reasoning in seen)
    assert any(reasoning.startswith("not a range (trending") for _, reasoning in seen)
    assert (TradeAction.CLOSE, "price back at the mean, or range over") in seen


def test_a_context_must_be_built_from_one_bar() -> None:
    built = contexts(trend(80, drift=0.004))
    with pytest.raises(ValidationError):
        replace(built[-1], technical=built[-2].technical)


def test_a_decision_confidence_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValidationError) as raised:
        ModelDecision("m", TradeAction.BUY, 1.5, "too sure")
    assert raised.value.field == "confidence"


@pytest.mark.parametrize(
    "make",
    [
        lambda: TrendFollowingModel(min_regime_confidence=2.0),
        lambda: MeanReversionModel(rsi_low=60.0, rsi_high=70.0),
        lambda: BreakoutModel(atr_buffer=-1.0),
    ],
)
def test_bad_model_parameters_are_refused(make: object) -> None:
    with pytest.raises(ValidationError):
        make()  # type: ignore[operator]
