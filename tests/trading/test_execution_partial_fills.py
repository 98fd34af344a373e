"""Partial fills end to end: an entry and its stop several bars' volume large, on both backends.

The execution manager, the protection monitor and the reconciler run together, as on the
desk, while a 0.25 participation cap fills every order a quarter at a time. An entry that
would fill over several bars has its rest cancelled within `partial_protect_after` of its
first fill, and what filled is protected by then.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from datetime import timedelta
from decimal import Decimal

import pytest

from legato.kernel.clock import Clock
from legato.kernel.errors import ValidationError
from legato.kernel.supervisor import Supervisor
from legato.trading.alerts import AlertCode
from legato.trading.execution import ExecutionConfig, ExecutionStatus, OrderExecutionManager
from legato.trading.instruments import Instrument
from legato.trading.market_data import Bar
from legato.trading.matching import MatchingRules
from legato.trading.orders import OrderStatus
from legato.trading.proposals import EntryType
from legato.trading.reconciler import Reconciler
from legato.trading.tracker import PositionTracker

from .conftest import PERP, T0
from .execution_harness import (
    FEES,
    GENEROUS,
    START_BALANCE,
    BarFeed,
    RecordingVenue,
    ledger_opener,
    long_proposal,
    make_venue,
)


def thin_bar(index: int, open_: str, high: str, low: str, close: str) -> Bar:
    # 0.02 volume at a 0.25 participation cap: 0.005 a bar, a quarter of a 0.020 order.
    return Bar(
        symbol=PERP,
        timestamp=T0 + timedelta(minutes=5 * index),
        open=Decimal(open_),
        high=Decimal(high),
        low=Decimal(low),
        close=Decimal(close),
        volume=Decimal("0.02"),
    )


async def test_a_stop_filling_in_parts_closes_the_position_once_and_the_take_profit_is_cancelled(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    rules = MatchingRules(slippage_bps=Decimal(0), participation=Decimal("0.25"), fees=FEES)
    venue = RecordingVenue(make_venue(perp, clock, dataclasses.replace(GENEROUS, rules=rules)))
    quiet = [thin_bar(i, "20000", "20010", "19990", "20000") for i in range(1, 7)]
    falling = [thin_bar(i, "19600", "19610", "19400", "19450") for i in range(7, 14)]
    feed = BarFeed(venue.paper, clock, quiet + falling, interval=2.0)
    async with ledger_opener(ledger_url, clock)() as (ledger, _), asyncio.TaskGroup() as tasks:
        tracker = PositionTracker(ledger, clock=clock)
        await tracker.set_balances({"USDT": START_BALANCE})
        manager = OrderExecutionManager(
            venue,
            ledger,
            rng=random.Random(5),
            clock=clock,
            tracker=tracker,
            # Patient enough for the entry's four bars (8 s): this test is about the stop
            # filling in parts, after a whole entry.
            config=ExecutionConfig(fill_poll_interval=1.0, partial_protect_after=10.0),
        )
        reconciler = Reconciler(
            venue,
            ledger,
            clock=clock,
            tracker=tracker,
            on_resolved=manager.recover,
            in_progress=manager.orders_in_progress,
        )
        supervisor = Supervisor(clock=clock, rng=random.Random(1))
        # The reconciler books fills too, and here more often than the protection monitor:
        # it books the stop's last fill first, and the take-profit must go all the same.
        supervisor.add_loop("reconciler", reconciler.reconcile, interval=1.0)
        supervisor.add_loop("protection", manager.monitor_protection, interval=7.0)
        supervisor.add_loop("recover", manager.recover, interval=3.0)
        tasks.create_task(feed.run())
        async with supervisor:
            result = await manager.execute_trade(long_proposal(quantity="0.020"))
            await clock.sleep(40)
        feed.stop()
        await manager.monitor_protection()
        final = await reconciler.reconcile()
        alerts = await ledger.alerts()
        store_fills = await ledger.fills()
        take = await ledger.get_order(f"lg-{result.intent_id}-TP")
        closed = await ledger.closed_positions(PERP)
        open_positions = await ledger.open_positions()
    assert result.status is ExecutionStatus.BRACKETED
    assert result.filled_quantity == Decimal("0.020")
    assert final.in_agreement, final.plan.actions
    noisy = {AlertCode.RECONCILIATION_REPORT, AlertCode.ORDER_ADOPTED}
    assert [alert.message for alert in alerts if alert.code in noisy] == []
    assert store_fills == list(await venue.paper.fills())
    # Four entry fills and four stop fills of 0.005: each booked once.
    assert [fill.quantity for fill in store_fills] == [Decimal("0.005")] * 8
    assert open_positions == []
    (position,) = closed
    assert position.quantity == 0
    assert take is not None
    assert take.order.status is OrderStatus.CANCELLED
    venue_take = await venue.paper.get_order(client_order_id=take.order.client_order_id)
    assert venue_take.status is OrderStatus.CANCELLED


# The exposure bound under test, far shorter than the entry timeout and than the four bars
# (40 s) the entry would need to fill completely.
PROTECT_AFTER = 2.0
BAR_EVERY = 10.0


@pytest.mark.parametrize(
    ("entry_type", "fill_poll_interval"),
    [
        (EntryType.MARKET, 1.0),
        (EntryType.LIMIT, 1.0),
        # Polls far apart: a working entry is polled within the bound all the same.
        (EntryType.MARKET, 30.0),
    ],
)
async def test_an_entry_filling_over_several_bars_has_its_filled_part_protected_within_the_bound(
    perp: Instrument,
    clock: Clock,
    ledger_url: str,
    entry_type: EntryType,
    fill_poll_interval: float,
) -> None:
    rules = MatchingRules(slippage_bps=Decimal(0), participation=Decimal("0.25"), fees=FEES)
    venue = RecordingVenue(make_venue(perp, clock, dataclasses.replace(GENEROUS, rules=rules)))
    placed_at: dict[str, float] = {}
    venue.after_place = lambda order: placed_at.setdefault(order.client_order_id, clock.monotonic())
    entry_fills_at: list[float] = []

    async def market() -> None:
        # 0.005 of the 0.020 entry a bar, a bar every 10 s, for 80 s.
        for index in range(1, 9):
            await clock.sleep(BAR_EVERY)
            fills = venue.paper.process_bar(thin_bar(index, "20000", "20010", "19990", "20000"))
            if any(fill.client_order_id.endswith("-E") for fill in fills):
                entry_fills_at.append(clock.monotonic())

    proposal = dataclasses.replace(long_proposal(quantity="0.020"), entry_type=entry_type)
    config = ExecutionConfig(
        fill_poll_interval=fill_poll_interval,
        partial_protect_after=PROTECT_AFTER,
        entry_timeout=300.0,
    )
    async with ledger_opener(ledger_url, clock)() as (ledger, _), asyncio.TaskGroup() as tasks:
        manager = OrderExecutionManager(
            venue, ledger, rng=random.Random(3), clock=clock, config=config
        )
        feed = tasks.create_task(market())
        result = await manager.execute_trade(proposal)
        await feed
        intent = await ledger.get_intent(result.intent_id)
    stop_id = f"lg-{result.intent_id}-SL"
    assert result.status is ExecutionStatus.BRACKETED, result
    assert (result.partial_fill, result.filled_quantity) == (True, Decimal("0.005"))
    # One bar's fill, and the bars after it filled nothing more: the rest was cancelled.
    assert len(entry_fills_at) == 1
    assert placed_at[stop_id] - entry_fills_at[0] <= PROTECT_AFTER
    venue_stop = await venue.paper.get_order(client_order_id=stop_id)
    assert (venue_stop.status, venue_stop.quantity) == (OrderStatus.ACCEPTED, Decimal("0.005"))
    venue_entry = await venue.paper.get_order(client_order_id=f"lg-{result.intent_id}-E")
    assert (venue_entry.status, venue_entry.filled_quantity) == (
        OrderStatus.CANCELLED,
        Decimal("0.005"),
    )
    (position,) = await venue.paper.positions()
    assert position.quantity == Decimal("0.005")
    assert intent is not None
    assert float(intent.outcome["partial_cancel_at"]) <= clock.timestamp()
    assert any("within 2s of the first fill" in warning for warning in result.warnings)


async def test_an_entry_that_fills_whole_within_the_bound_is_not_cut_short(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    # Two thin bars half a second apart fill the 0.010 entry: its rest is not cancelled
    # after the first, since the second comes within the bound.
    rules = MatchingRules(slippage_bps=Decimal(0), participation=Decimal("0.25"), fees=FEES)
    venue = RecordingVenue(make_venue(perp, clock, dataclasses.replace(GENEROUS, rules=rules)))

    async def market() -> None:
        for index in (1, 2):
            await clock.sleep(0.5)
            venue.paper.process_bar(thin_bar(index, "20000", "20010", "19990", "20000"))

    config = ExecutionConfig(fill_poll_interval=1.0, partial_protect_after=PROTECT_AFTER)
    async with ledger_opener(ledger_url, clock)() as (ledger, _), asyncio.TaskGroup() as tasks:
        manager = OrderExecutionManager(
            venue, ledger, rng=random.Random(3), clock=clock, config=config
        )
        tasks.create_task(market())
        result = await manager.execute_trade(long_proposal(quantity="0.010"))
    assert result.status is ExecutionStatus.BRACKETED, result
    assert (result.partial_fill, result.filled_quantity) == (False, Decimal("0.010"))
    entry, stop = result.order("E"), result.order("SL")
    assert entry is not None
    assert entry.status is OrderStatus.FILLED
    assert stop is not None
    assert stop.quantity == Decimal("0.010")


@pytest.mark.parametrize("value", [0, -1.0, True, "2"])
def test_a_partial_protect_after_that_is_not_positive_seconds_is_refused(value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        ExecutionConfig(partial_protect_after=value)  # type: ignore[arg-type]
    assert (caught.value.field, caught.value.value) == ("partial_protect_after", value)
