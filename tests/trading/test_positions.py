from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from legato.kernel.errors import ValidationError
from legato.trading.orders import OrderSide
from legato.trading.positions import Position, PositionSide, PositionStatus


def long(quantity: str = "2", price: str = "100") -> Position:
    return Position.open("P", PositionSide.LONG, Decimal(quantity), Decimal(price), Decimal(5))


def test_increasing_re_averages_the_entry_price() -> None:
    position = long().increase(Decimal(2), Decimal(110))
    assert position.quantity == Decimal(4)
    assert position.entry_price == Decimal(105)


def test_reducing_a_long_realizes_exit_minus_entry_times_quantity() -> None:
    position = long().reduce(Decimal(1), Decimal(110))
    assert position.realized_pnl == Decimal(10)
    assert position.quantity == Decimal(1)
    assert position.is_open


def test_reducing_a_short_realizes_entry_minus_exit() -> None:
    short = Position.open("P", PositionSide.SHORT, Decimal(2), Decimal(100))
    closed = short.reduce(Decimal(2), Decimal(90))
    assert closed.realized_pnl == Decimal(20)
    assert closed.status is PositionStatus.CLOSED
    assert closed.quantity == 0


def test_unrealized_pnl_follows_the_mark() -> None:
    assert long().mark(Decimal(95)).unrealized_pnl == Decimal(-10)
    short = Position.open("P", PositionSide.SHORT, Decimal(2), Decimal(100))
    assert short.mark(Decimal(95)).unrealized_pnl == Decimal(10)


def test_fees_are_tracked_apart_from_price_pnl() -> None:
    position = long().reduce(Decimal(2), Decimal(100), fee=Decimal("0.08"))
    assert position.realized_pnl == 0
    assert position.fees_paid == Decimal("0.08")


def test_margin_is_entry_notional_over_leverage() -> None:
    assert long().margin == Decimal(40)


def test_reducing_more_than_held_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        long().reduce(Decimal(3), Decimal(100))
    assert caught.value.field == "quantity"


def test_a_closed_position_cannot_be_changed() -> None:
    closed = long().reduce(Decimal(2), Decimal(100))
    with pytest.raises(ValidationError):
        closed.increase(Decimal(1), Decimal(100))


def test_status_must_match_quantity() -> None:
    with pytest.raises(ValidationError) as caught:
        Position("P", PositionSide.LONG, Decimal(0), Decimal(100))
    assert caught.value.field == "status"


def test_protection_references_are_kept() -> None:
    protected = long().with_protection("sl-1", "tp-1")
    assert (protected.stop_loss_order_id, protected.take_profit_order_id) == ("sl-1", "tp-1")


def test_side_helpers() -> None:
    assert PositionSide.opened_by(OrderSide.SELL) is PositionSide.SHORT
    assert PositionSide.LONG.closing_side is OrderSide.SELL


def test_marking_changes_only_the_mark_price() -> None:
    opened = datetime(2024, 1, 1, tzinfo=UTC)
    position = Position.open(
        "P", PositionSide.LONG, Decimal(2), Decimal(100), Decimal(5), at=opened, fee=Decimal(1)
    ).with_protection("sl", "tp")

    marked = position.mark(Decimal(120))

    assert marked == dataclasses.replace(position, mark_price=Decimal(120))
    assert marked.unrealized_pnl == Decimal(40)
    assert position.mark_price == Decimal(100)


@pytest.mark.parametrize("price", [Decimal(-1), Decimal("NaN"), 120])
def test_marking_refuses_a_price_that_is_not_a_finite_non_negative_decimal(
    price: object,
) -> None:
    with pytest.raises(ValidationError) as caught:
        long().mark(price)  # type: ignore[arg-type]
    assert caught.value.field == "mark_price"


def test_replace_checks_the_copy_as_the_constructor_would() -> None:
    position = long()

    assert position.replace(leverage=Decimal(2)) == dataclasses.replace(
        position, leverage=Decimal(2)
    )
    with pytest.raises(ValidationError) as caught:
        position.replace(quantity=Decimal(0))  # still OPEN with nothing held
    assert caught.value.field == "status"
    with pytest.raises(TypeError, match="no field"):
        position.replace(colour="red")
