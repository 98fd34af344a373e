"""The strategy context: proposals shaped and rounded for the instrument, bad asks refused."""

from __future__ import annotations

from decimal import Decimal

import pytest

from legato.kernel.errors import ValidationError
from legato.trading.instruments import Instrument
from legato.trading.orders import OrderSide
from legato.trading.proposals import TradeProposal
from legato.trading.strategy import StrategyContext

from .conftest import BarMaker


def context(perp: Instrument, bar: BarMaker) -> tuple[StrategyContext, list[TradeProposal]]:
    submitted: list[TradeProposal] = []
    ctx = StrategyContext(perp, submitted.append, strategy_id="ema")
    ctx.begin_bar(bar(0, "100", "101", "99", "100.05"))
    return ctx, submitted


def test_buy_submits_a_market_proposal_priced_at_the_close(perp: Instrument, bar: BarMaker) -> None:
    ctx, submitted = context(perp, bar)
    proposal = ctx.buy(Decimal("0.5"), stop_loss=Decimal("98.049"), take_profit=Decimal("104.052"))
    assert submitted == [proposal]
    assert proposal.side is OrderSide.BUY
    assert proposal.entry_price == Decimal("100.05")
    assert proposal.strategy_id == "ema"
    assert proposal.correlation_id == "ema-1"


def test_a_long_stop_rounds_down_and_its_target_up_never_tighter(
    perp: Instrument, bar: BarMaker
) -> None:
    ctx, _ = context(perp, bar)
    proposal = ctx.buy(Decimal(1), stop_loss=Decimal("98.049"), take_profit=Decimal("104.051"))
    assert (proposal.stop_loss, proposal.take_profit) == (Decimal("98.0"), Decimal("104.1"))


def test_a_short_stop_rounds_up_and_its_target_down(perp: Instrument, bar: BarMaker) -> None:
    ctx, _ = context(perp, bar)
    proposal = ctx.sell(Decimal(1), stop_loss=Decimal("102.01"), take_profit=Decimal("96.09"))
    assert proposal.side is OrderSide.SELL
    assert (proposal.stop_loss, proposal.take_profit) == (Decimal("102.1"), Decimal("96.0"))


def test_close_submits_a_reduce_only_proposal_for_the_whole_position(
    perp: Instrument, bar: BarMaker
) -> None:
    ctx, submitted = context(perp, bar)
    ctx.position = Decimal("-0.3")
    proposal = ctx.close()
    assert submitted == [proposal]
    assert proposal.reduce_only
    assert proposal.side is OrderSide.BUY
    assert proposal.quantity == Decimal("0.3")
    assert proposal.stop_loss is None


def test_closing_while_flat_is_refused_and_submits_nothing(perp: Instrument, bar: BarMaker) -> None:
    ctx, submitted = context(perp, bar)
    with pytest.raises(ValidationError) as raised:
        ctx.close()
    assert raised.value.field == "position"
    assert submitted == []


@pytest.mark.parametrize("quantity", [Decimal(0), Decimal(-1), Decimal("0.0005"), Decimal("NaN")])
def test_a_bad_quantity_is_refused_and_submits_nothing(
    perp: Instrument, bar: BarMaker, quantity: Decimal
) -> None:
    ctx, submitted = context(perp, bar)
    with pytest.raises(ValidationError) as raised:
        ctx.buy(quantity, stop_loss=Decimal(98))
    assert raised.value.field == "quantity"
    assert submitted == []


def test_a_stop_on_the_wrong_side_is_refused(perp: Instrument, bar: BarMaker) -> None:
    ctx, submitted = context(perp, bar)
    with pytest.raises(ValidationError) as raised:
        ctx.buy(Decimal(1), stop_loss=Decimal(101))
    assert raised.value.field == "stop_loss"
    assert submitted == []


def test_trading_before_any_bar_is_refused(perp: Instrument) -> None:
    ctx = StrategyContext(perp, lambda proposal: None)
    with pytest.raises(ValidationError) as raised:
        ctx.buy(Decimal(1), stop_loss=Decimal(98))
    assert raised.value.field == "bar"
