"""Behaviour of the execution manager on the paper venue, on both store backends.

Each failure scenario of issue 5 is one test: the venue misbehaves through its fault
injection API, the store through an injected outage, and the manager must end in the state
the policy promises.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Awaitable, Callable
from decimal import Decimal

import pytest

from legato.kernel.bus import MessageBus
from legato.kernel.clock import Clock
from legato.kernel.errors import TransientError, ValidationError
from legato.kernel.message import Message
from legato.kernel.ratelimit import Budget
from legato.kernel.supervisor import Supervisor
from legato.trading.alerts import AlertCode, AlertLevel
from legato.trading.execution import (
    ExecutionConfig,
    ExecutionStatus,
    OrderExecutionManager,
    bracket_order_ids,
)
from legato.trading.faults import Fault
from legato.trading.instruments import Instrument
from legato.trading.ledger import IntentStage, TradingLedger
from legato.trading.matching import MatchingRules
from legato.trading.orders import Order, OrderSide, OrderStatus, OrderType
from legato.trading.paper_venue import ORDER_POOL
from legato.trading.reconciler import Reconciler, ReconcilerConfig

from .conftest import PERP
from .execution_harness import (
    FEES,
    GENEROUS,
    BarFeed,
    RecordingVenue,
    bar_at,
    ledger_opener,
    long_proposal,
    make_venue,
)
from .test_ledger import CountingDatabase


def manager_for(
    venue: RecordingVenue,
    ledger: TradingLedger,
    clock: Clock,
    bus: MessageBus | None = None,
    **config: object,
) -> OrderExecutionManager:
    return OrderExecutionManager(
        venue,
        ledger,
        rng=random.Random(7),
        clock=clock,
        bus=bus,
        config=ExecutionConfig(**config),  # type: ignore[arg-type]
    )


async def until(condition: Callable[[], Awaitable[bool]], clock: Clock, limit: float = 600) -> None:
    """Wait (in virtual time) for `condition` to hold; fail the test after `limit` seconds."""
    waited = 0.0
    while not await condition():
        assert waited < limit, "condition not reached in time"
        await clock.sleep(0.5)
        waited += 0.5


async def test_a_market_long_ends_bracketed_with_stop_loss_and_take_profit_live(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    venue = RecordingVenue(make_venue(perp, clock))
    feed = BarFeed(venue.paper, clock)
    async with ledger_opener(ledger_url, clock)() as (ledger, _), asyncio.TaskGroup() as tasks:
        tasks.create_task(feed.run())
        result = await manager_for(venue, ledger, clock).execute_trade(long_proposal())
        feed.stop()
        intent = await ledger.get_intent(result.intent_id)
        position = await ledger.position(PERP)
    assert result.success, result
    assert result.status is ExecutionStatus.BRACKETED
    assert (result.filled_quantity, result.partial_fill) == (Decimal("0.010"), False)
    assert result.alert_level is None
    assert result.latency_ms > 0
    stop, take = result.order("SL"), result.order("TP")
    assert stop is not None
    assert (stop.status, stop.reduce_only, stop.quantity) == (
        OrderStatus.ACCEPTED,
        True,
        Decimal("0.010"),
    )
    assert take is not None
    assert take.status is OrderStatus.ACCEPTED
    assert intent is not None
    assert intent.stage is IntentStage.BRACKETED
    assert position is not None
    assert position.stop_loss_order_id == stop.client_order_id
    assert position.take_profit_order_id == take.client_order_id
    entry_id, stop_id, take_id, _ = bracket_order_ids("lg-", result.intent_id)
    assert [p.client_order_id for p in venue.placements] == [entry_id, stop_id, take_id]


async def test_the_intent_is_recorded_before_anything_is_sent_and_a_store_outage_sends_nothing(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    venue = RecordingVenue(make_venue(perp, clock))
    async with ledger_opener(ledger_url, clock)() as (ledger, database):
        database.fail_writes(1)
        result = await manager_for(venue, ledger, clock).execute_trade(long_proposal())
        intents = await ledger.intents()
    assert not result.success
    assert result.status is ExecutionStatus.FAILED
    assert result.error_message is not None
    assert "nothing was sent" in result.error_message
    assert venue.placements == []
    assert intents == []


async def test_a_proposal_the_venue_cannot_take_is_refused_before_anything_is_recorded(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    venue = RecordingVenue(make_venue(perp, clock))
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        manager = manager_for(venue, ledger, clock)
        with pytest.raises(ValidationError) as off_grid:
            await manager.execute_trade(long_proposal(stop_loss="19500.05"))
        with pytest.raises(ValidationError) as odd_size:
            await manager.execute_trade(long_proposal(quantity="0.0105"))
        intents = await ledger.intents()
    assert off_grid.value.field == "stop_loss"
    assert odd_size.value.field == "quantity"
    assert intents == []
    assert venue.placements == []


async def test_entry_fills_but_stop_loss_fails_so_the_position_is_closed_with_a_critical_alert(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    venue = RecordingVenue(make_venue(perp, clock))
    for call in (2, 3, 4, 5):  # every stop-loss attempt the policy allows
        venue.paper.faults.add(Fault.transient("place_order", on_call=call))
    feed = BarFeed(venue.paper, clock)
    critical: list[Message] = []

    async def collect(message: Message) -> None:
        critical.append(message)

    async with (
        ledger_opener(ledger_url, clock)() as (ledger, _),
        MessageBus(clock=clock, rng=random.Random(3)) as bus,
        asyncio.TaskGroup() as tasks,
    ):
        await bus.subscribe(subscriber_id="pager", topic="alerts.critical", handler=collect)
        tasks.create_task(feed.run())
        manager = manager_for(venue, ledger, clock, bus=bus)
        result = await manager.execute_trade(long_proposal())
        await manager.monitor_protection()
        feed.stop()
        await bus.drain()
        alerts = await ledger.alerts(AlertLevel.CRITICAL)
        intent = await ledger.get_intent(result.intent_id)
        position = await ledger.position(PERP)
    assert not result.success
    assert result.status is ExecutionStatus.CLOSED
    assert result.partial_fill is True
    assert result.alert_level is AlertLevel.CRITICAL
    assert result.error_message is not None
    assert "stop-loss failed" in result.error_message
    assert result.retry_count == 3
    close = result.order("X")
    assert close is not None
    assert (close.status, close.reduce_only) == (OrderStatus.FILLED, True)
    assert await venue.paper.positions() == []
    assert position is None
    assert intent is not None
    assert intent.stage is IntentStage.CLOSED
    assert [alert.code for alert in alerts] == [AlertCode.STOP_LOSS_FAILED]
    assert [message.payload["code"] for message in critical] == ["stop_loss_failed"]


async def test_a_stop_loss_the_venue_rejects_outright_is_not_retried_and_the_position_closes(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    venue = RecordingVenue(make_venue(perp, clock))
    venue.paper.faults.add(Fault.reject("place_order", reason="stop price invalid", on_call=2))
    feed = BarFeed(venue.paper, clock)
    async with ledger_opener(ledger_url, clock)() as (ledger, _), asyncio.TaskGroup() as tasks:
        tasks.create_task(feed.run())
        result = await manager_for(venue, ledger, clock).execute_trade(long_proposal())
        feed.stop()
    assert result.status is ExecutionStatus.CLOSED
    assert result.retry_count == 0
    assert result.error_message is not None
    assert "stop price invalid" in result.error_message


async def test_a_stop_loss_failing_once_then_placed_is_a_success_with_a_warning(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    venue = RecordingVenue(make_venue(perp, clock))
    venue.paper.faults.add(Fault.transient("place_order", on_call=2))
    feed = BarFeed(venue.paper, clock)
    async with ledger_opener(ledger_url, clock)() as (ledger, _), asyncio.TaskGroup() as tasks:
        tasks.create_task(feed.run())
        result = await manager_for(venue, ledger, clock).execute_trade(long_proposal())
        feed.stop()
        warnings = await ledger.alerts(AlertLevel.WARNING)
    assert result.success
    assert result.status is ExecutionStatus.BRACKETED
    assert result.retry_count > 0
    assert result.alert_level is AlertLevel.WARNING
    assert any("stop-loss was placed after 1 retries" in text for text in result.warnings)
    assert [alert.code for alert in warnings] == [AlertCode.STOP_LOSS_RETRIED]


async def test_a_store_outage_after_placement_queues_the_write_which_lands_when_it_is_back(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    venue = RecordingVenue(make_venue(perp, clock))
    feed = BarFeed(venue.paper, clock)
    async with ledger_opener(ledger_url, clock)() as (ledger, database), asyncio.TaskGroup() as t:
        stop_id = ""

        def outage_after_stop_loss(order: object) -> None:
            if getattr(order, "client_order_id", "").endswith("-SL"):
                database.fail_writes(1_000)

        venue.after_place = outage_after_stop_loss
        t.create_task(feed.run())
        manager = manager_for(venue, ledger, clock)
        result = await manager.execute_trade(long_proposal())
        _, stop_id, _, _ = bracket_order_ids("lg-", result.intent_id)
        stored_during_outage = await ledger.get_order(stop_id)
        queued = len(manager.pending)
        database.fail_writes(0)  # the store is back

        async def drained() -> bool:
            return len(manager.pending) == 0 and not manager.alerter.unsaved

        async with Supervisor(clock=clock) as supervisor:
            manager.supervise(supervisor, flush_every=1.0)
            await until(drained, clock)
            health = supervisor.loop_health("execution.pending-writes")
        feed.stop()
        stored = await ledger.get_order(stop_id)
        intent = await ledger.get_intent(result.intent_id)
        warnings = await ledger.alerts(AlertLevel.WARNING)
    assert result.success
    assert result.status is ExecutionStatus.BRACKETED
    assert any("queued in pending writes" in text for text in result.warnings)
    assert queued > 0
    assert stored_during_outage is not None
    assert stored_during_outage.order.status is OrderStatus.UNKNOWN
    assert stored is not None
    assert stored.order.status is OrderStatus.ACCEPTED
    assert intent is not None
    assert intent.stage is IntentStage.BRACKETED
    assert AlertCode.STORE_WRITE_DEFERRED in [alert.code for alert in warnings]
    assert health.iterations >= 1


async def test_an_order_placed_but_not_found_is_unknown_with_a_high_alert_until_reconciled(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    venue = RecordingVenue(make_venue(perp, clock))
    venue.paper.faults.add(Fault.invisible(seconds=40.0, on_call=2))  # the stop-loss
    feed = BarFeed(venue.paper, clock)
    async with ledger_opener(ledger_url, clock)() as (ledger, _), asyncio.TaskGroup() as tasks:
        tasks.create_task(feed.run())
        manager = manager_for(venue, ledger, clock)
        result = await manager.execute_trade(long_proposal())
        stop_id = bracket_order_ids("lg-", result.intent_id)[1]
        unknown = await ledger.get_order(stop_id)
        reconciler = Reconciler(
            venue,
            ledger,
            clock=clock,
            config=ReconcilerConfig(grace_seconds=60.0),
            on_resolved=manager.recover,
        )

        async def resolved() -> bool:
            await reconciler.reconcile()
            intent = await ledger.get_intent(result.intent_id)
            return intent is not None and intent.stage is IntentStage.BRACKETED

        await until(resolved, clock)
        feed.stop()
        stored = await ledger.get_order(stop_id)
        high = await ledger.alerts(AlertLevel.HIGH)
        info = await ledger.alerts(AlertLevel.INFO)
    assert not result.success
    assert result.status is ExecutionStatus.UNKNOWN
    assert result.alert_level is AlertLevel.HIGH
    assert unknown is not None
    assert unknown.order.status is OrderStatus.UNKNOWN
    assert stored is not None
    assert stored.order.status is OrderStatus.ACCEPTED
    assert [alert.code for alert in high] == [AlertCode.ORDER_UNKNOWN]
    assert AlertCode.ORDER_RESOLVED in [alert.code for alert in info]
    assert venue.sent_twice() == []


async def test_a_rate_limit_answer_mid_execution_is_waited_out_and_reported(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    venue = RecordingVenue(make_venue(perp, clock))
    venue.paper.faults.add(Fault.rate_limited("place_order", retry_after=5.0, on_call=2))
    feed = BarFeed(venue.paper, clock)
    async with ledger_opener(ledger_url, clock)() as (ledger, _), asyncio.TaskGroup() as tasks:
        tasks.create_task(feed.run())
        result = await manager_for(venue, ledger, clock).execute_trade(long_proposal())
        feed.stop()
    assert result.success
    assert result.status is ExecutionStatus.BRACKETED
    assert result.retry_count >= 1
    assert result.rate_limit_wait >= 5.0
    assert any("rate-limited" in text for text in result.warnings)


async def test_five_trades_in_a_burst_share_a_15_per_minute_order_budget_without_a_violation(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    budget = Budget(limit=15, per=60.0)
    config = dataclasses.replace(GENEROUS, order_budget=budget)
    venue = RecordingVenue(make_venue(perp, clock, config))
    feed = BarFeed(venue.paper, clock)
    async with ledger_opener(ledger_url, clock)() as (ledger, _), asyncio.TaskGroup() as tasks:
        tasks.create_task(feed.run())
        manager = manager_for(venue, ledger, clock)
        async with asyncio.TaskGroup() as burst:
            trades = [
                burst.create_task(manager.execute_trade(long_proposal(quantity="0.002")))
                for _ in range(5)
            ]
        # A sixth bracket needs three more order calls: the limiter must hold it back until
        # the first minute's window has room again.
        sixth = await manager.execute_trade(long_proposal(quantity="0.002"))
        feed.stop()
    results = [trade.result() for trade in trades]
    assert all(result.success for result in results), results
    assert sixth.success
    grants = [(at, 1) for at, pool in venue.paper.server_log if pool == ORDER_POOL]
    assert len(grants) == 18
    assert budget.violations(grants) == 0
    assert grants[15][0] >= grants[0][0] + 60.0
    assert all(result.rate_limit_wait == 0 for result in results)
    assert venue.paper.faults.history == []


async def test_a_partial_entry_fill_sizes_the_protection_to_what_filled(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    # 1000 volume a bar at a 0.0005% participation cap: 0.005 of the 0.010 fill per bar.
    rules = MatchingRules(slippage_bps=Decimal(0), participation=Decimal("0.000005"), fees=FEES)
    venue = RecordingVenue(make_venue(perp, clock, dataclasses.replace(GENEROUS, rules=rules)))
    feed = BarFeed(venue.paper, clock, interval=2.0)
    async with ledger_opener(ledger_url, clock)() as (ledger, _), asyncio.TaskGroup() as tasks:
        tasks.create_task(feed.run())
        manager = manager_for(venue, ledger, clock, entry_timeout=3.0)
        result = await manager.execute_trade(long_proposal())
        feed.stop()
        position = await ledger.position(PERP)
    assert result.success
    assert result.partial_fill is True
    assert result.filled_quantity == Decimal("0.005")
    entry, stop = result.order("E"), result.order("SL")
    assert entry is not None
    assert entry.status is OrderStatus.CANCELLED
    assert stop is not None
    assert stop.quantity == Decimal("0.005")
    assert position is not None
    assert position.quantity == Decimal("0.005")


async def test_a_failed_take_profit_is_a_warning_and_is_retried_later_under_a_fresh_id(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    venue = RecordingVenue(make_venue(perp, clock))
    venue.paper.faults.add(Fault.reject("place_order", reason="venue says no", on_call=3))
    feed = BarFeed(venue.paper, clock)
    async with ledger_opener(ledger_url, clock)() as (ledger, _), asyncio.TaskGroup() as tasks:
        tasks.create_task(feed.run())
        manager = manager_for(venue, ledger, clock, take_profit_retry_delay=10.0)
        result = await manager.execute_trade(long_proposal())
        early = await manager.recover()  # too early: the retry is not due yet
        await clock.sleep(10.0)
        later = await manager.recover()
        feed.stop()
    assert result.success
    assert result.status is ExecutionStatus.PROTECTED
    assert result.alert_level is AlertLevel.WARNING
    assert any("take-profit not placed" in text for text in result.warnings)
    assert early == []
    (retried,) = later
    assert retried.status is ExecutionStatus.BRACKETED
    take = retried.order("TP")
    assert take is not None
    assert take.client_order_id.endswith("-TP2")
    assert take.status is OrderStatus.ACCEPTED
    assert venue.sent_twice() == []


async def test_a_position_closed_by_hand_has_both_protective_orders_cancelled_in_one_write(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    venue = RecordingVenue(make_venue(perp, clock))
    feed = BarFeed(venue.paper, clock)
    async with (
        ledger_opener(ledger_url, clock)() as (ledger, database),
        asyncio.TaskGroup() as tasks,
    ):
        tasks.create_task(feed.run())
        manager = manager_for(venue, ledger, clock)
        result = await manager.execute_trade(long_proposal())
        await venue.paper.place_order(
            Order(
                client_order_id="by-hand",
                symbol=PERP,
                side=OrderSide.SELL,
                type=OrderType.MARKET,
                quantity=Decimal("0.010"),
                reduce_only=True,
            )
        )
        venue.paper.process_bar(bar_at(500, "20000", "20010", "19990", "20000"))
        writes_before = database.writes
        cancelled = await manager.monitor_protection()
        writes = database.writes - writes_before
        feed.stop()
        _, stop_id, take_id, _ = bracket_order_ids("lg-", result.intent_id)
        stop = await ledger.get_order(stop_id)
        take = await ledger.get_order(take_id)
    assert cancelled == 2
    assert stop is not None
    assert take is not None
    assert (stop.order.status, take.order.status) == (OrderStatus.CANCELLED,) * 2
    # One write books the closing fill, one records both cancellations.
    assert writes == 2


async def test_when_the_take_profit_fills_the_monitor_cancels_the_stop_loss(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    venue = RecordingVenue(make_venue(perp, clock))
    feed = BarFeed(venue.paper, clock)
    async with ledger_opener(ledger_url, clock)() as (ledger, _), asyncio.TaskGroup() as tasks:
        tasks.create_task(feed.run())
        manager = manager_for(venue, ledger, clock)
        result = await manager.execute_trade(long_proposal())
        fills = venue.paper.process_bar(bar_at(500, "20000", "21100", "19990", "21050"))
        cancelled = await manager.monitor_protection()
        feed.stop()
        stop = await ledger.get_order(bracket_order_ids("lg-", result.intent_id)[1])
        closed = await ledger.closed_positions(PERP)
    assert [fill.client_order_id for fill in fills] == [f"lg-{result.intent_id}-TP"]
    assert cancelled == 1
    assert stop is not None
    assert stop.order.status is OrderStatus.CANCELLED
    venue_stop = await venue.paper.get_order(client_order_id=stop.order.client_order_id)
    assert venue_stop.status is OrderStatus.CANCELLED
    (position,) = closed
    assert position.realized_pnl == (Decimal(21000) - Decimal(20000)) * Decimal("0.010")


async def test_a_venue_answer_held_for_the_next_write_lands_when_the_call_fails_first(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    # The entry seen filled is journaled with the position; when the position cannot be
    # recorded yet (the venue's fills do not add up), the call ends with the error, and the
    # entry's fill it had learnt is journaled on the way out, not lost with the call.
    venue = RecordingVenue(make_venue(perp, clock))
    feed = BarFeed(venue.paper, clock)

    async def no_fills_yet(symbol: str | None = None) -> list[object]:
        return []

    venue.fills = no_fills_yet  # type: ignore[method-assign, assignment]
    async with ledger_opener(ledger_url, clock)() as (ledger, _), asyncio.TaskGroup() as tasks:
        tasks.create_task(feed.run())
        with pytest.raises(TransientError):
            await manager_for(venue, ledger, clock).execute_trade(long_proposal())
        feed.stop()
        entries = [
            record.order
            for record in await ledger.orders(symbol=PERP)
            if record.order.client_order_id.endswith("-E")
        ]
    assert [(entry.status, entry.filled_quantity) for entry in entries] == [
        (OrderStatus.FILLED, Decimal("0.010"))
    ]


async def test_the_fills_a_bracket_opened_with_are_skipped_by_the_monitor_without_a_store_read(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    venue = RecordingVenue(make_venue(perp, clock))
    feed = BarFeed(venue.paper, clock)
    plain = await TradingLedger.open(ledger_url, upgrade=False, clock=clock)
    counting = CountingDatabase(plain.database)
    ledger = TradingLedger(counting)
    try:
        manager = manager_for(venue, ledger, clock)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(feed.run())
            result = await manager.execute_trade(long_proposal())
            feed.stop()
        counting.statements.clear()
        # A first pass lists every venue fill, the entry's too: booked with the position.
        await manager.monitor_protection()
        fills = await ledger.fills(PERP)
    finally:
        await plain.close()
    entry = result.order("E")
    assert result.status is ExecutionStatus.BRACKETED
    assert entry is not None
    assert [fill.client_order_id for fill in fills] == [entry.client_order_id]
    assert not [sql for sql, _ in counting.statements if "fill_id IN" in sql]
