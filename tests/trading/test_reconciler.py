"""The acting reconciler: each of its repairs, on the paper venue and both store backends."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal

from legato.kernel.clock import Clock
from legato.kernel.supervisor import Supervisor
from legato.trading.alerts import AlertCode, AlertLevel
from legato.trading.desk import Desk
from legato.trading.desk_config import DataSettings, DeskConfig, StrategyConfig, VenueSettings
from legato.trading.execution import ExecutionStatus, OrderExecutionManager
from legato.trading.faults import Fault
from legato.trading.instruments import Instrument
from legato.trading.ledger import OrderRole, TradingLedger
from legato.trading.market_data import Bar
from legato.trading.matching import MatchingRules
from legato.trading.orders import Order, OrderSide, OrderStatus, OrderType
from legato.trading.paper_venue import PaperVenue
from legato.trading.reconciler import Reconciler, ReconcilerConfig
from legato.trading.reconciliation import ActionKind
from legato.trading.tracker import PositionTracker

from .agents.scripted_bars import SYMBOL, trend
from .conftest import PERP, T0
from .desk_harness import INSTRUMENT as DESK_INSTRUMENT
from .desk_harness import START as DESK_START
from .desk_harness import empty_desk_tables
from .execution_harness import (
    FEES,
    GENEROUS,
    START_BALANCE,
    BarFeed,
    RecordingVenue,
    flat_bar,
    ledger_opener,
    long_proposal,
    make_venue,
)


def reconciler_for(
    venue: RecordingVenue, ledger: TradingLedger, clock: Clock, **config: object
) -> Reconciler:
    return Reconciler(venue, ledger, clock=clock, config=ReconcilerConfig(**config))  # type: ignore[arg-type]


def limit_buy(cid: str, price: str = "15000", quantity: str = "0.010") -> Order:
    return Order(cid, PERP, OrderSide.BUY, OrderType.LIMIT, Decimal(quantity), price=Decimal(price))


async def test_an_order_of_ours_the_store_lacks_is_adopted_and_a_foreign_one_reported_once(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    venue = RecordingVenue(make_venue(perp, clock))
    await venue.paper.place_order(limit_buy("lg-lost-E"))
    await venue.paper.place_order(limit_buy("manual-1"))
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        reconciler = reconciler_for(venue, ledger, clock)
        first = await reconciler.reconcile()
        second = await reconciler.reconcile()
        adopted = await ledger.get_order("lg-lost-E")
        foreign = await ledger.get_order("manual-1")
        alerts = await ledger.alerts()
    assert first.written == ("lg-lost-E",)
    assert adopted is not None
    assert (adopted.role, adopted.order.status) == (OrderRole.ADOPTED, OrderStatus.ACCEPTED)
    assert foreign is None
    assert len(second.reported) == 1
    codes = [alert.code for alert in alerts]
    assert codes.count(AlertCode.ORDER_ADOPTED) == 1
    assert codes.count(AlertCode.RECONCILIATION_REPORT) == 1


async def test_an_unknown_order_not_found_is_only_marked_not_placed_after_the_grace_period(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    venue = RecordingVenue(make_venue(perp, clock))
    now = clock.now()
    lost = limit_buy("lg-gone-E").transition(OrderStatus.UNKNOWN, at=now, created_at=now)
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        await ledger.write(lambda tx: tx.put_order(lost, OrderRole.ENTRY))
        reconciler = reconciler_for(venue, ledger, clock, grace_seconds=30.0)
        first = await reconciler.reconcile()
        after_first = await ledger.get_order("lg-gone-E")
        await clock.sleep(10.0)
        early = await reconciler.reconcile()
        await clock.sleep(25.0)
        final = await reconciler.reconcile()
        stored = await ledger.get_order("lg-gone-E")
    assert first.queried == ("lg-gone-E",)
    assert first.plan.of_kind(ActionKind.AWAIT_GRACE)
    assert after_first is not None
    assert after_first.order.status is OrderStatus.UNKNOWN
    assert early.written == ()
    assert final.written == ("lg-gone-E",)
    assert stored is not None
    assert stored.order.status is OrderStatus.REJECTED
    assert stored.order.reason is not None
    assert "not placed" in stored.order.reason


async def test_an_unknown_order_the_venue_has_takes_the_venues_status(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    venue = RecordingVenue(make_venue(perp, clock))
    placed = await venue.paper.place_order(limit_buy("lg-seen-E"))
    unknown = limit_buy("lg-seen-E").transition(
        OrderStatus.UNKNOWN, at=clock.now(), created_at=clock.now()
    )
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        await ledger.write(lambda tx: tx.put_order(unknown, OrderRole.ENTRY, "intent-1"))
        report = await reconciler_for(venue, ledger, clock).reconcile()
        stored = await ledger.get_order("lg-seen-E")
    assert report.plan.of_kind(ActionKind.RESOLVE_UNKNOWN)
    assert stored is not None
    assert stored.order.status is OrderStatus.ACCEPTED
    assert stored.order.venue_order_id == placed.venue_order_id
    assert (stored.role, stored.intent_id) == (OrderRole.ENTRY, "intent-1")


async def test_a_position_whose_stop_loss_is_gone_is_reprotected_at_the_recorded_stop(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    venue = RecordingVenue(make_venue(perp, clock))
    feed = BarFeed(venue.paper, clock)
    async with ledger_opener(ledger_url, clock)() as (ledger, _), asyncio.TaskGroup() as tasks:
        tasks.create_task(feed.run())
        manager = OrderExecutionManager(venue, ledger, rng=random.Random(5), clock=clock)
        result = await manager.execute_trade(long_proposal(take_profit=None))
        stop = result.order("SL")
        assert stop is not None
        await venue.paper.cancel_order(client_order_id=stop.client_order_id)  # by hand
        reconciler = reconciler_for(venue, ledger, clock, grace_seconds=5.0)
        reports = []
        for _ in range(4):
            reports.append(await reconciler.reconcile())
            await clock.sleep(3.0)
        feed.stop()
        position = await ledger.position(PERP)
        high = await ledger.alerts(AlertLevel.HIGH)
    placed = [cid for report in reports for cid in report.placed]
    assert len(placed) == 1
    venue_stop = await venue.paper.get_order(client_order_id=placed[0])
    assert venue_stop.type is OrderType.STOP
    assert venue_stop.stop_price == Decimal(19500)
    assert venue_stop.reduce_only
    assert venue_stop.status is OrderStatus.ACCEPTED
    assert position is not None
    assert position.stop_loss_order_id == placed[0]
    assert [alert.code for alert in high] == [AlertCode.POSITION_REPROTECTED]


async def test_a_position_opened_outside_the_desk_is_protected_at_a_derived_stop(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    venue = RecordingVenue(make_venue(perp, clock))
    market = Order(
        "manual-2", PERP, OrderSide.BUY, OrderType.MARKET, Decimal("0.010"), leverage=Decimal(2)
    )
    await venue.paper.place_order(market)
    venue.paper.process_bar(flat_bar(1))
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        reconciler = reconciler_for(venue, ledger, clock, grace_seconds=1.0)
        await reconciler.reconcile()  # books the fill: the store now knows the position
        await clock.sleep(2.0)
        report = await reconciler.reconcile()
    (cid,) = report.placed
    stop = await venue.paper.get_order(client_order_id=cid)
    assert stop.stop_price == Decimal("19600.0")  # 2% under the 20000 mark, on the tick grid
    assert stop.quantity == Decimal("0.010")


async def test_targeted_queries_per_cycle_are_capped_and_the_rest_deferred(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    venue = RecordingVenue(make_venue(perp, clock))
    now = clock.now()
    lost = [
        limit_buy(f"lg-q{number:02d}-E").transition(OrderStatus.UNKNOWN, at=now, created_at=now)
        for number in range(12)
    ]

    async def record(tx: object) -> None:
        for order in lost:
            await tx.put_order(order, OrderRole.ENTRY)  # type: ignore[attr-defined]

    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        await ledger.write(record)
        before = venue.paper.call_counts.get("get_order", 0)
        report = await reconciler_for(venue, ledger, clock, max_queries=10).reconcile()
        asked = venue.paper.call_counts.get("get_order", 0) - before
    assert asked == 10
    assert len(report.queried) == 10
    assert report.deferred_queries == ("lg-q10-E", "lg-q11-E")


async def test_after_a_bracket_the_store_and_the_venue_agree_balances_included(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    venue = RecordingVenue(make_venue(perp, clock))
    feed = BarFeed(venue.paper, clock)
    async with ledger_opener(ledger_url, clock)() as (ledger, _), asyncio.TaskGroup() as tasks:
        tasks.create_task(feed.run())
        tracker = PositionTracker(ledger, clock=clock)
        await tracker.set_balances({"USDT": START_BALANCE})
        manager = OrderExecutionManager(
            venue, ledger, rng=random.Random(5), clock=clock, tracker=tracker
        )
        await manager.execute_trade(long_proposal())
        report = await reconciler_for(venue, ledger, clock).reconcile()
        await tracker.set_balances({"USDT": START_BALANCE + 1})
        skewed = await reconciler_for(venue, ledger, clock).reconcile()
        feed.stop()
    assert report.in_agreement, report.plan.actions
    (mismatch,) = skewed.plan.of_kind(ActionKind.BALANCE_MISMATCH)
    assert mismatch.asset == "USDT"


class MarketMovesMidRead(RecordingVenue):
    """The exchange matches a bar between the reconciler's calls: `open_orders` comes after it."""

    def __init__(self, venue: PaperVenue, bar: Bar) -> None:
        super().__init__(venue)
        self._bar: Bar | None = bar

    async def open_orders(self, symbol: str | None = None) -> Sequence[Order]:
        if self._bar is not None:
            bar, self._bar = self._bar, None
            self.paper.process_bar(bar)
        return await super().open_orders(symbol)


