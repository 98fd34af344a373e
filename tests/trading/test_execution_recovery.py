"""Recovery racing the calls and loops that carry trades on: the desk's loops at real pace.

`recover()` lists the unfinished intents, then resumes them one after the other, while the
pipeline's calls and the protection monitor keep moving the same trades. Whatever it finds,
recovery must neither redo a stage another call finished nor fail on every pass.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from decimal import Decimal

from legato.kernel.clock import Clock
from legato.trading.execution import ExecutionConfig, ExecutionStatus, OrderExecutionManager
from legato.trading.faults import Fault
from legato.trading.instruments import Instrument
from legato.trading.ledger import IntentStage, TradingLedger
from legato.trading.orders import Order, OrderSide, OrderType
from legato.trading.proposals import EntryType

from .conftest import PERP
from .execution_harness import (
    RecordingVenue,
    bar_at,
    flat_bar,
    ledger_opener,
    long_proposal,
    make_venue,
)


def manager_for(
    venue: RecordingVenue, ledger: TradingLedger, clock: Clock
) -> OrderExecutionManager:
    return OrderExecutionManager(
        venue, ledger, rng=random.Random(7), clock=clock, config=ExecutionConfig()
    )


async def wait_for_placements(venue: RecordingVenue, count: int, clock: Clock) -> None:
    """Wait (virtual time) until the venue has received `count` new orders."""
    for _ in range(600):
        if len(venue.placements) >= count:
            return
        await clock.sleep(0.1)
    raise AssertionError(f"fewer than {count} orders placed in time")


def closing_order(client_order_id: str, quantity: str) -> Order:
    """A reduce-only market sell, as the desk's guards send to close a bare long."""
    return Order(
        client_order_id=client_order_id,
        symbol=PERP,
        side=OrderSide.SELL,
        type=OrderType.MARKET,
        quantity=Decimal(quantity),
        reduce_only=True,
        leverage=Decimal(5),
    )


