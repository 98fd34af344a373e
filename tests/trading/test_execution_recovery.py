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

import pytest

from legato.kernel.clock import Clock
from legato.trading.alerts import AlertLevel
from legato.trading.execution import ExecutionConfig, ExecutionStatus, OrderExecutionManager
from legato.trading.faults import Fault
from legato.trading.instruments import Instrument
from legato.trading.ledger import ExecutionIntent, IntentStage, TradingLedger
from legato.trading.market_data import Bar
from legato.trading.matching import MatchingRules
from legato.trading.orders import Order, OrderSide, OrderStatus, OrderType
from legato.trading.proposals import EntryType
from legato.trading.reconciler import Reconciler, ReconcilerConfig

from .conftest import PERP
from .execution_harness import (
    FEES,
    GENEROUS,
    BarFeed,
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


async def test_an_emergency_close_given_up_as_not_placed_is_sent_again_and_closes(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    venue = RecordingVenue(make_venue(perp, clock))
    # The stop-loss is refused; the emergency close times out without reaching the venue.
    venue.paper.faults.add(Fault.reject("place_order", reason="no stops today", on_call=2))
    venue.paper.faults.add(Fault.timeout_before_place(on_call=3))
    feed = BarFeed(venue.paper, clock)
    async with ledger_opener(ledger_url, clock)() as (ledger, _), asyncio.TaskGroup() as tasks:
        manager = manager_for(venue, ledger, clock)
        tasks.create_task(feed.run())
        result = await manager.execute_trade(long_proposal())
        assert result.status is ExecutionStatus.UNKNOWN, result
        # The reconciler gives the close up as not placed, then lets the manager resume.
        reconciler = Reconciler(
            venue,
            ledger,
            clock=clock,
            config=ReconcilerConfig(grace_seconds=0.0),
            tracker=manager.tracker,
            on_resolved=manager.recover,
        )
        await reconciler.reconcile()
        await manager.monitor_protection()
        feed.stop()
        intent = await ledger.get_intent(result.intent_id)
        alerts = await ledger.alerts(AlertLevel.CRITICAL)
    close_id = f"lg-{result.intent_id}-X"
    assert intent is not None
    assert intent.stage is IntentStage.CLOSED
    assert intent.close_order_id == f"{close_id}2"
    assert await venue.paper.positions() == []
    renewed = await venue.paper.get_order(client_order_id=f"{close_id}2")
    assert renewed.status is OrderStatus.FILLED
    assert venue.sent_twice() == []
    assert [(alert.code.value, alert.client_order_id) for alert in alerts] == [
        ("stop_loss_failed", f"{close_id}2")
    ]
    assert "sent again as" in alerts[0].message


PROTECT_AFTER = 2.0


def thin_bar(index: int) -> Bar:
    """A quiet bar of 0.02 volume: at a 0.25 participation cap, 0.005 fills a bar."""
    return dataclasses.replace(flat_bar(index), volume=Decimal("0.02"))


@pytest.mark.parametrize("down_for", [0.5, 60.0])
@pytest.mark.parametrize("cancel_reached_the_venue", [False, True])
async def test_recovery_of_a_partly_filled_entry_protects_what_filled_by_the_journaled_deadline(
    perp: Instrument,
    clock: Clock,
    ledger_url: str,
    down_for: float,
    cancel_reached_the_venue: bool,
) -> None:
    rules = MatchingRules(slippage_bps=Decimal(0), participation=Decimal("0.25"), fees=FEES)
    venue = RecordingVenue(make_venue(perp, clock, dataclasses.replace(GENEROUS, rules=rules)))
    placed_at: dict[str, float] = {}
    venue.after_place = lambda order: placed_at.setdefault(order.client_order_id, clock.timestamp())
    config = ExecutionConfig(partial_protect_after=PROTECT_AFTER)
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        first = OrderExecutionManager(
            venue, ledger, rng=random.Random(7), clock=clock, config=config
        )
        # The process dies once the entry's first fill is journaled with its deadline.
        async with asyncio.TaskGroup() as tasks:
            call = tasks.create_task(first.execute_trade(long_proposal(quantity="0.020")))
            await wait_for_placements(venue, 1, clock)
            venue.paper.process_bar(thin_bar(1))
            filled_at = clock.timestamp()
            (intent,) = await wait_for_partial_deadline(ledger, clock)
            call.cancel()
        deadline = float(intent.outcome["partial_cancel_at"])
        assert filled_at < deadline <= filled_at + PROTECT_AFTER
        entry_id = intent.entry_order_id
        stored = await ledger.get_order(entry_id)
        assert stored is not None
        assert stored.order.status is OrderStatus.PARTIALLY_FILLED
        if cancel_reached_the_venue:
            # The dying process's cancel took effect; its answer never arrived.
            await venue.paper.cancel_order(client_order_id=entry_id)
        await clock.sleep(down_for)
        restarted_at = clock.timestamp()
        restarted = OrderExecutionManager(
            venue, ledger, rng=random.Random(8), clock=clock, config=config
        )
        (result,) = await restarted.recover()
        again = await restarted.recover()
        stored_intent = await ledger.get_intent(intent.intent_id)
    stop_id = intent.stop_loss_order_id
    assert result.status is ExecutionStatus.BRACKETED, result
    assert (result.partial_fill, result.filled_quantity) == (True, Decimal("0.005"))
    # Protected by the deadline journaled before the crash, or at once when restarted later.
    assert placed_at[stop_id] <= max(deadline, restarted_at)
    venue_stop = await venue.paper.get_order(client_order_id=stop_id)
    assert (venue_stop.status, venue_stop.quantity) == (OrderStatus.ACCEPTED, Decimal("0.005"))
    venue_entry = await venue.paper.get_order(client_order_id=entry_id)
    assert (venue_entry.status, venue_entry.filled_quantity) == (
        OrderStatus.CANCELLED,
        Decimal("0.005"),
    )
    assert again == []
    assert stored_intent is not None
    assert stored_intent.stage is IntentStage.BRACKETED
    assert venue.sent_twice() == []


async def wait_for_partial_deadline(ledger: TradingLedger, clock: Clock) -> list[ExecutionIntent]:
    """Wait (virtual time) until an intent has journaled when its entry's rest goes."""
    for _ in range(100):
        intents = await ledger.intents()
        if any("partial_cancel_at" in intent.outcome for intent in intents):
            return list(intents)
        await clock.sleep(0.05)
    raise AssertionError("no partly filled entry was journaled in time")


async def test_a_recovery_pass_while_a_new_intent_is_written_leaves_it_to_its_caller(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    venue = RecordingVenue(make_venue(perp, clock))
    async with ledger_opener(ledger_url, clock)() as (ledger, database):
        manager = manager_for(venue, ledger, clock)
        recovered: list[list[object]] = []

        async def recover_now() -> None:
            # The intent is committed; its writer has not heard back yet.
            recovered.append(list(await manager.recover()))

        database.after_next_commit(recover_now)
        async with asyncio.TaskGroup() as tasks:
            call = tasks.create_task(manager.execute_trade(long_proposal()))
            await wait_for_placements(venue, 1, clock)
            venue.paper.process_bar(bar_at(1, "20000", "20010", "19990", "20000"))
        result = call.result()
    assert recovered == [[]]  # the pass saw the intent being carried and left it
    assert result.status is ExecutionStatus.BRACKETED
    assert venue.sent_twice() == []
