from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from legato.kernel.errors import ValidationError
from legato.trading.errors import InvalidOrderTransition
from legato.trading.orders import (
    ORDER_TRANSITIONS,
    Order,
    OrderSide,
    OrderStatus,
    OrderType,
)

NOW = datetime(2024, 1, 1, tzinfo=UTC)
NAIVE = NOW.replace(tzinfo=None)
TERMINAL = {OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.EXPIRED}


def limit(**changes: object) -> Order:
    fields: dict[str, object] = {
        "client_order_id": "c-1",
        "symbol": "BTC-USDT-PERP",
        "side": OrderSide.BUY,
        "type": OrderType.LIMIT,
        "quantity": Decimal(2),
        "price": Decimal(100),
    }
    fields.update(changes)
    return Order(**fields)  # type: ignore[arg-type]


def test_the_transition_table_covers_every_status() -> None:
    assert set(ORDER_TRANSITIONS) == set(OrderStatus)


def test_terminal_statuses_have_no_way_out() -> None:
    assert {status for status in OrderStatus if status.is_terminal} == TERMINAL


def test_no_status_ever_leads_back_to_new() -> None:
    assert all(OrderStatus.NEW not in targets for targets in ORDER_TRANSITIONS.values())


@pytest.mark.parametrize("terminal", [s for s in OrderStatus if s in TERMINAL])
@pytest.mark.parametrize("target", list(OrderStatus))
def test_a_final_order_refuses_every_transition(terminal: OrderStatus, target: OrderStatus) -> None:
    order = limit(status=terminal)
    if terminal is OrderStatus.FILLED:
        order = limit(status=terminal, filled_quantity=Decimal(2), average_price=Decimal(100))
    with pytest.raises(InvalidOrderTransition) as caught:
        order.transition(target)
    assert caught.value.field == "status"
    assert caught.value.client_order_id == "c-1"
    assert "final" in caught.value.expected


def test_a_filled_order_cannot_become_new_again_and_is_left_unchanged() -> None:
    filled = limit(status=OrderStatus.ACCEPTED).with_fill(Decimal(2), Decimal(100))
    assert filled.status is OrderStatus.FILLED
    with pytest.raises(InvalidOrderTransition):
        filled.transition(OrderStatus.NEW)
    assert filled.status is OrderStatus.FILLED


def test_unknown_is_resolved_only_by_a_venue_answer() -> None:
    unknown = limit().transition(OrderStatus.UNKNOWN)
    assert unknown.transition(OrderStatus.ACCEPTED).status is OrderStatus.ACCEPTED
    assert unknown.transition(OrderStatus.REJECTED).status is OrderStatus.REJECTED
    with pytest.raises(InvalidOrderTransition):
        unknown.transition(OrderStatus.NEW)


def test_an_accepted_order_that_goes_missing_can_become_unknown() -> None:
    accepted = limit().transition(OrderStatus.ACCEPTED)
    assert accepted.transition(OrderStatus.UNKNOWN).status is OrderStatus.UNKNOWN


def test_transition_stamps_the_update_time_and_applies_changes() -> None:
    accepted = limit().transition(OrderStatus.ACCEPTED, at=NOW, venue_order_id="V1")
    assert accepted.updated_at == NOW
    assert accepted.venue_order_id == "V1"


def test_fills_accumulate_with_a_volume_weighted_average_price() -> None:
    order = limit(status=OrderStatus.ACCEPTED)
    partly = order.with_fill(Decimal(1), Decimal(100))
    assert partly.status is OrderStatus.PARTIALLY_FILLED
    assert partly.remaining_quantity == Decimal(1)
    full = partly.with_fill(Decimal(1), Decimal(98))
    assert full.status is OrderStatus.FILLED
    assert full.average_price == Decimal(99)
    assert full.filled_quantity + full.remaining_quantity == full.quantity


def test_a_fill_larger_than_the_remainder_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        limit(status=OrderStatus.ACCEPTED).with_fill(Decimal(3), Decimal(100))
    assert caught.value.field == "fill quantity"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"client_order_id": ""}, "client_order_id"),
        ({"client_order_id": "x" * 37}, "client_order_id"),
        ({"client_order_id": "has space"}, "client_order_id"),
        ({"quantity": Decimal(0)}, "quantity"),
        ({"quantity": 1.5}, "quantity"),
        ({"price": None}, "price"),
        ({"type": OrderType.MARKET}, "price"),
        ({"type": OrderType.STOP, "price": None}, "stop_price"),
        ({"stop_price": Decimal(90)}, "stop_price"),
        ({"filled_quantity": Decimal(3)}, "filled_quantity"),
        ({"filled_quantity": Decimal(1)}, "average_price"),
        ({"leverage": Decimal("0.5")}, "leverage"),
        ({"created_at": datetime(2024, 1, 1)}, "created_at"),  # noqa: DTZ001 - naive on purpose
    ],
)
def test_malformed_orders_name_the_bad_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        limit(**changes)
    assert caught.value.field == field