async def test_recovery_settles_an_intent_whose_filled_entry_was_closed_before_protection(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    venue = RecordingVenue(make_venue(perp, clock))
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        manager = manager_for(venue, ledger, clock)
        # The call carrying the trade ends while the entry waits for its fill (the desk
        # stopped, or the pipeline run failed): the intent stays at ENTRY in the store.
        async with asyncio.TaskGroup() as tasks:
            call = tasks.create_task(manager.execute_trade(long_proposal()))
            await wait_for_placements(venue, 1, clock)
            call.cancel()
        venue.paper.process_bar(flat_bar(1))
        # The protection monitor books the entry's fill: the position opens, bare; the
        # guards close it, and the monitor books the close.
        await manager.monitor_protection()
        assert await ledger.position(PERP) is not None
        await venue.place_order(closing_order("guard-close-X", "0.010"))
        venue.paper.process_bar(flat_bar(2))
        await manager.monitor_protection()
        assert await ledger.position(PERP) is None
        first = await manager.recover()
        second = await manager.recover()
        intents = await ledger.intents()
    assert [result.status for result in first] == [ExecutionStatus.CLOSED]
    assert first[0].filled_quantity == Decimal("0.010")
    assert second == []
    assert [intent.stage for intent in intents] == [IntentStage.CLOSED]
    # Nothing was sent for a position that no longer exists.
    assert [p.client_order_id for p in venue.placements][2:] == []
    assert venue.sent_twice() == []


async def test_recovery_does_not_redo_a_stage_another_call_finished_while_it_waited(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    venue = RecordingVenue(make_venue(perp, clock))
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        manager = manager_for(venue, ledger, clock)
        async with asyncio.TaskGroup() as tasks:
            # Intent A: a limit entry far below the market, its call gone; recovery waits on
            # it (polling for a fill) for a while.
            below = long_proposal(entry="18000", stop_loss="17500")
            below = dataclasses.replace(below, entry_type=EntryType.LIMIT)
            stale = tasks.create_task(manager.execute_trade(below))
            await wait_for_placements(venue, 1, clock)
            stale.cancel()
        async with asyncio.TaskGroup() as tasks:
            # Intent B: a market long whose call is waiting for the next bar.
            live = tasks.create_task(manager.execute_trade(long_proposal()))
            await wait_for_placements(venue, 2, clock)
            # recover() lists A and B now (both at ENTRY), then resumes A first.
            recovery = tasks.create_task(manager.recover())
            await clock.sleep(1.5)
            venue.paper.process_bar(bar_at(1, "20000", "20010", "19990", "20000"))
            done = await live
            assert done.status is ExecutionStatus.BRACKETED
            # A's entry never fills: recovery cancels it at the entry timeout, then reaches B.
            results = await recovery
        stop = await ledger.get_order(done.order("SL").client_order_id)  # type: ignore[union-attr]
    assert venue.sent_twice() == []
    assert stop is not None
    assert stop.order.status.value == "accepted"
    # A failed at its timeout; B was read again and found finished: nothing redone.
    assert [result.status for result in results] == [
        ExecutionStatus.FAILED,
        ExecutionStatus.BRACKETED,
    ]
    assert len(venue.placements) == 4  # A's entry; B's entry, stop-loss and take-profit


async def stopped_out_after_a_refused_take_profit(
    venue: RecordingVenue, manager: OrderExecutionManager, clock: Clock
) -> str:
    """A protected long whose take-profit was refused, then closed by its stop-loss."""
    venue.paper.faults.add(Fault.reject("place_order", reason="venue says no", on_call=3))
    async with asyncio.TaskGroup() as tasks:
        call = tasks.create_task(manager.execute_trade(long_proposal()))
        await wait_for_placements(venue, 1, clock)
        venue.paper.process_bar(flat_bar(1))
    result = call.result()
    assert result.status is ExecutionStatus.PROTECTED
    # The next bar trades through the stop: the position is flat on the venue.
    venue.paper.process_bar(bar_at(2, "20000", "20010", "19400", "19450"))
    await clock.sleep(manager.config.take_profit_retry_delay)
    return result.intent_id


async def test_a_take_profit_retry_on_a_position_already_closed_is_dropped_not_retried(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    venue = RecordingVenue(make_venue(perp, clock))
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        manager = manager_for(venue, ledger, clock)
        intent_id = await stopped_out_after_a_refused_take_profit(venue, manager, clock)
        await manager.monitor_protection()  # books the stop-loss fill: flat in the store
        placed = len(venue.placements)
        (retried,) = await manager.recover()
        intent = await ledger.get_intent(intent_id)
    # Final (BRACKETED in the store); the result reports the take-profit as not placed.
    assert retried.status is ExecutionStatus.PROTECTED
    assert "take-profit not placed: the position was already closed" in retried.warnings
    assert len(venue.placements) == placed  # no take-profit sent for a flat symbol
    assert intent is not None
    assert intent.stage is IntentStage.BRACKETED


async def test_a_take_profit_refused_because_the_venue_is_flat_is_not_retried(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    venue = RecordingVenue(make_venue(perp, clock))
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        manager = manager_for(venue, ledger, clock)
        intent_id = await stopped_out_after_a_refused_take_profit(venue, manager, clock)
        # The stop-loss fill is not booked yet: the store still shows the position open, so
        # the take-profit is sent, and the venue refuses it ("would not reduce").
        (retried,) = await manager.recover()
        later = await manager.recover()
        intent = await ledger.get_intent(intent_id)
    # Final (BRACKETED in the store); the result reports the take-profit as not placed.
    assert retried.status is ExecutionStatus.PROTECTED
    assert "take-profit not placed: the position was already closed" in retried.warnings
    assert later == []
    assert intent is not None
    assert intent.stage is IntentStage.BRACKETED
