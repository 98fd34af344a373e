"""Crash tests: kill the execution manager at every point of a trade and restart it.

A trade's run is cut short at each venue call (before the request leaves, and after the
venue acted but before the answer arrived) and after each store commit. A fresh manager and
reconciler, built on the same store and venue as a restarted process would be, then recover.
Whatever the point, the invariants of DESIGN.md must hold:

- no open position is without a live stop-loss for longer than `UNPROTECTED_BOUND`;
- no client order id reaches the venue twice as a new order (checked against the request
  log and the paper venue's own count of place_order calls);
- in the end every intent is final and the store agrees with the venue.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from decimal import Decimal

import pytest

from legato.kernel.clock import Clock
from legato.trading.execution import ExecutionConfig, OrderExecutionManager
from legato.trading.instruments import Instrument
from legato.trading.ledger import TradingLedger
from legato.trading.orders import OrderStatus, OrderType
from legato.trading.reconciler import Reconciler, ReconcilerConfig

from .execution_harness import (
    BarFeed,
    RecordingVenue,
    SimulatedCrash,
    ledger_opener,
    long_proposal,
    make_venue,
)

# Reconciler grace 10 s and cycles every 2 s: a stop-loss lost in a crash is given up after
# the grace plus a few cycles, and the intent waiting on it re-protects the position at once.
# The worst crash point measured leaves the position bare for about 9 s.
GRACE = 10.0
CYCLE = 2.0
UNPROTECTED_BOUND = GRACE + 5 * CYCLE
# Venue calls and store commits of one undisturbed bracket (checked by the first test):
# the intent with its entry "being sent"; the entry placed; the position with the entry's
# fill and its stop-loss "being sent"; the stop-loss placed (held for the next write) with
# the move to the take-profit stage and the take-profit's "being sent" mark; the take-profit
# placed with the move to BRACKETED. Each answer only records what the venue already did
# and lands before the next order call, so every "being sent" mark still precedes its call:
# a crash in between leaves the order UNKNOWN in the store, which recovery resolves by a
# query (the crash points below include those).
VENUE_CALLS = 9
STORE_WRITES = 5


@dataclass
class Watch:
    """How long the venue's position has been without a covering live stop-loss."""

    bare_since: float | None = None
    longest: float = 0.0


async def watch_protection(venue: RecordingVenue, clock: Clock, watch: Watch) -> None:
    """Every virtual second, measure the venue's protection (directly, not via the client)."""
    paper = venue.paper
    while True:
        positions = await paper.positions()
        stops = [
            order
            for order in await paper.open_orders()
            if order.type is OrderType.STOP and order.status is OrderStatus.ACCEPTED
        ]
        now = clock.monotonic()
        bare = any(
            sum(
                (
                    stop.remaining_quantity
                    for stop in stops
                    if stop.symbol == position.symbol and stop.side is position.side.closing_side
                ),
                Decimal(0),
            )
            < position.quantity
            for position in positions
        )
        if bare:
            watch.bare_since = now if watch.bare_since is None else watch.bare_since
            watch.longest = max(watch.longest, now - watch.bare_since)
        else:
            watch.bare_since = None
        await clock.sleep(1.0)


def config() -> ExecutionConfig:
    return ExecutionConfig(confirm_queries=2, confirm_interval=1.0)


async def restart_and_settle(
    venue: RecordingVenue, ledger: TradingLedger, clock: Clock
) -> tuple[Reconciler, OrderExecutionManager]:
    """A fresh process on the same store and venue: recover, then run loops until settled."""
    manager = OrderExecutionManager(
        venue, ledger, rng=random.Random(99), clock=clock, config=config()
    )
    reconciler = Reconciler(
        venue,
        ledger,
        clock=clock,
        config=ReconcilerConfig(grace_seconds=GRACE),
        on_resolved=manager.recover,
    )
    await reconciler.reconcile()
    await manager.recover()
    for _ in range(200):
        await manager.monitor_protection()
        report = await reconciler.reconcile()
        await manager.recover()
        unfinished = await ledger.intents(unfinished_only=True)
        if not unfinished and report.in_agreement:
            return reconciler, manager
        await clock.sleep(CYCLE)
    raise AssertionError(f"did not settle: {unfinished}, {report.plan.actions}")


async def crash_once(
    perp: Instrument,
    clock: Clock,
    url: str,
    *,
    venue_call: int | None = None,
    after: bool = False,
    store_write: int | None = None,
) -> tuple[RecordingVenue, Watch, bool]:
    venue = RecordingVenue(make_venue(perp, clock))
    feed = BarFeed(venue.paper, clock, interval=2.0)
    watch = Watch()
    crashed = False
    async with ledger_opener(url, clock)() as (ledger, database), asyncio.TaskGroup() as tasks:
        feeding = tasks.create_task(feed.run())
        watching = tasks.create_task(watch_protection(venue, clock, watch))
        first = OrderExecutionManager(
            venue, ledger, rng=random.Random(1), clock=clock, config=config()
        )
        venue.crash_at_call(venue_call, after=after)
        database.crash_at_write(store_write)
        try:
            await first.execute_trade(long_proposal())
        except SimulatedCrash:
            crashed = True
        venue.crash_at_call(None)
        database.crash_at_write(None)
        del first  # the process is gone: nothing of it survives but the store and the venue
        await restart_and_settle(venue, ledger, clock)
        feed.stop()
        watching.cancel()
        await feeding
    return venue, watch, crashed


async def test_an_undisturbed_bracket_makes_the_calls_the_crash_points_enumerate(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    venue = RecordingVenue(make_venue(perp, clock))
    feed = BarFeed(venue.paper, clock, interval=2.0)
    async with ledger_opener(ledger_url, clock)() as (ledger, database), asyncio.TaskGroup() as t:
        feeding = t.create_task(feed.run())
        manager = OrderExecutionManager(
            venue, ledger, rng=random.Random(1), clock=clock, config=config()
        )
        result = await manager.execute_trade(long_proposal())
        feed.stop()
        await feeding
    assert result.success
    assert venue.calls == VENUE_CALLS
    assert database.writes == STORE_WRITES


@pytest.mark.parametrize("after", [False, True], ids=["before-call", "after-call"])
@pytest.mark.parametrize("call", range(1, VENUE_CALLS + 1))
async def test_a_crash_at_any_venue_call_leaves_no_position_unprotected_and_no_id_resent(
    perp: Instrument, clock: Clock, ledger_url: str, call: int, after: bool
) -> None:
    venue, watch, crashed = await crash_once(perp, clock, ledger_url, venue_call=call, after=after)
    assert crashed
    assert watch.longest <= UNPROTECTED_BOUND
    assert venue.sent_twice() == []
    assert venue.paper.call_counts.get("place_order", 0) == len(venue.placements)


@pytest.mark.parametrize("write", range(1, STORE_WRITES + 1))
async def test_a_crash_after_any_store_commit_leaves_no_position_unprotected_and_no_id_resent(
    perp: Instrument, clock: Clock, ledger_url: str, write: int
) -> None:
    venue, watch, crashed = await crash_once(perp, clock, ledger_url, store_write=write)
    assert crashed
    assert watch.longest <= UNPROTECTED_BOUND
    assert venue.sent_twice() == []
    assert venue.paper.call_counts.get("place_order", 0) == len(venue.placements)
