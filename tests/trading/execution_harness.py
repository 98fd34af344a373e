"""Test support for the execution, reconciler and crash tests: stand-ins for the outside.

Nothing here replaces Legato code. `FlakyDatabase` is the database failing (a fault in an
outside system, wrapped around the real backend); `RecordingVenue` is the exchange with a
request log and a way to "kill the process" at a chosen call; `BarFeed` is the market
moving. The code under test runs unmodified on top of them.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import psycopg

from legato.kernel.clock import Clock
from legato.kernel.ratelimit import Budget
from legato.store.database import Database, Row, Transaction
from legato.store.errors import StoreUnavailableError
from legato.trading.balances import Balance
from legato.trading.fees import FeeSchedule
from legato.trading.fills import Fill
from legato.trading.instruments import Instrument
from legato.trading.ledger import TradingLedger
from legato.trading.market_data import Bar
from legato.trading.matching import MatchingRules
from legato.trading.orders import Order, OrderSide
from legato.trading.paper_venue import PaperVenue, PaperVenueConfig
from legato.trading.positions import Position
from legato.trading.proposals import TradeProposal

from .conftest import PERP, T0

TRADING_TABLES = (
    "legato_trading_intents, legato_trading_orders, legato_trading_fills, "
    "legato_trading_positions, legato_trading_balances, legato_trading_alerts, "
    "legato_trading_equity, legato_trading_paper_venues"
)
FEES = FeeSchedule(maker_rate=Decimal("0.0002"), taker_rate=Decimal("0.0004"))
EXACT_RULES = MatchingRules(slippage_bps=Decimal(0), participation=Decimal(1), fees=FEES)
GENEROUS = PaperVenueConfig(
    rules=EXACT_RULES,
    order_budget=Budget(limit=1_000, per=1.0),
    general_budget=Budget(limit=1_000, per=1.0),
)
START_BALANCE = Decimal(100_000)


def empty_trading_tables(url: str) -> None:
    """Delete every trading ledger row (tests/conftest.py empties only the task tables)."""
    if url.startswith("postgresql"):
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(f"TRUNCATE {TRADING_TABLES} RESTART IDENTITY")


class SimulatedCrash(BaseException):
    """The process dies here: nothing below this point runs, nothing catches it."""


class _FlakyTransaction:
    def __init__(self, inner: Transaction) -> None:
        self._inner = inner

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await self._inner.fetch(sql, params)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        await self._inner.execute(sql, params)


class FlakyDatabase:
    """A real database that an outage can hit: the next N write transactions fail.

    `fail_writes(n)` makes the next `n` write transactions raise StoreUnavailableError
    before touching the database (as a dropped connection would). `crash_at_write(n)` makes
    the n-th write transaction from now die (SimulatedCrash) after it committed.
    """

    def __init__(self, inner: Database) -> None:
        self._inner = inner
        self._failures = 0
        self.failed = 0
        self.writes = 0
        self._crash_at: int | None = None
        self._after_commit: Callable[[], Awaitable[None]] | None = None

    @property
    def dialect(self) -> str:
        return self._inner.dialect

    def fail_writes(self, times: int) -> None:
        self._failures = times

    def crash_at_write(self, number: int | None) -> None:
        self._crash_at = None if number is None else self.writes + number

    def after_next_commit(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run `hook` once, after the next write commits and before its caller goes on.

        The commit is visible to everyone while the writer still waits for the answer: what
        another task may do in that moment when the acknowledgement is slow to arrive.
        """
        self._after_commit = hook

    @asynccontextmanager
    async def transaction(
        self, *, write: bool = True, durable: bool = True
    ) -> AsyncIterator[_FlakyTransaction]:
        if write and self._failures > 0:
            self._failures -= 1
            self.failed += 1
            raise StoreUnavailableError("injected outage: the database is unreachable")
        async with self._inner.transaction(write=write, durable=durable) as tx:
            yield _FlakyTransaction(tx)
        if write:
            self.writes += 1
            hook, self._after_commit = self._after_commit, None
            if hook is not None:
                await hook()
            if self._crash_at is not None and self.writes >= self._crash_at:
                self._crash_at = None
                raise SimulatedCrash(f"process killed after store write {self.writes}")

    async def run(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await self._inner.run(sql, params)

    async def idle(self) -> None:
        await self._inner.idle()

    def notifications(self, channel: str) -> AsyncIterator[str]:
        return self._inner.notifications(channel)

    async def notify(self, channel: str, payload: str) -> None:
        await self._inner.notify(channel, payload)

    async def close(self) -> None:
        await self._inner.close()


@dataclass
class Placement:
    """One place_order request that reached the venue: its client id and what came back."""

    client_order_id: str
    outcome: str


class RecordingVenue:
    """The paper venue with a request log and a kill switch for the calling process.

    `placements` lists every place_order that reached the venue, with its outcome.
    `crash_at_call(n, after=...)`: the n-th venue call from now kills the caller, before it
    reaches the venue or after the venue acted but before the answer arrives.
    `after_place` runs after every successful placement (to start an outage there).
    """

    def __init__(self, venue: PaperVenue) -> None:
        self.paper = venue
        self.placements: list[Placement] = []
        self.calls = 0
        self._crash_at: int | None = None
        self._crash_after = False
        self.after_place: Callable[[Order], None] | None = None

    @property
    def name(self) -> str:
        return self.paper.name

    def instrument(self, symbol: str) -> Instrument:
        return self.paper.instrument(symbol)

    def crash_at_call(self, number: int | None, *, after: bool = False) -> None:
        self._crash_at = None if number is None else self.calls + number
        self._crash_after = after

    def _before(self) -> bool:
        self.calls += 1
        if self._crash_at is not None and self.calls >= self._crash_at:
            self._crash_at = None
            if not self._crash_after:
                raise SimulatedCrash(f"process killed before venue call {self.calls}")
            return True
        return False

    async def place_order(self, order: Order) -> Order:
        crash_after = self._before()
        try:
            placed = await self.paper.place_order(order)
        except Exception as error:
            self.placements.append(Placement(order.client_order_id, type(error).__name__))
            if crash_after:
                raise SimulatedCrash("process killed during place_order") from error
            raise
        self.placements.append(Placement(order.client_order_id, "accepted"))
        if crash_after:
            raise SimulatedCrash("process killed after place_order took effect")
        if self.after_place is not None:
            self.after_place(placed)
        return placed

    async def cancel_order(
        self, *, client_order_id: str | None = None, venue_order_id: str | None = None
    ) -> Order:
        crash_after = self._before()
        result = await self.paper.cancel_order(
            client_order_id=client_order_id, venue_order_id=venue_order_id
        )
        if crash_after:
            raise SimulatedCrash("process killed after cancel_order took effect")
        return result

    async def get_order(
        self, *, client_order_id: str | None = None, venue_order_id: str | None = None
    ) -> Order:
        crash_after = self._before()
        result = await self.paper.get_order(
            client_order_id=client_order_id, venue_order_id=venue_order_id
        )
        if crash_after:
            raise SimulatedCrash("process killed after get_order")
        return result

    async def open_orders(self, symbol: str | None = None) -> Sequence[Order]:
        crash_after = self._before()
        result = await self.paper.open_orders(symbol)
        if crash_after:
            raise SimulatedCrash("process killed before the answer arrived")
        return result

    async def fills(self, symbol: str | None = None) -> Sequence[Fill]:
        crash_after = self._before()
        result = await self.paper.fills(symbol)
        if crash_after:
            raise SimulatedCrash("process killed before the answer arrived")
        return result

    async def positions(self) -> Sequence[Position]:
        crash_after = self._before()
        result = await self.paper.positions()
        if crash_after:
            raise SimulatedCrash("process killed before the answer arrived")
        return result

    async def balances(self) -> Mapping[str, Balance]:
        crash_after = self._before()
        result = await self.paper.balances()
        if crash_after:
            raise SimulatedCrash("process killed before the answer arrived")
        return result

    def subscribe(self, symbol: str | None = None) -> AsyncIterator[Bar]:
        return self.paper.subscribe(symbol)

    def sent_twice(self) -> list[str]:
        """Client ids that reached the venue more than once as a new order."""
        seen: dict[str, int] = {}
        for placement in self.placements:
            seen[placement.client_order_id] = seen.get(placement.client_order_id, 0) + 1
        return sorted(cid for cid, count in seen.items() if count > 1)


def flat_bar(index: int, price: str = "20000", spread: str = "10", symbol: str = PERP) -> Bar:
    """A quiet bar around `price` that touches no stop or take-profit of the test brackets."""
    middle = Decimal(price)
    half = Decimal(spread)
    return Bar(
        symbol=symbol,
        timestamp=T0 + timedelta(minutes=5 * index),
        open=middle,
        high=middle + half,
        low=middle - half,
        close=middle,
        volume=Decimal(1000),
    )


def bar_at(index: int, open_: str, high: str, low: str, close: str, symbol: str = PERP) -> Bar:
    """A scripted bar, prices as exact strings."""
    return Bar(
        symbol=symbol,
        timestamp=T0 + timedelta(minutes=5 * index),
        open=Decimal(open_),
        high=Decimal(high),
        low=Decimal(low),
        close=Decimal(close),
        volume=Decimal(1000),
    )


class BarFeed:
    """The market: processes one bar every `interval` virtual seconds on the venue.

    Bars come from `bars` first, then quiet bars at the last close forever (until stopped).
    `run()` is meant for a TaskGroup the test owns; `stop()` ends it.
    """

    def __init__(
        self, venue: PaperVenue, clock: Clock, bars: Iterable[Bar] = (), interval: float = 2.0
    ) -> None:
        self._venue = venue
        self._clock = clock
        self._script = list(bars)
        self._interval = interval
        self._stopped = asyncio.Event()
        self.processed = 0
        self.on_bar: Callable[[Bar], None] | None = None

    def stop(self) -> None:
        self._stopped.set()

    def push(self, *bars: Bar) -> None:
        """Queue scripted bars to come next."""
        self._script.extend(bars)

    def step(self) -> Bar:
        """Process the next bar now."""
        if self._script:
            bar = self._script.pop(0)
        else:
            last = self._venue.last_price(PERP) or Decimal(20000)
            bar = flat_bar(self.processed + 1000, str(last))
        self._venue.process_bar(bar)
        self.processed += 1
        if self.on_bar is not None:
            self.on_bar(bar)
        return bar

    async def run(self) -> None:
        while not self._stopped.is_set():
            try:
                async with asyncio.timeout(self._interval):
                    await self._stopped.wait()
            except TimeoutError:
                self.step()


def make_venue(
    instrument: Instrument, clock: Clock, config: PaperVenueConfig = GENEROUS, *, seed: int = 1
) -> PaperVenue:
    """A paper venue with 100,000 USDT, one quiet bar already seen, faults seeded."""
    from legato.trading.faults import FaultPlan

    venue = PaperVenue(
        [instrument],
        balances={"USDT": START_BALANCE},
        config=config,
        clock=clock,
        faults=FaultPlan(random.Random(seed)),
    )
    venue.process_bar(flat_bar(0))
    return venue


def long_proposal(
    quantity: str = "0.010",
    stop_loss: str = "19500",
    take_profit: str | None = "21000",
    entry: str = "20000",
) -> TradeProposal:
    """A market long on the test perpetual, at leverage 5."""
    return TradeProposal(
        symbol=PERP,
        side=OrderSide.BUY,
        quantity=Decimal(quantity),
        entry_price=Decimal(entry),
        stop_loss=Decimal(stop_loss),
        take_profit=None if take_profit is None else Decimal(take_profit),
        leverage=Decimal(5),
    )


def ledger_opener(
    url: str, clock: Clock
) -> Callable[[], AbstractAsyncContextManager[tuple[TradingLedger, FlakyDatabase]]]:
    """`async with open_() as (ledger, database):` a ledger on a flaky wrapper of the store."""

    @asynccontextmanager
    async def opened() -> AsyncIterator[tuple[TradingLedger, FlakyDatabase]]:
        plain = await TradingLedger.open(url, upgrade=False, clock=clock)
        database = FlakyDatabase(plain.database)
        try:
            yield TradingLedger(database), database
        finally:
            await plain.close()

    return opened
