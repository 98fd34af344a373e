"""Partial fills end to end: an entry and its stop several bars' volume large, on both backends.

The execution manager, the protection monitor and the reconciler run together, as on the
desk, while a 0.25 participation cap fills every order a quarter at a time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from datetime import timedelta
from decimal import Decimal

from legato.kernel.clock import Clock
from legato.kernel.supervisor import Supervisor
from legato.trading.alerts import AlertCode
from legato.trading.execution import ExecutionConfig, ExecutionStatus, OrderExecutionManager
from legato.trading.instruments import Instrument
from legato.trading.market_data import Bar
from legato.trading.matching import MatchingRules
from legato.trading.orders import OrderStatus
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
            config=ExecutionConfig(fill_poll_interval=1.0),
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
