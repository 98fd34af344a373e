"""The trading ledger on both store backends: exact round trips, atomic writes, pending writes."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from legato.kernel.clock import Clock
from legato.kernel.errors import ValidationError
from legato.store.errors import StoreUnavailableError
from legato.trading.alerts import Alert, AlertCode, AlertLevel
from legato.trading.fills import Fill, Liquidity
from legato.trading.ledger import (
    ExecutionIntent,
    IntentStage,
    LedgerTransaction,
    OrderRole,
    PendingWrites,
)
from legato.trading.orders import Order, OrderSide, OrderStatus, OrderType
from legato.trading.positions import Position, PositionSide

from .conftest import PERP
from .execution_harness import ledger_opener, long_proposal


def stop_order(clock: Clock, cid: str = "lg-1-SL") -> Order:
    now = clock.now()
    return Order(
        cid,
        PERP,
        OrderSide.SELL,
        OrderType.STOP,
        Decimal("0.010"),
        stop_price=Decimal("19500.1"),
        reduce_only=True,
        leverage=Decimal(5),
        parent_order_id="lg-1-E",
        bracket_id="1",
        created_at=now,
        updated_at=now,
    )


async def test_orders_round_trip_exactly_with_role_and_intent(
    clock: Clock, ledger_url: str
) -> None:
    order = stop_order(clock).transition(
        OrderStatus.ACCEPTED, at=clock.now() + timedelta(seconds=1), venue_order_id="V-1"
    )
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        await ledger.write(lambda tx: tx.put_order(order, OrderRole.STOP_LOSS, "1"))
        stored = await ledger.get_order("lg-1-SL")
        open_orders = await ledger.orders(open_only=True, symbol=PERP)
    assert stored is not None
    assert stored.order == order
    assert (stored.role, stored.intent_id) == (OrderRole.STOP_LOSS, "1")
    assert [record.order.client_order_id for record in open_orders] == ["lg-1-SL"]


async def test_an_intent_round_trips_and_a_second_with_the_same_id_is_refused(
    clock: Clock, ledger_url: str
) -> None:
    now = clock.now()
    intent = ExecutionIntent(
        intent_id="abc",
        proposal=long_proposal(),
        stage=IntentStage.ENTRY,
        entry_order_id="lg-abc-E",
        stop_loss_order_id="lg-abc-SL",
        take_profit_order_id="lg-abc-TP",
        created_at=now,
        updated_at=now,
        outcome={"warnings": ["one"]},
    )
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        await ledger.write(lambda tx: tx.insert_intent(intent))
        with pytest.raises(ValidationError) as duplicate:
            await ledger.write(lambda tx: tx.insert_intent(intent))
        stored = await ledger.get_intent("abc")
        await ledger.write(lambda tx: tx.put_intent(intent.advance(IntentStage.BRACKETED, now)))
        unfinished = await ledger.intents(unfinished_only=True)
    assert duplicate.value.field == "intent_id"
    assert stored == intent
    assert unfinished == []


async def test_a_failing_write_leaves_none_of_its_records(clock: Clock, ledger_url: str) -> None:
    async def half_then_fail(tx: LedgerTransaction) -> None:
        await tx.put_order(stop_order(clock), OrderRole.STOP_LOSS)
        raise ValidationError("stage", "bogus", "a failure half-way through the write")

    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        with pytest.raises(ValidationError):
            await ledger.write(half_then_fail)
        stored = await ledger.get_order("lg-1-SL")
    assert stored is None


async def test_fills_positions_balances_and_alerts_round_trip(
    clock: Clock, ledger_url: str
) -> None:
    fill = Fill(
        "F-1",
        "lg-1-E",
        "V-1",
        PERP,
        OrderSide.BUY,
        Decimal("0.010"),
        Decimal("20000.1"),
        Decimal("0.080004"),
        "USDT",
        Liquidity.TAKER,
        clock.now(),
    )
    position = Position.open(PERP, PositionSide.LONG, Decimal("0.010"), Decimal("20000.1"))
    alert = Alert(AlertLevel.HIGH, AlertCode.ORDER_UNKNOWN, "lost", clock.now(), symbol=PERP)

    async def write(tx: LedgerTransaction) -> tuple[bool, bool]:
        first = await tx.add_fill(fill)
        again = await tx.add_fill(fill)
        await tx.put_position(position)
        await tx.set_balance("USDT", Decimal("99999.919996"), clock.now())
        await tx.add_alert(alert)
        return first, again

    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        added = await ledger.write(write)
        fills = await ledger.fills(PERP)
        stored = await ledger.position(PERP)
        balances = await ledger.balances()
        alerts = await ledger.alerts(AlertLevel.HIGH)
    assert added == (True, False)
    assert fills == [fill]
    assert stored == position
    assert balances["USDT"].total == Decimal("99999.919996")
    assert alerts == [alert]


async def test_pending_writes_queue_in_order_while_the_store_is_down_and_land_later(
    clock: Clock, ledger_url: str
) -> None:
    placed = stop_order(clock).transition(OrderStatus.ACCEPTED, at=clock.now())
    filled = placed.with_fill(Decimal("0.010"), Decimal("19500"), at=clock.now())
    async with ledger_opener(ledger_url, clock)() as (ledger, database):
        pending = PendingWrites(ledger, clock=clock)
        database.fail_writes(3)
        first = await pending.write(
            "accepted", lambda tx: tx.put_order(placed, OrderRole.STOP_LOSS)
        )
        second = await pending.write("filled", lambda tx: tx.put_order(filled, OrderRole.STOP_LOSS))
        queued = pending.pending
        with pytest.raises(StoreUnavailableError):
            await pending.flush()
        landed = await pending.flush()
        stored = await ledger.get_order(placed.client_order_id)
    assert (first, second) == (False, False)
    assert queued == ("accepted", "filled")
    assert landed == 2
    assert stored is not None
    assert stored.order.status is OrderStatus.FILLED  # the later write landed last
