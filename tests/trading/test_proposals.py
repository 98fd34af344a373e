from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from legato.kernel.errors import ValidationError
from legato.trading.orders import OrderSide
from legato.trading.positions import PositionSide
from legato.trading.proposals import EntryType, TradeProposal


def proposal(**changes: Any) -> TradeProposal:
    fields: dict[str, Any] = {
        "symbol": "BTC-USDT-PERP",
        "side": OrderSide.BUY,
        "quantity": Decimal("0.5"),
        "entry_price": Decimal(100),
        "stop_loss": Decimal(95),
        "take_profit": Decimal(110),
    }
    fields.update(changes)
    return TradeProposal(**fields)


def test_a_long_proposal_measures_its_risk_and_reward_from_the_entry() -> None:
    long = proposal()
    assert long.stop_distance == Decimal(5)
    assert long.risk_amount == Decimal("2.5")
    assert long.reward_to_risk == Decimal(2)
    assert long.notional == Decimal(50)
    assert long.position_side is PositionSide.LONG


def test_a_short_proposal_wants_its_stop_above_and_its_target_below() -> None:
    short = proposal(side=OrderSide.SELL, stop_loss=Decimal(104), take_profit=Decimal(88))
    assert short.stop_distance == Decimal(4)
    assert short.reward_to_risk == Decimal(3)
    assert short.position_side is PositionSide.SHORT


@pytest.mark.parametrize("quantity", [Decimal(0), Decimal("-1"), Decimal("NaN"), 1.5])
def test_a_size_that_is_not_a_positive_decimal_is_refused(quantity: object) -> None:
    with pytest.raises(ValidationError) as caught:
        proposal(quantity=quantity)
    assert caught.value.field == "quantity"
    assert caught.value.value is quantity or caught.value.value == quantity
    assert "Decimal > 0" in caught.value.expected


@pytest.mark.parametrize(
    ("side", "stop"),
    [(OrderSide.BUY, Decimal(100)), (OrderSide.BUY, Decimal(101)), (OrderSide.SELL, Decimal(99))],
)
def test_a_stop_loss_on_the_wrong_side_of_the_entry_is_refused(
    side: OrderSide, stop: Decimal
) -> None:
    with pytest.raises(ValidationError) as caught:
        proposal(side=side, stop_loss=stop, take_profit=None)
    assert caught.value.field == "stop_loss"
    assert caught.value.value == stop
    expected = "below the entry price 100" if side is OrderSide.BUY else "above the entry"
    assert expected in caught.value.expected


@pytest.mark.parametrize(
    ("side", "stop", "target"),
    [(OrderSide.BUY, Decimal(95), Decimal(99)), (OrderSide.SELL, Decimal(105), Decimal(101))],
)
def test_a_take_profit_on_the_wrong_side_of_the_entry_is_refused(
    side: OrderSide, stop: Decimal, target: Decimal
) -> None:
    with pytest.raises(ValidationError) as caught:
        proposal(side=side, stop_loss=stop, take_profit=target)
    assert caught.value.field == "take_profit"
    assert caught.value.value == target


@pytest.mark.parametrize("leverage", [Decimal("0.5"), Decimal(126), Decimal("Infinity")])
def test_leverage_outside_one_to_125_is_refused(leverage: Decimal) -> None:
    with pytest.raises(ValidationError) as caught:
        proposal(leverage=leverage)
    assert caught.value.field == "leverage"
    assert "from 1 to 125" in caught.value.expected


def test_an_opening_proposal_without_a_stop_loss_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        proposal(stop_loss=None)
    assert caught.value.field == "stop_loss"
    assert "reduce-only" in caught.value.expected


def test_a_reduce_only_proposal_may_omit_the_stop_and_reduces_the_opposite_side() -> None:
    closing = proposal(side=OrderSide.SELL, stop_loss=None, take_profit=None, reduce_only=True)
    assert closing.position_side is PositionSide.LONG
    assert closing.stop_distance is None
    assert closing.reward_to_risk is None


def test_an_empty_symbol_or_strategy_is_refused() -> None:
    with pytest.raises(ValidationError, match="symbol"):
        proposal(symbol=" ")
    with pytest.raises(ValidationError, match="strategy_id"):
        proposal(strategy_id="")


def test_with_quantity_changes_only_the_size_and_still_validates() -> None:
    smaller = proposal().with_quantity(Decimal("0.2"))
    assert smaller == proposal(quantity=Decimal("0.2"))
    with pytest.raises(ValidationError):
        proposal().with_quantity(Decimal(0))


def test_the_dict_form_round_trips_exactly() -> None:
    original = proposal(
        quantity=Decimal("0.123"),
        entry_type=EntryType.LIMIT,
        leverage=Decimal(3),
        correlation_id="decision-42",
        strategy_id="trend",
    )
    data = original.as_dict()
    assert data["quantity"] == "0.123"
    assert TradeProposal.from_dict(data) == original


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"quantity": 0.1}, "quantity"),
        ({"quantity": "abc"}, "quantity"),
        ({"side": "long"}, "side"),
        ({"colour": "red"}, "proposal"),
        ({"stop_loss": "101"}, "stop_loss"),
    ],
)
def test_from_dict_refuses_bad_fields_by_name(changes: dict[str, object], field: str) -> None:
    data: dict[str, object] = dict(proposal().as_dict())
    data.update(changes)
    with pytest.raises(ValidationError) as caught:
        TradeProposal.from_dict(data)
    assert caught.value.field == field
