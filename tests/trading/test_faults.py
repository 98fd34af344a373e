from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal

import pytest

from legato.kernel.clock import Clock
from legato.kernel.errors import (
    DeadlineExceeded,
    RateLimitedError,
    TransientError,
    UnknownOutcomeError,
    ValidationError,
)
from legato.trading.errors import OrderNotFound, OrderRejected
from legato.trading.faults import Fault, FaultKind, FaultPlan
from legato.trading.instruments import Instrument
from legato.trading.orders import Order, OrderSide, OrderStatus, OrderType
from legato.trading.paper_venue import PaperVenue

from .conftest import PERP, BarMaker


def venue_for(perp: Instrument, clock: Clock, bar: BarMaker, seed: int = 0) -> PaperVenue:
    venue = PaperVenue(
        [perp],
        balances={"USDT": Decimal(100_000)},
        clock=clock,
        faults=FaultPlan(rng=random.Random(seed)),
    )
    venue.process_bar(bar(0, "100", "101", "99", "100"))
    return venue


def limit(cid: str) -> Order:
    return Order(cid, PERP, OrderSide.BUY, OrderType.LIMIT, Decimal(1), price=Decimal(90))


async def test_transient_fault_fails_without_effect_then_passes(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = venue_for(perp, clock, bar)
    venue.faults.add(Fault.transient("place_order"))
    with pytest.raises(TransientError):
        await venue.place_order(limit("a"))
    assert await venue.open_orders() == []
    assert (await venue.place_order(limit("a"))).status is OrderStatus.ACCEPTED


async def test_rate_limited_fault_carries_retry_after(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = venue_for(perp, clock, bar)
    venue.faults.add(Fault.rate_limited("place_order", retry_after=3.0))
    with pytest.raises(RateLimitedError) as caught:
        await venue.place_order(limit("a"))
    assert caught.value.retry_after == 3.0
    assert await venue.open_orders() == []


async def test_timeout_after_place_leaves_the_order_placed_and_reports_unknown_outcome(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = venue_for(perp, clock, bar)
    venue.faults.add(Fault.timeout_after_place(seconds=10.0))
    start = clock.monotonic()
    with pytest.raises(UnknownOutcomeError) as caught:
        await venue.place_order(limit("a"))
    assert caught.value.idempotency_key == "a"
    assert clock.monotonic() - start == pytest.approx(10.0)
    assert (await venue.get_order(client_order_id="a")).status is OrderStatus.ACCEPTED


async def test_timeout_before_place_reports_unknown_outcome_but_nothing_exists(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = venue_for(perp, clock, bar)
    venue.faults.add(Fault.timeout_before_place(seconds=5.0))
    with pytest.raises(UnknownOutcomeError) as caught:
        await venue.place_order(limit("a"))
    assert caught.value.idempotency_key == "a"
    with pytest.raises(OrderNotFound):
        await venue.get_order(client_order_id="a")


async def test_timeout_after_cancel_cancels_but_reports_unknown_outcome(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = venue_for(perp, clock, bar)
    await venue.place_order(limit("a"))
    venue.faults.add(Fault.timeout_after_place("cancel_order"))
    with pytest.raises(UnknownOutcomeError):
        await venue.cancel_order(client_order_id="a")
    assert (await venue.get_order(client_order_id="a")).status is OrderStatus.CANCELLED


async def test_a_timeout_on_a_query_is_a_deadline_not_an_unknown_outcome(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = venue_for(perp, clock, bar)
    venue.faults.add(Fault.timeout_before_place("open_orders", seconds=2.0))
    with pytest.raises(DeadlineExceeded):
        await venue.open_orders()


async def test_invisible_order_is_live_but_unseen_for_the_given_seconds(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = venue_for(perp, clock, bar)
    venue.faults.add(Fault.invisible(seconds=30.0))
    placed = await venue.place_order(limit("ghost"))
    assert placed.status is OrderStatus.ACCEPTED
    with pytest.raises(OrderNotFound):
        await venue.get_order(client_order_id="ghost")
    assert await venue.open_orders() == []
    # It is live meanwhile: it fills.
    (fill,) = venue.process_bar(bar(1, "95", "96", "89", "92"))
    assert fill.client_order_id == "ghost"
    await clock.sleep(30.0)
    assert (await venue.get_order(client_order_id="ghost")).status is OrderStatus.FILLED


async def test_reject_fault_refuses_the_order_with_its_reason(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = venue_for(perp, clock, bar)
    venue.faults.add(Fault.reject(reason="margin system offline"))
    with pytest.raises(OrderRejected) as caught:
        await venue.place_order(limit("a"))
    assert caught.value.reason == "margin system offline"
    with pytest.raises(OrderNotFound):
        await venue.get_order(client_order_id="a")


async def test_latency_fault_adds_time_and_combines_with_another_fault(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = venue_for(perp, clock, bar)
    venue.faults.add(Fault.latency(2.5, "open_orders", times=None))
    venue.faults.add(Fault.transient("open_orders"))
    start = clock.monotonic()
    with pytest.raises(TransientError):
        await venue.open_orders()
    assert clock.monotonic() - start == pytest.approx(2.5)
    await venue.open_orders()
    assert clock.monotonic() - start == pytest.approx(5.0)


async def test_on_call_fires_on_exactly_the_nth_call_of_the_method(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = venue_for(perp, clock, bar)
    venue.faults.add(Fault.transient("place_order", on_call=3))
    await venue.place_order(limit("a"))
    await venue.place_order(limit("b"))
    with pytest.raises(TransientError):
        await venue.place_order(limit("c"))
    await venue.place_order(limit("c"))
    assert venue.call_counts["place_order"] == 4


async def test_time_window_bounds_a_fault_in_virtual_time(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = venue_for(perp, clock, bar)
    begin = clock.now() + timedelta(seconds=60)
    venue.faults.add(
        Fault.transient("open_orders", times=None, start=begin, end=begin + timedelta(seconds=60))
    )
    await venue.open_orders()
    await clock.sleep(60)
    with pytest.raises(TransientError):
        await venue.open_orders()
    await clock.sleep(60)
    await venue.open_orders()


async def test_times_limits_how_often_a_fault_fires(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = venue_for(perp, clock, bar)
    venue.faults.add(Fault.transient("balances", times=2))
    for _ in range(2):
        with pytest.raises(TransientError):
            await venue.balances()
    await venue.balances()
    assert venue.faults.active == ()


async def outcomes(perp: Instrument, clock: Clock, bar: BarMaker, seed: int) -> list[bool]:
    venue = venue_for(perp, clock, bar, seed)
    venue.faults.add(Fault.transient("positions", probability=0.3, times=None))
    results = []
    for _ in range(40):
        try:
            await venue.positions()
            results.append(True)
        except TransientError:
            results.append(False)
    return results


async def test_random_faults_replay_exactly_with_the_same_seed(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    first = await outcomes(perp, clock, bar, seed=42)
    again = await outcomes(perp, clock, bar, seed=42)
    other = await outcomes(perp, clock, bar, seed=43)
    assert first == again
    assert first != other
    assert 0 < first.count(False) < 40


async def test_every_injected_fault_is_journaled(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = venue_for(perp, clock, bar)
    fault_id = venue.faults.add(Fault.timeout_after_place())
    with pytest.raises(UnknownOutcomeError):
        await venue.place_order(limit("a"))
    (record,) = venue.faults.history
    assert (record.method, record.kind, record.fault_id, record.client_order_id) == (
        "place_order",
        FaultKind.TIMEOUT_AFTER_EFFECT,
        fault_id,
        "a",
    )
    assert record.call_number == 1


def test_remove_and_clear_disarm_faults() -> None:
    plan = FaultPlan()
    first = plan.add(Fault.transient())
    plan.add(Fault.latency(1.0))
    plan.remove(first)
    assert [fault.kind for fault in plan.active] == [FaultKind.LATENCY]
    plan.clear()
    assert plan.active == ()


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Fault.transient("place_orders"), "method"),
        (lambda: Fault.reject("get_order"), "method"),
        (lambda: Fault.transient(on_call=2), "method"),
        (lambda: Fault.transient("get_order", on_call=0), "on_call"),
        (lambda: Fault.transient(probability=0.0), "probability"),
        (lambda: Fault.transient(times=0), "times"),
        (lambda: Fault.latency(-1.0), "seconds"),
    ],
)
def test_bad_fault_definitions_name_the_field(build: object, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        build()  # type: ignore[operator]
    assert caught.value.field == field