async def test_fills_that_arrive_while_the_venue_is_read_are_booked_not_reported(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    # The stop triggers in the bar matched mid-read and fills 0.005 of 0.010.
    rules = MatchingRules(slippage_bps=Decimal(0), participation=Decimal("0.25"), fees=FEES)
    paper = make_venue(perp, clock, dataclasses.replace(GENEROUS, rules=rules))
    falling = Bar(
        PERP, T0 + timedelta(minutes=50), *_prices("19600 19610 19400 19450"), Decimal("0.02")
    )
    venue = MarketMovesMidRead(paper, falling)
    feed = BarFeed(paper, clock, [flat_bar(i) for i in range(1, 3)])
    async with ledger_opener(ledger_url, clock)() as (ledger, _), asyncio.TaskGroup() as tasks:
        tracker = PositionTracker(ledger, clock=clock)
        await tracker.set_balances({"USDT": START_BALANCE})
        manager = OrderExecutionManager(
            venue, ledger, rng=random.Random(5), clock=clock, tracker=tracker
        )
        tasks.create_task(feed.run())
        result = await manager.execute_trade(long_proposal())
        feed.stop()
        report = await Reconciler(venue, ledger, clock=clock, tracker=tracker).reconcile()
        position = await ledger.position(PERP)
        stop = await ledger.get_order(f"lg-{result.intent_id}-SL")
        alerts = await ledger.alerts()
    assert report.in_agreement, report.plan.actions
    assert report.reported == ()
    assert [alert.code for alert in alerts if alert.code is AlertCode.RECONCILIATION_REPORT] == []
    assert position is not None
    assert position.quantity == Decimal("0.005")
    assert stop is not None
    assert (stop.order.status, stop.order.filled_quantity) == (
        OrderStatus.PARTIALLY_FILLED,
        Decimal("0.005"),
    )


def _prices(text: str) -> tuple[Decimal, ...]:
    return tuple(Decimal(part) for part in text.split())


async def test_an_order_the_store_knows_is_never_adopted_and_a_given_up_one_is_cancelled(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    # The ghost: given up as not placed (its intent failed), then the request landed late.
    venue = RecordingVenue(make_venue(perp, clock))
    placed = await venue.paper.place_order(limit_buy("lg-late-E"))
    given_up = limit_buy("lg-late-E").transition(
        OrderStatus.REJECTED,
        at=clock.now(),
        created_at=clock.now(),
        reason="reconciliation: not placed: the venue did not find it",
    )
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        await ledger.write(lambda tx: tx.put_order(given_up, OrderRole.ENTRY, "intent-7"))
        report = await reconciler_for(venue, ledger, clock).reconcile()
        again = await reconciler_for(venue, ledger, clock).reconcile()
        stored = await ledger.get_order("lg-late-E")
        alerts = await ledger.alerts()
    on_venue = await venue.paper.get_order(client_order_id="lg-late-E")
    assert report.plan.of_kind(ActionKind.ADOPT) == ()
    assert report.written == ("lg-late-E",)
    # Cancelled on the venue, not taken back as a live order nobody owns.
    assert on_venue.status is OrderStatus.CANCELLED
    assert await venue.paper.open_orders() == []
    assert stored is not None
    assert (stored.role, stored.intent_id) == (OrderRole.ENTRY, "intent-7")
    assert stored.order.status is OrderStatus.CANCELLED
    assert stored.order.venue_order_id == placed.venue_order_id
    assert [(alert.level, alert.code) for alert in alerts] == [
        (AlertLevel.WARNING, AlertCode.RECONCILIATION_REPORT)
    ]
    assert "landed late" in alerts[0].message
    assert again.in_agreement, again.plan.actions


async def test_an_order_given_up_as_gone_that_shows_up_again_is_taken_back_live(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    # Not a ghost: it was known live, then not found; keeping it errs towards protection.
    venue = RecordingVenue(make_venue(perp, clock))
    placed = await venue.paper.place_order(limit_buy("lg-back-SL"))
    gone = dataclasses.replace(placed, created_at=clock.now(), updated_at=clock.now()).transition(
        OrderStatus.CANCELLED, at=clock.now()
    )
    gone = dataclasses.replace(gone, reason="reconciliation: gone: the venue no longer has it")
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        await ledger.write(lambda tx: tx.put_order(gone, OrderRole.STOP_LOSS, "intent-9"))
        report = await reconciler_for(venue, ledger, clock).reconcile()
        stored = await ledger.get_order("lg-back-SL")
    assert report.written == ("lg-back-SL",)
    assert stored is not None
    assert (stored.role, stored.intent_id) == (OrderRole.STOP_LOSS, "intent-9")
    assert stored.order.status is OrderStatus.ACCEPTED
    assert [order.client_order_id for order in await venue.paper.open_orders()] == ["lg-back-SL"]


async def test_a_ghost_whose_cancel_fails_stays_given_up_and_is_cancelled_next_cycle(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    venue = RecordingVenue(make_venue(perp, clock))
    await venue.paper.place_order(limit_buy("lg-late-SL"))
    given_up = limit_buy("lg-late-SL").transition(
        OrderStatus.REJECTED,
        at=clock.now(),
        created_at=clock.now(),
        reason="reconciliation: not placed: the venue did not find it",
    )
    fault = venue.paper.faults.add(Fault.transient("cancel_order", times=None))
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        await ledger.write(lambda tx: tx.put_order(given_up, OrderRole.STOP_LOSS, "intent-8"))
        failed = await reconciler_for(venue, ledger, clock).reconcile()
        after_failure = await ledger.get_order("lg-late-SL")
        venue.paper.faults.remove(fault)
        retried = await reconciler_for(venue, ledger, clock).reconcile()
        stored = await ledger.get_order("lg-late-SL")
    # The failed cycle wrote nothing and reported it; the store still shows it given up.
    assert failed.written == ()
    assert not failed.in_agreement
    assert [action.kind for action in failed.plan.actions] == [ActionKind.REPORT]
    assert after_failure is not None
    assert after_failure.order == given_up
    assert retried.written == ("lg-late-SL",)
    assert stored is not None
    assert stored.order.status is OrderStatus.CANCELLED
    assert (await venue.paper.get_order(client_order_id="lg-late-SL")).status is (
        OrderStatus.CANCELLED
    )


async def test_an_entry_a_live_execution_is_still_sending_is_left_to_the_manager(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    # The entry's placement takes 45 s to reach the venue, longer than the grace period:
    # meanwhile the store holds it UNKNOWN ("being sent") and the venue does not have it.
    venue = RecordingVenue(make_venue(perp, clock))
    venue.paper.faults.add(Fault.latency(45.0, "place_order", on_call=1))
    feed = BarFeed(venue.paper, clock)
    async with ledger_opener(ledger_url, clock)() as (ledger, _), asyncio.TaskGroup() as tasks:
        tracker = PositionTracker(ledger, clock=clock)
        manager = OrderExecutionManager(
            venue, ledger, rng=random.Random(5), clock=clock, tracker=tracker
        )
        reconciler = Reconciler(
            venue,
            ledger,
            clock=clock,
            config=ReconcilerConfig(grace_seconds=10.0),
            tracker=tracker,
            on_resolved=manager.recover,
            in_progress=manager.orders_in_progress,
        )
        supervisor = Supervisor(clock=clock, rng=random.Random(1))
        supervisor.add_loop("reconciler", reconciler.reconcile, interval=5.0)
        tasks.create_task(feed.run())
        async with supervisor:
            result = await manager.execute_trade(long_proposal())
        feed.stop()
        entry = await ledger.get_order(f"lg-{result.intent_id}-E")
        alerts = await ledger.alerts()
    assert result.status is ExecutionStatus.BRACKETED, result
    assert entry is not None
    assert (entry.role, entry.intent_id) == (OrderRole.ENTRY, result.intent_id)
    assert entry.order.status is OrderStatus.FILLED
    assert [alert.message for alert in alerts] == []
    assert venue.sent_twice() == []


async def test_a_desk_whose_orders_outsize_a_bar_reconciles_without_phantom_differences(
    clock: Clock, store_url: str
) -> None:
    # A 0.25 participation of the scripted bars' 100 units: every entry (about 40 units)
    # and every exit fills over several bars while the loops book, cancel and reconcile.
    empty_desk_tables(store_url)
    config = DeskConfig(
        instruments=(DESK_INSTRUMENT,),
        strategies=(StrategyConfig(symbols=(SYMBOL,)),),
        venue=VenueSettings(starting_balance=DESK_START, participation=Decimal("0.25")),
        data=DataSettings(speed=300.0),
        guard_interval=2.0,
        telemetry_interval=60.0,
    )
    desk = Desk(config, store_url=store_url, clock=clock, bars=trend(160, drift=0.003))
    await desk.start()
    venue = desk.venue
    await desk.run()
    ledger = await TradingLedger.open(store_url, upgrade=False, clock=clock)
    try:
        final = await Reconciler(venue, ledger, clock=clock).reconcile()
        alerts = await ledger.alerts()
        store_fills = await ledger.fills()
        entries = [r for r in await ledger.orders() if r.role is OrderRole.ENTRY]
    finally:
        await ledger.close()
    assert any(record.order.filled_quantity > 25 for record in entries)
    noisy = {AlertCode.RECONCILIATION_REPORT, AlertCode.ORDER_ADOPTED}
    assert [alert.message for alert in alerts if alert.code in noisy] == []
    assert final.in_agreement, final.plan.actions
    assert store_fills == list(await venue.fills())
