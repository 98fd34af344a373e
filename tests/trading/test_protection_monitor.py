"""The protection monitor hands the tracker only the venue fills it has not seen yet."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import cast

from legato.kernel.clock import Clock
from legato.trading.execution import OrderExecutionManager
from legato.trading.fills import Fill
from legato.trading.ledger import TradingLedger
from legato.trading.orders import OrderSide
from legato.trading.tracker import PositionTracker
from legato.trading.venue import Venue

from .conftest import PERP
from .execution_harness import ledger_opener
from .test_tracker import fill


class ListedFills:
    """An exchange account reduced to its fill list, which a test can rewrite at will."""

    def __init__(self) -> None:
        self.listed: list[Fill] = []

    async def fills(self, symbol: str | None = None) -> Sequence[Fill]:
        return [item for item in self.listed if symbol is None or item.symbol == symbol]


class RecordingTracker(PositionTracker):
    """A real tracker that remembers which fill ids each `apply_fills` call was handed."""

    def __init__(self, ledger: TradingLedger, clock: Clock) -> None:
        super().__init__(ledger, clock=clock)
        self.handed: list[list[str]] = []

    async def apply_fills(self, fills: Iterable[Fill]) -> list[Fill]:
        given = list(fills)
        self.handed.append([item.fill_id for item in given])
        return await super().apply_fills(given)


def manager(venue: ListedFills, ledger: TradingLedger, clock: Clock) -> OrderExecutionManager:
    return OrderExecutionManager(
        cast(Venue, venue),
        ledger,
        rng=random.Random(7),
        clock=clock,
        tracker=RecordingTracker(ledger, clock),
    )


def handed(monitor: OrderExecutionManager) -> list[list[str]]:
    return cast(RecordingTracker, monitor.tracker).handed


async def test_each_pass_hands_over_only_the_fills_listed_since_the_last(
    clock: Clock, ledger_url: str
) -> None:
    venue = ListedFills()
    first = fill(1, "a", OrderSide.BUY, "0.010", "20000", clock)
    second = fill(2, "b", OrderSide.BUY, "0.010", "20100", clock)
    third = fill(3, "c", OrderSide.SELL, "0.020", "20200", clock)
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        monitor = manager(venue, ledger, clock)
        await monitor.tracker.set_balances({"USDT": Decimal(1000)})
        await monitor.monitor_protection()  # nothing listed yet
        venue.listed += [first, second]
        await monitor.monitor_protection()
        await monitor.monitor_protection()  # nothing new
        venue.listed.append(third)
        await monitor.monitor_protection()
        position = await ledger.position(PERP)
        closed = await ledger.closed_positions(PERP)
    assert handed(monitor) == [[], ["F-1", "F-2"], [], ["F-3"]]
    assert position is None
    assert [p.realized_pnl for p in closed] == [Decimal(2) + Decimal(1)]


async def test_a_restarted_monitor_offers_every_fill_and_books_none_twice(
    clock: Clock, ledger_url: str
) -> None:
    venue = ListedFills()
    venue.listed = [
        fill(1, "a", OrderSide.BUY, "0.010", "20000", clock),
        fill(2, "b", OrderSide.SELL, "0.010", "20100", clock),
    ]
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        before = manager(venue, ledger, clock)
        await before.tracker.set_balances({"USDT": Decimal(1000)})
        await before.monitor_protection()
        balance = (await ledger.balances())["USDT"].total
        after = manager(venue, ledger, clock)  # a new process: its cursor starts at zero
        await after.monitor_protection()
        closed = await ledger.closed_positions(PERP)
        balance_after = (await ledger.balances())["USDT"].total
    assert handed(after) == [["F-1", "F-2"]]
    assert len(closed) == 1
    assert balance_after == balance  # the ledger skipped both: nothing booked twice


async def test_a_rebuilt_fill_list_is_offered_whole_so_an_inserted_fill_is_booked(
    clock: Clock, ledger_url: str
) -> None:
    venue = ListedFills()
    first = fill(1, "a", OrderSide.BUY, "0.010", "20000", clock)
    late = fill(2, "b", OrderSide.BUY, "0.010", "20050", clock)
    second = fill(3, "c", OrderSide.BUY, "0.010", "20100", clock)
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        monitor = manager(venue, ledger, clock)
        venue.listed = [first, second]
        await monitor.monitor_protection()
        # The venue now lists a fill it reported late before the last one seen.
        venue.listed = [first, late, second]
        await monitor.monitor_protection()
        # And a shorter list (an account view rebuilt from scratch) is offered whole too.
        venue.listed = [second]
        await monitor.monitor_protection()
        position = await ledger.position(PERP)
        booked = await ledger.fills(PERP)
    assert handed(monitor) == [["F-1", "F-3"], ["F-1", "F-2", "F-3"], ["F-3"]]
    assert position is not None
    assert position.quantity == Decimal("0.030")
    assert sorted(item.fill_id for item in booked) == ["F-1", "F-2", "F-3"]