def test_each_order_type_carries_the_prices_it_needs() -> None:
    common = {"client_order_id": "c", "symbol": "S", "side": OrderSide.SELL, "quantity": Decimal(1)}
    Order(type=OrderType.MARKET, **common)  # type: ignore[arg-type]
    Order(type=OrderType.STOP, stop_price=Decimal(1), **common)  # type: ignore[arg-type]
    Order(type=OrderType.TAKE_PROFIT, stop_price=Decimal(1), **common)  # type: ignore[arg-type]
    Order(type=OrderType.STOP_LIMIT, price=Decimal(1), stop_price=Decimal(1), **common)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        Order(type=OrderType.STOP_LIMIT, stop_price=Decimal(1), **common)  # type: ignore[arg-type]


def test_side_helpers() -> None:
    assert OrderSide.BUY.opposite is OrderSide.SELL
    assert OrderSide.SELL.sign == -1


# -- Order.replace: dataclasses.replace, cheaper, with the same checks --------------------

REPLACE_CASES: list[dict[str, object]] = [
    {"status": OrderStatus.ACCEPTED, "venue_order_id": "V-1", "updated_at": NOW},
    {"filled_quantity": Decimal(1), "average_price": Decimal(99), "leverage": Decimal(3)},
    {"triggered_at": NOW, "reason": "why", "parent_order_id": "p", "bracket_id": "b"},
    {"client_order_id": "c-2", "type": OrderType.STOP_LIMIT, "stop_price": Decimal(90)},
    {"quantity": Decimal(5), "price": Decimal(101), "side": OrderSide.SELL},
]


@pytest.mark.parametrize("changes", REPLACE_CASES)
def test_replace_gives_what_dataclasses_replace_gives(changes: dict[str, object]) -> None:
    order = limit(created_at=NOW)

    copy = order.replace(**changes)

    assert copy == dataclasses.replace(order, **changes)  # type: ignore[arg-type]
    assert type(copy) is Order
    assert order == limit(created_at=NOW)  # the original is untouched


BAD_STATE_CHANGES: list[tuple[dict[str, object], str]] = [
    ({"status": "accepted"}, "status"),
    ({"filled_quantity": Decimal(-1)}, "filled_quantity"),
    ({"filled_quantity": Decimal(3), "average_price": Decimal(100)}, "filled_quantity"),
    ({"filled_quantity": Decimal(1)}, "average_price"),
    ({"average_price": Decimal(100)}, "average_price"),
    ({"average_price": Decimal("NaN")}, "average_price"),
    ({"leverage": Decimal("0.5")}, "leverage"),
    ({"updated_at": NAIVE}, "updated_at"),
    ({"created_at": "2024-01-01"}, "created_at"),
    ({"triggered_at": NAIVE}, "triggered_at"),
    # A request field: the whole order is checked again.
    ({"quantity": Decimal(0)}, "quantity"),
    ({"type": OrderType.MARKET}, "price"),
]


@pytest.mark.parametrize(("changes", "field"), BAD_STATE_CHANGES)
def test_replace_refuses_what_the_constructor_refuses(
    changes: dict[str, object], field: str
) -> None:
    order = limit()

    with pytest.raises(ValidationError) as caught:
        order.replace(**changes)
    with pytest.raises(ValidationError) as expected:
        dataclasses.replace(order, **changes)  # type: ignore[arg-type]

    assert caught.value.field == expected.value.field == field


def test_replace_refuses_a_name_that_is_not_a_field() -> None:
    with pytest.raises(TypeError, match="no field"):
        limit().replace(colour="red")


def test_transition_keeps_other_offsets_aware_and_checks_the_time() -> None:
    moved = limit().transition(
        OrderStatus.ACCEPTED, at=NOW.astimezone(timezone(timedelta(hours=2)))
    )
    assert moved.updated_at == NOW
    with pytest.raises(ValidationError) as caught:
        limit().transition(OrderStatus.ACCEPTED, at=NAIVE)
    assert caught.value.field == "updated_at"
