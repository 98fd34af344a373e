"""The position tracker: atomic opening, PnL from fills, marks, closing, risk inputs."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from legato.kernel.clock import Clock
from legato.store.errors import StoreUnavailableError
from legato.trading.fills import Fill, Liquidity
from legato.trading.orders import Order, OrderSide, OrderStatus, OrderType
from legato.trading.positions import PositionSide
from legato.trading.tracker import PositionTracker

from .conftest import PERP
from .execution_harness import ledger_opener


def fill(number: int, cid: str, side: OrderSide, quantity: str, price: str, clock: Clock) -> Fill:
    qty, px = Decimal(quantity), Decimal(price)
    return Fill(
        f"F-{number}",
        cid,
        f"V-{cid}",
        PERP,
        side,
        qty,
        px,
        qty * px * Decimal("0.0004"),
        "USDT",
        Liquidity.TAKER,
        clock.now(),
    )


def bracket(clock: Clock) -> tuple[Order, Order, Order]:
    now = clock.now()
    entry = Order(
        "lg-1-E",
        PERP,
        OrderSide.BUY,
        OrderType.MARKET,
        Decimal("0.010"),
        leverage=Decimal(5),
        created_at=now,
    ).transition(OrderStatus.ACCEPTED, at=now, venue_order_id="V-lg-1-E")
    entry = entry.with_fill(Decimal("0.010"), Decimal(20000), at=now)
    stop = Order(
        "lg-1-SL",
        PERP,
        OrderSide.SELL,
        OrderType.STOP,
        Decimal("0.010"),
        stop_price=Decimal(19500),
        reduce_only=True,
        created_at=now,
    )
    take = Order(
        "lg-1-TP",
        PERP,
        OrderSide.SELL,
        OrderType.TAKE_PROFIT,
        Decimal("0.010"),
        stop_price=Decimal(21000),
        reduce_only=True,
        created_at=now,
    )
    return entry, stop, take


async def test_a_position_is_recorded_with_both_protective_orders_or_not_at_all(
    clock: Clock, ledger_url: str
) -> None:
    entry, stop, take = bracket(clock)
    entry_fill = fill(1, "lg-1-E", OrderSide.BUY, "0.010", "20000", clock)
    async with ledger_opener(ledger_url, clock)() as (ledger, database):
        tracker = PositionTracker(ledger, clock=clock)
        database.fail_writes(1)
        with pytest.raises(StoreUnavailableError):
            await tracker.open_position(entry, [entry_fill], stop_loss=stop, take_profit=take)
        nothing = (await ledger.position(PERP), await ledger.orders(), await ledger.fills())
        position = await tracker.open_position(
            entry, [entry_fill], stop_loss=stop, take_profit=take
        )
        orders = await ledger.orders()
    assert nothing == (None, [], [])
    assert position.side is PositionSide.LONG
    assert (position.stop_loss_order_id, position.take_profit_order_id) == ("lg-1-SL", "lg-1-TP")
    assert sorted(record.order.client_order_id for record in orders) == [
        "lg-1-E",
        "lg-1-SL",
        "lg-1-TP",
    ]


async def test_fills_realize_pnl_move_the_balance_and_close_the_position_once(
    clock: Clock, ledger_url: str
) -> None:
    entry, stop, take = bracket(clock)
    opening = fill(1, "lg-1-E", OrderSide.BUY, "0.010", "20000", clock)
    partial = fill(2, "lg-1-TP", OrderSide.SELL, "0.004", "21000", clock)
    rest = fill(3, "lg-1-TP", OrderSide.SELL, "0.006", "21000", clock)
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        tracker = PositionTracker(ledger, clock=clock)
        await tracker.set_balances({"USDT": Decimal(1000)})
        await tracker.open_position(entry, [opening], stop_loss=stop, take_profit=take)
        await tracker.apply_fills([opening, partial])
        half = await ledger.position(PERP)
        booked = await tracker.apply_fills([opening, partial, rest])
        again = await tracker.apply_fills([rest])
        closed = await ledger.closed_positions(PERP)
        balance = (await ledger.balances())["USDT"].total
        take_record = await ledger.get_order("lg-1-TP")
    assert half is not None
    assert half.quantity == Decimal("0.006")
    assert booked == [rest]
    assert again == []
    (position,) = closed
    assert position.realized_pnl == Decimal(1000) * Decimal("0.010")
    fees = opening.fee + partial.fee + rest.fee
    assert position.fees_paid == fees
    assert balance == Decimal(1000) + Decimal(10) - fees
    assert take_record is not None
    assert take_record.order.filled_quantity == Decimal("0.010")


async def test_a_fill_larger_than_the_position_flips_it(clock: Clock, ledger_url: str) -> None:
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        tracker = PositionTracker(ledger, clock=clock)
        await tracker.apply_fills([fill(1, "a", OrderSide.BUY, "0.010", "20000", clock)])
        await tracker.apply_fills([fill(2, "b", OrderSide.SELL, "0.015", "20100", clock)])
        position = await ledger.position(PERP)
        (closed,) = await ledger.closed_positions(PERP)
    assert position is not None
    assert (position.side, position.quantity) == (PositionSide.SHORT, Decimal("0.005"))
    assert closed.realized_pnl == Decimal(1)


async def test_marks_value_open_positions_and_close_position_settles_by_hand(
    clock: Clock, ledger_url: str
) -> None:
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        tracker = PositionTracker(ledger, clock=clock)
        await tracker.apply_fills([fill(1, "a", OrderSide.BUY, "0.010", "20000", clock)])
        (marked,) = await tracker.mark({PERP: Decimal(20500)})
        closed = await tracker.close_position(PERP, Decimal(20400))
        after = await ledger.position(PERP)
    assert marked.unrealized_pnl == Decimal(5)
    assert closed.realized_pnl == Decimal(4)
    assert after is None


async def test_risk_state_carries_equity_lows_and_the_losing_streak(
    clock: Clock, ledger_url: str
) -> None:
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        tracker = PositionTracker(ledger, clock=clock, instruments_base={PERP: "BTC"})
        await tracker.set_balances({"USDT": Decimal(10_000)})
        start = await tracker.risk_state(quote_asset="USDT")
        await tracker.apply_fills([fill(1, "a", OrderSide.BUY, "0.100", "20000", clock)])
        await tracker.apply_fills([fill(2, "b", OrderSide.SELL, "0.100", "19000", clock)])
        after_loss = await tracker.risk_state(quote_asset="USDT")
        await tracker.apply_fills([fill(3, "c", OrderSide.BUY, "0.100", "19000", clock)])
        await tracker.mark({PERP: Decimal(19500)})
        next_day = await tracker.risk_state(quote_asset="USDT", now=clock.now() + timedelta(days=1))
    assert start.equity == Decimal(10_000)
    assert after_loss.consecutive_losses == 1
    assert after_loss.equity < start.equity
    assert after_loss.day_low_equity == after_loss.equity
    assert after_loss.start_of_day_equity == Decimal(10_000)
    assert next_day.start_of_day_equity == next_day.equity
    assert next_day.exposure_by_asset == {"BTC": Decimal("1950.0")}
    assert next_day.peak_equity == Decimal(10_000)
    assert next_day.worst_drawdown > 0


async def test_risk_state_counts_a_negative_balance_as_no_equity(
    clock: Clock, ledger_url: str
) -> None:
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        tracker = PositionTracker(ledger, clock=clock, instruments_base={PERP: "BTC"})
        await tracker.set_balances({"USDT": Decimal(100)})
        await tracker.risk_state(quote_asset="USDT")  # the day starts at 100
        # A loss larger than the balance: the recorded total goes below zero.
        await tracker.apply_fills([fill(1, "a", OrderSide.BUY, "0.100", "20000", clock)])
        await tracker.apply_fills([fill(2, "b", OrderSide.SELL, "0.100", "18000", clock)])
        state = await tracker.risk_state(quote_asset="USDT")
        recorded = (await ledger.balances())["USDT"]
    assert recorded.total == 0  # as the ledger reports balances
    assert state.equity == Decimal(0)
    assert state.consecutive_losses == 1
