"""The trading ledger on both store backends: exact round trips, atomic writes, pending writes."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, closing
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from legato.kernel.clock import Clock
from legato.kernel.errors import ValidationError
from legato.store.database import Database, Row, Transaction
from legato.store.errors import StoreUnavailableError
from legato.trading.alerts import Alert, AlertCode, AlertLevel
from legato.trading.backtest.store import fresh_store
from legato.trading.fills import Fill, Liquidity
from legato.trading.ledger import (
    EquityMarks,
    ExecutionIntent,
    IntentStage,
    LedgerOrder,
    LedgerTransaction,
    OrderRole,
    PendingWrites,
    TradingLedger,
)
from legato.trading.orders import Order, OrderSide, OrderStatus, OrderType
from legato.trading.positions import Position, PositionSide

from .conftest import PERP
from .execution_harness import ledger_opener, long_proposal


def entry_intent(
    at: datetime,
    intent_id: str = "abc",
    *,
    take_profit: bool = True,
    outcome: dict[str, Any] | None = None,
) -> ExecutionIntent:
    """A long bracket's intent at its entry stage, with the desk's order ids."""
    return ExecutionIntent(
        intent_id=intent_id,
        proposal=long_proposal(),
        stage=IntentStage.ENTRY,
        entry_order_id=f"lg-{intent_id}-E",
        stop_loss_order_id=f"lg-{intent_id}-SL",
        take_profit_order_id=f"lg-{intent_id}-TP" if take_profit else None,
        created_at=at,
        updated_at=at,
        outcome=outcome if outcome is not None else {},
    )


def entry_fill(order_id: str, at: datetime) -> Fill:
    """The taker fill of a 0.010 long entry at 20000.1."""
    return Fill(
        "F-1",
        order_id,
        "V-1",
        PERP,
        OrderSide.BUY,
        Decimal("0.010"),
        Decimal("20000.1"),
        Decimal("0.080004"),
        "USDT",
        Liquidity.TAKER,
        at,
    )


def stop_order(clock: Clock, cid: str = "lg-1-SL") -> Order:
    now = clock.now()
    return Order(
        cid,
        PERP,
        OrderSide.SELL,
        OrderType.STOP,
        Decimal("0.010"),
        stop_price=Decimal("19500.1"),
        reduce_only=True,
        leverage=Decimal(5),
        parent_order_id="lg-1-E",
        bracket_id="1",
        created_at=now,
        updated_at=now,
    )


async def test_orders_round_trip_exactly_with_role_and_intent(
    clock: Clock, ledger_url: str
) -> None:
    order = stop_order(clock).transition(
        OrderStatus.ACCEPTED, at=clock.now() + timedelta(seconds=1), venue_order_id="V-1"
    )
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        await ledger.write(lambda tx: tx.put_order(order, OrderRole.STOP_LOSS, "1"))
        stored = await ledger.get_order("lg-1-SL")
        open_orders = await ledger.orders(open_only=True, symbol=PERP)
    assert stored is not None
    assert stored.order == order
    assert (stored.role, stored.intent_id) == (OrderRole.STOP_LOSS, "1")
    assert [record.order.client_order_id for record in open_orders] == ["lg-1-SL"]


async def test_an_intent_round_trips_and_a_second_with_the_same_id_is_refused(
    clock: Clock, ledger_url: str
) -> None:
    now = clock.now()
    intent = entry_intent(now, outcome={"warnings": ["one"]})
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        await ledger.write(lambda tx: tx.insert_intent(intent))
        with pytest.raises(ValidationError) as duplicate:
            await ledger.write(lambda tx: tx.insert_intent(intent))
        stored = await ledger.get_intent("abc")
        await ledger.write(lambda tx: tx.put_intent(intent.advance(IntentStage.BRACKETED, now)))
        unfinished = await ledger.intents(unfinished_only=True)
    assert duplicate.value.field == "intent_id"
    assert stored == intent
    assert unfinished == []


async def test_a_failing_write_leaves_none_of_its_records(clock: Clock, ledger_url: str) -> None:
    async def half_then_fail(tx: LedgerTransaction) -> None:
        await tx.put_order(stop_order(clock), OrderRole.STOP_LOSS)
        raise ValidationError("stage", "bogus", "a failure half-way through the write")

    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        with pytest.raises(ValidationError):
            await ledger.write(half_then_fail)
        stored = await ledger.get_order("lg-1-SL")
    assert stored is None


async def test_fills_positions_balances_and_alerts_round_trip(
    clock: Clock, ledger_url: str
) -> None:
    fill = entry_fill("lg-1-E", clock.now())
    position = Position.open(PERP, PositionSide.LONG, Decimal("0.010"), Decimal("20000.1"))
    alert = Alert(AlertLevel.HIGH, AlertCode.ORDER_UNKNOWN, "lost", clock.now(), symbol=PERP)

    async def write(tx: LedgerTransaction) -> tuple[bool, bool]:
        first = await tx.add_fill(fill)
        again = await tx.add_fill(fill)
        await tx.put_position(position)
        await tx.set_balance("USDT", Decimal("99999.919996"), clock.now())
        await tx.add_alert(alert)
        return first, again

    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        added = await ledger.write(write)
        fills = await ledger.fills(PERP)
        stored = await ledger.position(PERP)
        balances = await ledger.balances()
        alerts = await ledger.alerts(AlertLevel.HIGH)
    assert added == (True, False)
    assert fills == [fill]
    assert stored == position
    assert balances["USDT"].total == Decimal("99999.919996")
    assert alerts == [alert]


async def test_pending_writes_queue_in_order_while_the_store_is_down_and_land_later(
    clock: Clock, ledger_url: str
) -> None:
    placed = stop_order(clock).transition(OrderStatus.ACCEPTED, at=clock.now())
    filled = placed.with_fill(Decimal("0.010"), Decimal("19500"), at=clock.now())
    async with ledger_opener(ledger_url, clock)() as (ledger, database):
        pending = PendingWrites(ledger, clock=clock)
        database.fail_writes(3)
        first = await pending.write(
            "accepted", lambda tx: tx.put_order(placed, OrderRole.STOP_LOSS)
        )
        second = await pending.write("filled", lambda tx: tx.put_order(filled, OrderRole.STOP_LOSS))
        queued = pending.pending
        with pytest.raises(StoreUnavailableError):
            await pending.flush()
        landed = await pending.flush()
        stored = await ledger.get_order(placed.client_order_id)
    assert (first, second) == (False, False)
    assert queued == ("accepted", "filled")
    assert landed == 2
    assert stored is not None
    assert stored.order.status is OrderStatus.FILLED  # the later write landed last


class _CountingTransaction:
    def __init__(self, inner: Transaction, statements: list[tuple[str, int]]) -> None:
        self._inner = inner
        self._statements = statements

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        rows = await self._inner.fetch(sql, params)
        self._statements.append((sql, len(rows)))
        return rows

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        await self._inner.execute(sql, params)
        self._statements.append((sql, 0))

    async def fetch_many(
        self, statements: Sequence[tuple[str, Sequence[Any]]], *, commit: bool = False
    ) -> list[list[Row]]:
        results = await self._inner.fetch_many(statements, commit=commit)
        for (sql, _), rows in zip(statements, results, strict=True):
            self._statements.append((sql, len(rows)))
        return results


class CountingDatabase:
    """The real store, counting the transactions opened and every statement with its rows."""

    def __init__(self, inner: Database) -> None:
        self._inner = inner
        self.transactions = 0
        self.alone = 0  # statements run on their own, outside any transaction
        self.statements: list[tuple[str, int]] = []  # (sql, rows returned), in or out of one

    @property
    def dialect(self) -> str:
        return self._inner.dialect

    @asynccontextmanager
    async def transaction(
        self, *, write: bool = True, durable: bool = True
    ) -> AsyncIterator[Transaction]:
        self.transactions += 1
        async with self._inner.transaction(write=write, durable=durable) as tx:
            yield _CountingTransaction(tx, self.statements)

    async def run(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        rows = await self._inner.run(sql, params)
        self.statements.append((sql, len(rows)))
        self.alone += 1
        return rows

    async def idle(self) -> None:
        await self._inner.idle()

    def notifications(self, channel: str) -> AsyncIterator[str]:
        return self._inner.notifications(channel)

    async def notify(self, channel: str, payload: str) -> None:
        await self._inner.notify(channel, payload)

    async def close(self) -> None:
        await self._inner.close()


@asynccontextmanager
async def counted_ledger(
    ledger_url: str, clock: Clock
) -> AsyncIterator[tuple[TradingLedger, CountingDatabase]]:
    """A ledger on the store at `ledger_url` that counts its statements; closed after."""
    plain = await TradingLedger.open(ledger_url, upgrade=False, clock=clock)
    counting = CountingDatabase(plain.database)
    ledger = TradingLedger(counting)
    try:
        yield ledger, counting
    finally:
        await ledger.close()


def closed_position(clock: Clock, number: int, exit_price: str, symbol: str = PERP) -> Position:
    """A long of 0.010 from 20000, closed at `exit_price` (4 bps fee) `number` minutes in."""
    at = clock.now() + timedelta(minutes=number)
    opened = Position.open(symbol, PositionSide.LONG, Decimal("0.010"), Decimal(20000), at=at)
    price = Decimal(exit_price)
    return opened.reduce(Decimal("0.010"), price, price * Decimal("0.000004"), at)


async def test_single_statement_reads_run_as_one_statement_without_a_transaction(
    clock: Clock, ledger_url: str
) -> None:
    order = stop_order(clock).transition(OrderStatus.ACCEPTED, at=clock.now())
    intent = entry_intent(clock.now(), "1", take_profit=False)
    position = Position.open(PERP, PositionSide.LONG, Decimal("0.010"), Decimal("20000.1"))
    async with counted_ledger(ledger_url, clock) as (ledger, counting):

        async def write(tx: LedgerTransaction) -> None:
            await tx.put_intent(intent)
            await tx.put_order(order, OrderRole.STOP_LOSS, "1")
            await tx.put_position(position)
            await tx.set_balance("USDT", Decimal(1000), clock.now())

        await ledger.write(write)
        assert (counting.transactions, counting.alone) == (1, 0)
        read = (
            await ledger.get_intent("1"),
            await ledger.get_order("lg-1-SL"),
            await ledger.position(PERP),
            await ledger.open_positions(),
            await ledger.orders(open_only=True),
            await ledger.intents(unfinished_only=True),
            await ledger.known_fill_ids(["F-1"]),
            await ledger.balances(),
            await ledger.closed_positions(newest_first=True, limit=3),
            await ledger.alert_counts(),
        )
    assert counting.transactions == 1  # only the write: no read opened one
    assert counting.alone == len(read)  # one statement each
    stored_intent, stored_order, stored_position, open_positions, orders, unfinished = read[:6]
    assert stored_intent == intent
    assert stored_order is not None
    assert stored_order.order == order
    assert stored_position == position
    assert open_positions == [position]
    assert [record.order for record in orders] == [order]
    assert unfinished == [intent]
    known, balances = read[6], read[7]
    assert known == set()
    assert {asset: balance.total for asset, balance in balances.items()} == {"USDT": 1000}


async def test_closed_positions_come_newest_first_and_limited_on_request(
    clock: Clock, ledger_url: str
) -> None:
    history = [closed_position(clock, number, f"{20000 + number}") for number in range(1, 6)]
    other = closed_position(clock, 9, "19000", symbol="ETH-USDT-PERP")

    async def write(tx: LedgerTransaction) -> None:
        for position in (*history[:3], other, *history[3:]):
            await tx.put_position(position)

    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        await ledger.write(write)
        oldest_first = await ledger.closed_positions(PERP)
        newest = await ledger.closed_positions(PERP, newest_first=True)
        latest_two = await ledger.closed_positions(PERP, newest_first=True, limit=2)
        first_two_of_all = await ledger.closed_positions(limit=2)
        latest_of_all = await ledger.closed_positions(newest_first=True, limit=1)
        for bad in (0, -1, True, 1.5, "2"):
            with pytest.raises(ValidationError) as refused:
                await ledger.closed_positions(limit=bad)  # type: ignore[arg-type]
            assert refused.value.field == "limit"
    assert oldest_first == history
    assert newest == history[::-1]
    assert latest_two == [history[4], history[3]]
    assert first_two_of_all == history[:2]
    assert latest_of_all == [history[4]]


async def test_closed_totals_sum_realized_pnl_and_fees_per_symbol_exactly(
    clock: Clock, ledger_url: str
) -> None:
    history = [
        closed_position(clock, 1, "20100.1"),
        closed_position(clock, 2, "19900.7"),
        closed_position(clock, 3, "1800.3", symbol="ETH-USDT-PERP"),
    ]

    async def write(tx: LedgerTransaction) -> None:
        for position in history:
            await tx.put_position(position)

    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        empty = await ledger.closed_totals()
        await ledger.write(write)
        totals = await ledger.closed_totals()
    assert empty == {}
    assert totals == {
        PERP: (
            history[0].realized_pnl + history[1].realized_pnl,
            history[0].fees_paid + history[1].fees_paid,
        ),
        "ETH-USDT-PERP": (history[2].realized_pnl, history[2].fees_paid),
    }


async def test_alert_counts_count_every_level_with_zero_for_none(
    clock: Clock, ledger_url: str
) -> None:
    levels = [AlertLevel.HIGH, AlertLevel.INFO, AlertLevel.HIGH, AlertLevel.CRITICAL]
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        before = await ledger.alert_counts()
        for level in levels:
            await ledger.record_alert(Alert(level, AlertCode.ORDER_UNKNOWN, "lost", clock.now()))
        after = await ledger.alert_counts()
        listed = await ledger.alerts()
    assert before == dict.fromkeys(AlertLevel, 0)
    assert after == {
        AlertLevel.INFO: 1,
        AlertLevel.WARNING: 0,
        AlertLevel.HIGH: 2,
        AlertLevel.CRITICAL: 1,
    }
    assert sum(after.values()) == len(listed)


async def test_the_positions_watermark_moves_whenever_a_position_opens_or_closes(
    clock: Clock, ledger_url: str
) -> None:
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        empty = await ledger.positions_watermark()
        opened = Position.open(PERP, PositionSide.LONG, Decimal("0.010"), Decimal(20000))
        await ledger.write(lambda tx: tx.put_position(opened))
        after_open = await ledger.positions_watermark()
        await ledger.write(lambda tx: tx.put_position(opened.mark(Decimal(20100))))
        after_mark = await ledger.positions_watermark()
        closed = opened.reduce(Decimal("0.010"), Decimal(20100), Decimal(0), clock.now())
        await ledger.write(lambda tx: tx.put_position(closed))
        after_close = await ledger.positions_watermark()

        async def close_one_open_another(tx: LedgerTransaction) -> None:
            # A close and an open in one write: the open count is back where it was.
            await tx.put_position(Position.open(PERP, PositionSide.SHORT, Decimal(1), Decimal(1)))
            reopened = await tx.open_position(PERP)
            assert reopened is not None
            await tx.put_position(reopened.reduce(Decimal(1), Decimal(1), Decimal(0), None))
            await tx.put_position(Position.open(PERP, PositionSide.LONG, Decimal(1), Decimal(1)))

        await ledger.write(close_one_open_another)
        after_flip = await ledger.positions_watermark()
        history_only = closed_position(clock, 1, "19900", symbol="ETH-USDT-PERP")
        await ledger.write(lambda tx: tx.put_position(history_only))
        after_history = await ledger.positions_watermark()
    assert empty == (0, 0)
    assert after_open == (1, 0)
    assert after_mark == after_open  # a mark closes nothing
    assert after_close == (1, 1)
    assert after_flip == (3, 2)  # the open count is back where it was, the pair is not
    assert after_history == (4, 3)  # a closed position recorded as such moves it too


async def test_the_positions_watermark_sees_a_close_behind_an_open_committed_late(
    clock: Clock, ledger_url: str
) -> None:
    # On PostgreSQL a writer may commit a position whose id was drawn before the newest
    # committed one. Together with a close, neither the newest id nor the open count moves.
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        first = Position.open(PERP, PositionSide.LONG, Decimal("0.010"), Decimal(20000))
        await ledger.write(lambda tx: tx.put_position(first))
        other = Position.open("ETH-USDT-PERP", PositionSide.LONG, Decimal(1), Decimal(1500))
        await ledger.write(lambda tx: tx.put_position(other))
        before = await ledger.positions_watermark()

        async def close_first_and_open_late(tx: LedgerTransaction) -> None:
            await tx.put_position(first.reduce(Decimal("0.010"), Decimal(20100), Decimal(0), None))
            await tx.put_position(
                Position.open("SOL-USDT-PERP", PositionSide.LONG, Decimal(1), Decimal(20))
            )

        await ledger.write(close_first_and_open_late)
        async with ledger.database.transaction() as tx:
            # The late open's id, as if drawn before the others.
            await tx.execute(
                "UPDATE legato_trading_positions SET id = 0 WHERE symbol = 'SOL-USDT-PERP'"
            )
        after = await ledger.positions_watermark()
    assert after != before


async def test_has_open_positions_or_orders_answers_what_both_lists_would(
    clock: Clock, ledger_url: str
) -> None:
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        nothing = await ledger.has_open_positions_or_orders()
        order = stop_order(clock).transition(OrderStatus.ACCEPTED, at=clock.now())
        await ledger.write(lambda tx: tx.put_order(order, OrderRole.STOP_LOSS))
        working_order = await ledger.has_open_positions_or_orders()
        cancelled = order.transition(OrderStatus.CANCELLED, at=clock.now())
        await ledger.write(lambda tx: tx.update_order(cancelled))
        order_done = await ledger.has_open_positions_or_orders()
        opened = Position.open(PERP, PositionSide.LONG, Decimal("0.010"), Decimal(20000))
        await ledger.write(lambda tx: tx.put_position(opened))
        open_position = await ledger.has_open_positions_or_orders()
        closed = opened.reduce(Decimal("0.010"), Decimal(20100), Decimal(0), clock.now())
        await ledger.write(lambda tx: tx.put_position(closed))
        all_closed = await ledger.has_open_positions_or_orders()
        lists_empty = not await ledger.open_positions() and not await ledger.orders(open_only=True)
    assert (nothing, working_order, order_done, open_position, all_closed) == (
        False,
        True,
        False,
        True,
        False,
    )
    assert lists_empty


def test_an_intent_advances_and_merges_outcomes_as_a_checked_copy(clock: Clock) -> None:
    now = clock.now()
    intent = entry_intent(now, take_profit=False, outcome={"warnings": ["one"]})
    later = now + timedelta(seconds=5)

    moved = intent.advance(IntentStage.PROTECT, later, filled_quantity=Decimal(1))
    noted = moved.with_outcome(later, error="e")

    assert moved == ExecutionIntent(
        intent_id="abc",
        proposal=intent.proposal,
        stage=IntentStage.PROTECT,
        entry_order_id="lg-abc-E",
        stop_loss_order_id="lg-abc-SL",
        take_profit_order_id=None,
        created_at=now,
        updated_at=later,
        filled_quantity=Decimal(1),
        outcome={"warnings": ["one"]},
    )
    assert noted.outcome == {"warnings": ["one"], "error": "e"}
    assert intent.stage is IntentStage.ENTRY  # the original is untouched
    with pytest.raises(ValidationError) as caught:
        intent.advance(IntentStage.PROTECT, later.replace(tzinfo=None))
    assert caught.value.field == "updated_at"
    with pytest.raises(TypeError, match="no field"):
        intent.advance(IntentStage.PROTECT, later, colour="red")


async def test_an_update_keeps_the_role_and_intent_and_adopts_an_unknown_order(
    clock: Clock, ledger_url: str
) -> None:
    order = stop_order(clock)
    accepted = order.transition(OrderStatus.ACCEPTED, at=clock.now(), venue_order_id="V-1")
    stranger = stop_order(clock, "ext-7").transition(OrderStatus.ACCEPTED, at=clock.now())
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        await ledger.write(lambda tx: tx.put_order(order, OrderRole.STOP_LOSS, "1"))
        await ledger.write(lambda tx: tx.update_order(accepted))
        await ledger.write(lambda tx: tx.update_order(stranger))
        kept = await ledger.get_order("lg-1-SL")
        adopted = await ledger.get_order("ext-7")
    assert kept == LedgerOrder(accepted, OrderRole.STOP_LOSS, "1")
    assert adopted == LedgerOrder(stranger, OrderRole.ADOPTED, None)


async def test_a_transaction_reads_back_what_it_wrote_as_the_store_holds_it(
    clock: Clock, ledger_url: str
) -> None:
    order = stop_order(clock)
    opened = Position.open(PERP, PositionSide.LONG, Decimal("0.010"), Decimal(20000))
    closed = opened.reduce(Decimal("0.010"), Decimal(20100), Decimal(0), clock.now())
    accepted = order.transition(OrderStatus.ACCEPTED, at=clock.now())

    async def write(tx: LedgerTransaction) -> list[Any]:
        seen: list[Any] = []
        await tx.put_order(order, OrderRole.STOP_LOSS, "1")
        seen.append(await tx.get_order(order.client_order_id))
        await tx.update_order(accepted)  # links kept by the store: read from it again
        seen.append(await tx.get_order(order.client_order_id))
        await tx.put_position(opened)
        seen.append(await tx.open_position(PERP))
        await tx.put_position(closed)
        seen.append(await tx.open_position(PERP))
        return seen

    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        seen = await ledger.write(write)
        stored_order = await ledger.get_order(order.client_order_id)
        stored_open = await ledger.position(PERP)
        history = await ledger.closed_positions()
    assert seen == [
        LedgerOrder(order, OrderRole.STOP_LOSS, "1"),
        LedgerOrder(accepted, OrderRole.STOP_LOSS, "1"),
        opened,
        None,
    ]
    assert stored_order == seen[1]
    assert stored_open is None
    assert history == [closed]


async def test_orphaned_protection_lists_working_protective_orders_of_flat_symbols_only(
    clock: Clock, ledger_url: str
) -> None:
    def accepted(cid: str, symbol: str = PERP) -> Order:
        return (
            stop_order(clock, cid)
            .replace(symbol=symbol)
            .transition(OrderStatus.ACCEPTED, at=clock.now())
        )

    other = "ETH-USDT-PERP"
    opened = Position.open(other, PositionSide.LONG, Decimal("0.010"), Decimal(2000))

    async def write(tx: LedgerTransaction) -> None:
        await tx.put_order(accepted("lg-1-SL"), OrderRole.STOP_LOSS, "1")
        await tx.put_order(accepted("lg-1-TP"), OrderRole.TAKE_PROFIT, "1")
        await tx.put_order(accepted("rp-1"), OrderRole.REPROTECT)
        await tx.put_order(stop_order(clock, "lg-2-SL"), OrderRole.STOP_LOSS, "2")  # NEW
        await tx.put_order(accepted("lg-3-E"), OrderRole.ENTRY, "3")
        await tx.put_order(accepted("lg-4-SL", other), OrderRole.STOP_LOSS, "4")
        await tx.put_position(opened)

    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        await ledger.write(write)
        orphaned = await ledger.orphaned_protection()
    assert [record.order.client_order_id for record in orphaned] == [
        "lg-1-SL",
        "lg-1-TP",
        "rp-1",
    ]
    assert orphaned[0].role is OrderRole.STOP_LOSS


async def test_a_position_opened_then_protected_in_one_transaction_is_written_once(
    clock: Clock, ledger_url: str
) -> None:
    opened = Position.open(PERP, PositionSide.LONG, Decimal("0.010"), Decimal(20000))
    protected = opened.with_protection("lg-1-SL", "lg-1-TP")

    async def open_and_protect(tx: LedgerTransaction) -> None:
        assert await tx.open_position(PERP) is None
        await tx.put_position(opened)
        await tx.put_position(protected)

    async with counted_ledger(ledger_url, clock) as (ledger, counting):
        await ledger.write(open_and_protect)
        stored = await ledger.position(PERP)
    writes = [sql.split()[0] for sql, _ in counting.statements if "INTO" in sql or "UPDATE" in sql]
    assert stored == protected
    # SQLite's write transaction holds the write lock: the position read as absent is inserted
    # without an update tried first. PostgreSQL tries the update (another writer may have
    # inserted the row since the read).
    assert writes == (["INSERT"] if counting.dialect == "sqlite" else ["UPDATE", "INSERT"])


async def test_held_position_writes_number_their_rows_as_written_one_by_one(
    clock: Clock, ledger_url: str
) -> None:
    other = "ETH-USDT-PERP"
    eth = Position.open(other, PositionSide.LONG, Decimal(1), Decimal(1500))
    long = Position.open(PERP, PositionSide.LONG, Decimal("0.010"), Decimal(20000))
    closed = long.reduce(Decimal("0.010"), Decimal(20100), Decimal(0), clock.now())
    short = Position.open(PERP, PositionSide.SHORT, Decimal("0.020"), Decimal(20100))

    async def write(tx: LedgerTransaction) -> Position | None:
        await tx.put_position(eth)
        await tx.put_position(long)
        await tx.put_position(closed)
        await tx.put_position(short)  # a new row, after the closed one
        await tx.put_position(eth.increase(Decimal(1), Decimal(1600)))
        return await tx.open_position(PERP)

    async with ledger_opener(ledger_url, clock)() as (ledger, database):
        seen = await ledger.write(write)
        async with database.transaction(write=False) as tx:
            rows = await tx.fetch(
                "SELECT symbol, status, quantity FROM legato_trading_positions ORDER BY id"
            )
    assert seen == short
    assert [tuple(row) for row in rows] == [
        (other, "open", "2"),
        (PERP, "closed", "0.000"),
        (PERP, "open", "0.020"),
    ]


async def test_the_latest_closed_results_come_newest_first_without_whole_positions(
    clock: Clock, ledger_url: str
) -> None:
    history = [closed_position(clock, number, f"{19990 + number}") for number in range(1, 5)]
    still_open = Position.open("ETH-USDT-PERP", PositionSide.LONG, Decimal(1), Decimal(1500))

    async def write(tx: LedgerTransaction) -> None:
        for position in (*history[:2], still_open, *history[2:]):
            await tx.put_position(position)

    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        await ledger.write(write)
        latest = await ledger.latest_closed_results(3)
        everything = await ledger.latest_closed_results(10)
        for bad in (0, -1, True, 1.5):
            with pytest.raises(ValidationError) as refused:
                await ledger.latest_closed_results(bad)  # type: ignore[arg-type]
            assert refused.value.field == "limit"
    expected = [(p.realized_pnl, p.fees_paid, p.closed_at) for p in reversed(history)]
    assert latest == expected[:3]
    assert everything == expected


async def test_a_sole_writer_answers_its_reads_from_memory_as_the_store_would(
    clock: Clock, ledger_url: str
) -> None:
    other = "ETH-USDT-PERP"

    def accepted(cid: str, symbol: str = PERP) -> Order:
        order = stop_order(clock, cid).replace(symbol=symbol)
        return order.transition(OrderStatus.ACCEPTED, at=clock.now())

    def fill(fill_id: str) -> Fill:
        return Fill(
            fill_id,
            "lg-1-E",
            "V-1",
            PERP,
            OrderSide.BUY,
            Decimal("0.010"),
            Decimal(20000),
            Decimal("0.08"),
            "USDT",
            Liquidity.TAKER,
            clock.now(),
        )

    eth = Position.open(other, PositionSide.LONG, Decimal(1), Decimal(1500))
    long = Position.open(PERP, PositionSide.LONG, Decimal("0.010"), Decimal(20000))
    marks = EquityMarks("2024-01-01", Decimal(1000), Decimal(990), Decimal(1010), Decimal(990))

    async def before(tx: LedgerTransaction) -> None:
        # Written before the ledger becomes the sole writer: read once, when it does.
        await tx.put_position(closed_position(clock, 1, "19900"))
        await tx.put_position(eth)
        await tx.put_order(accepted("lg-0-SL"), OrderRole.STOP_LOSS, "0")  # flat symbol
        await tx.add_fill(fill("F-0"))
        await tx.set_balance("USDT", Decimal(1000), clock.now())
        await tx.put_equity_marks(marks, clock.now())

    async def trade(tx: LedgerTransaction) -> tuple[bool, bool]:
        await tx.put_position((await tx.open_position(PERP)) or long)
        await tx.put_order(accepted("lg-1-SL"), OrderRole.STOP_LOSS, "1")
        await tx.put_order(accepted("lg-1-TP"), OrderRole.TAKE_PROFIT, "1")
        await tx.update_order(accepted("lg-0-SL").transition(OrderStatus.CANCELLED))
        await tx.update_order(accepted("ext-1", other))  # adopted: not protective
        total = await tx.balance("USDT")
        assert total is not None
        await tx.set_balance("USDT", total - Decimal("0.08"), clock.now())
        latest = await tx.latest_equity_marks()
        assert latest == marks
        later = EquityMarks("2024-01-02", Decimal(999), Decimal(999), Decimal(1010), Decimal(990))
        await tx.put_equity_marks(later, clock.now())
        return await tx.add_fill(fill("F-0")), await tx.add_fill(fill("F-1"))

    async def close(tx: LedgerTransaction) -> None:
        position = await tx.open_position(PERP)
        assert position is not None
        await tx.put_position(position.reduce(position.quantity, Decimal(20100), Decimal(0), None))

    async def reads(ledger: TradingLedger) -> list[Any]:
        async def in_transaction(tx: LedgerTransaction) -> list[Any]:
            return [
                await tx.open_position(PERP),
                await tx.open_position(other),
                await tx.balance("USDT"),
                await tx.balance("BTC"),
                await tx.latest_equity_marks(),
                await tx.get_order("lg-0-SL"),
                await tx.get_order("ext-1"),
                await tx.fills_of("lg-1-E"),
                await tx.fills_of("lg-0-SL"),
            ]

        return [
            await ledger.position(PERP),
            await ledger.open_positions(),
            await ledger.positions_watermark(),
            await ledger.balances(),
            await ledger.known_fill_ids(["F-0", "F-1", "F-2"]),
            await ledger.orphaned_protection(),
            await ledger.latest_closed_results(5),
            *await ledger.read(in_transaction),
            await ledger.orders(),
            await ledger.orders(symbol=other),
            await ledger.orders(intent_id="1"),
            await ledger.orders(open_only=True),
            await ledger.orders(symbol=other, open_only=True),
            await ledger.orders(open_only=True, intent_id="1"),
            await ledger.has_open_positions_or_orders(),
        ]

    async def flat(tx: LedgerTransaction) -> None:
        # No position open; one order still working (ext-1).
        position = await tx.open_position(other)
        assert position is not None
        await tx.put_position(position.reduce(position.quantity, Decimal(1500), Decimal(0), None))
        for cid in ("lg-1-SL", "lg-1-TP"):
            await tx.update_order(accepted(cid).transition(OrderStatus.CANCELLED))

    async def idle(tx: LedgerTransaction) -> None:
        await tx.update_order(accepted("ext-1", other).transition(OrderStatus.CANCELLED))

    plain = await TradingLedger.open(ledger_url, upgrade=False, clock=clock)
    counting = CountingDatabase(plain.database)
    sole = TradingLedger(counting)
    try:
        await sole.write(before)
        await sole.assume_sole_writer()
        added = await sole.write(trade)
        counting.statements.clear()
        after_trade = await reads(sole)
        statements_to_read = len(counting.statements)
        stored_after_trade = await reads(plain)
        await sole.write(close)
        after_close = await reads(sole)
        stored_after_close = await reads(plain)
        await sole.write(flat)
        after_flat = await reads(sole)
        stored_after_flat = await reads(plain)
        await sole.write(idle)
        after_idle = await reads(sole)
        stored_after_idle = await reads(plain)
    finally:
        await plain.close()
    assert added == (False, True)
    assert statements_to_read == 0  # no statement but the read transaction's own
    assert after_trade == stored_after_trade
    assert after_close == stored_after_close
    assert after_flat == stored_after_flat
    assert after_idle == stored_after_idle
    # A position open; then only an order working; then nothing at all.
    assert (after_close[-1], after_flat[-1], after_idle[-1]) == (True, True, False)
    assert [record.order.client_order_id for record in after_close[5]] == ["lg-1-SL", "lg-1-TP"]
    assert len(after_close[6]) == 2  # the closed position from before, and this one
    working = [record.order.client_order_id for record in after_close[-4]]
    assert working == ["ext-1", "lg-1-SL", "lg-1-TP"]
    assert [record.order.client_order_id for record in after_close[-3]] == ["ext-1"]
    assert [record.order.client_order_id for record in after_close[-2]] == ["lg-1-SL", "lg-1-TP"]


async def test_a_sole_writer_lists_the_fills_of_an_order_as_the_store_does(
    clock: Clock, ledger_url: str
) -> None:
    def fill(fill_id: str, cid: str, at: datetime) -> Fill:
        return Fill(
            fill_id,
            cid,
            f"V-{cid}",
            PERP,
            OrderSide.BUY,
            Decimal("0.010"),
            Decimal("20000.5"),
            Decimal("0.080002"),
            "USDT",
            Liquidity.TAKER,
            at,
        )

    async def book(tx: LedgerTransaction, fills: list[Fill]) -> list[Fill]:
        for item in fills:
            await tx.add_fill(item)
        return await tx.fills_of("lg-1-E")

    # Stored as a UTC timestamp: read back in UTC.
    east = clock.now().astimezone(timezone(timedelta(hours=2)))
    plain = await TradingLedger.open(ledger_url, upgrade=False, clock=clock)
    sole = TradingLedger(plain.database)
    try:
        await plain.write(lambda tx: tx.add_fill(fill("F-0", "lg-1-E", clock.now())))
        await sole.assume_sole_writer()
        fresh = [fill("F-1", "lg-1-E", east), fill("F-2", "lg-2-E", clock.now())]
        in_write = await sole.write(lambda tx: book(tx, fresh))
        after = await sole.read(lambda tx: tx.fills_of("lg-1-E"))
        stored = await plain.read(lambda tx: tx.fills_of("lg-1-E"))
    finally:
        await plain.close()
    assert in_write == after == stored
    assert [item.fill_id for item in stored] == ["F-0", "F-1"]
    assert [item.timestamp.tzinfo for item in in_write] == [UTC, UTC]


async def test_a_sole_writer_knows_its_equity_inputs_while_no_write_is_under_way(
    clock: Clock, ledger_url: str
) -> None:
    marks = EquityMarks("2024-01-01", Decimal(1000), Decimal(990), Decimal(1010), Decimal(990))
    during: list[object] = []

    async def write(tx: LedgerTransaction) -> None:
        await tx.put_equity_marks(marks, clock.now())
        during.append(ledger.known_equity_inputs("USDT"))

    async with counted_ledger(ledger_url, clock) as (ledger, _):
        await ledger.write(lambda tx: tx.set_balance("USDT", Decimal(1000), clock.now()))
        shared = ledger.known_equity_inputs("USDT")
        await ledger.assume_sole_writer()
        before = ledger.known_equity_inputs("USDT")
        await ledger.write(write)
        after = ledger.known_equity_inputs("USDT")
        untracked = ledger.known_equity_inputs("BTC")
        stored = await ledger.read(lambda tx: _both(tx.balance("USDT"), tx.latest_equity_marks()))
    assert shared is None  # not a sole writer: only the store knows
    assert before == (Decimal(1000), None)
    assert during == [None]  # a write is under way: only a write can tell
    assert after == stored == (Decimal(1000), marks)
    assert untracked == (None, marks)


async def _both(first: Awaitable[Any], second: Awaitable[Any]) -> tuple[Any, Any]:
    return await first, await second


# ---------------------------------------------------------------- batched commits


def _rows_of(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (with SQLite's own rowid), in rowid order."""
    with closing(sqlite3.connect(path)) as connection:
        tables = [
            name
            for (name,) in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        return {
            table: connection.execute(f'SELECT rowid, * FROM "{table}" ORDER BY rowid').fetchall()
            for table in tables
        }


async def _sole_writer(path: Path, clock: Clock) -> TradingLedger:
    ledger = await TradingLedger.open(fresh_store(path), upgrade=False, clock=clock)
    await ledger.assume_sole_writer()
    return ledger


def _journal_writes(clock: Clock) -> list[Callable[[LedgerTransaction], Awaitable[object]]]:
    """A trade's writes, a failing one and a refused duplicate among them."""
    now = clock.now()
    intent = entry_intent(now)
    fill = entry_fill("lg-abc-E", now)
    opened = Position.open(PERP, PositionSide.LONG, Decimal("0.010"), Decimal("20000.1"), at=now)
    stop = stop_order(clock, "lg-abc-SL")
    marks = EquityMarks("2024-01-01", Decimal(1000), Decimal(990), Decimal(1010), Decimal(990))

    async def protect(tx: LedgerTransaction) -> None:
        await tx.put_order(stop, OrderRole.STOP_LOSS, "abc")
        await tx.put_position(opened.with_protection("lg-abc-SL", None))

    async def half_then_fail(tx: LedgerTransaction) -> None:
        await tx.put_order(stop_order(clock, "lg-bad-SL"), OrderRole.STOP_LOSS)
        await tx.add_alert(Alert(AlertLevel.HIGH, AlertCode.ORDER_UNKNOWN, "lost", now))
        raise ValidationError("stage", "bogus", "a failure half-way through the write")

    async def close(tx: LedgerTransaction) -> None:
        position = await tx.open_position(PERP)
        assert position is not None
        await tx.put_position(position.reduce(position.quantity, Decimal(20100), Decimal(0), now))
        await tx.update_order(stop.transition(OrderStatus.CANCELLED, at=now))

    return [
        lambda tx: tx.insert_intent(intent),
        lambda tx: tx.insert_intent(intent),  # refused: the id is taken
        lambda tx: tx.add_fill(fill),
        lambda tx: tx.add_fill(fill),  # already recorded
        protect,
        half_then_fail,
        lambda tx: tx.set_balance("USDT", Decimal("99999.919996"), now),
        lambda tx: tx.put_equity_marks(marks, now),
        close,
        lambda tx: tx.put_intent(intent.advance(IntentStage.BRACKETED, now)),
        lambda tx: tx.add_alert(Alert(AlertLevel.INFO, AlertCode.ORDER_UNKNOWN, "late", now)),
    ]


async def _replay(
    ledger: TradingLedger, writes: list[Callable[[LedgerTransaction], Awaitable[object]]]
) -> list[object]:
    answers: list[object] = []
    for write in writes:
        try:
            answers.append(await ledger.write(write))
        except ValidationError as error:
            answers.append(error.field)
    return answers


@pytest.mark.parametrize("batch", [1, 3, 1000])
async def test_batched_commits_leave_the_rows_one_commit_per_write_leaves(
    clock: Clock, tmp_path: Path, batch: int
) -> None:
    one_by_one = await _sole_writer(tmp_path / "each.db", clock)
    batched = await _sole_writer(tmp_path / "batched.db", clock)
    await batched.batch_commits(batch)
    try:
        expected = await _replay(one_by_one, _journal_writes(clock))
        answers = await _replay(batched, _journal_writes(clock))
    finally:
        await one_by_one.close()
        await batched.close()
    assert answers == expected
    assert "intent_id" in answers  # the refused write
    assert "stage" in answers  # the failed one
    assert _rows_of(tmp_path / "batched.db") == _rows_of(tmp_path / "each.db")


async def test_a_read_that_goes_to_the_store_sees_every_batched_write(
    clock: Clock, tmp_path: Path
) -> None:
    ledger = await _sole_writer(tmp_path / "batched.db", clock)
    await ledger.batch_commits(1000)
    try:
        await _replay(ledger, _journal_writes(clock))
        alerts = await ledger.alerts()
        fills = await ledger.read(lambda tx: tx.fills_of("lg-abc-E"))
        intent = await ledger.get_intent("abc")
        closed = await ledger.closed_positions()
        await ledger.write(
            lambda tx: tx.add_alert(
                Alert(AlertLevel.HIGH, AlertCode.ORDER_UNKNOWN, "x", clock.now())
            )
        )
        later = await ledger.alert_counts()
    finally:
        await ledger.close()
    assert [alert.message for alert in alerts] == ["late"]  # not the failed write's
    assert [fill.fill_id for fill in fills] == ["F-1"]
    assert intent is not None
    assert intent.stage is IntentStage.BRACKETED
    assert len(closed) == 1
    assert (later[AlertLevel.HIGH], later[AlertLevel.INFO]) == (1, 1)


async def test_batched_writes_reach_the_store_a_batch_at_a_time_and_all_at_close(
    clock: Clock, tmp_path: Path
) -> None:
    path = tmp_path / "batched.db"
    ledger = await _sole_writer(path, clock)
    await ledger.batch_commits(2)

    def committed() -> int:
        # Another connection sees only what was committed.
        with closing(sqlite3.connect(path)) as connection:
            (count,) = connection.execute("SELECT COUNT(*) FROM legato_trading_alerts").fetchone()
        return int(count)

    seen = []
    try:
        for number in range(3):
            alert = Alert(AlertLevel.INFO, AlertCode.ORDER_UNKNOWN, f"a{number}", clock.now())
            await ledger.record_alert(alert)
            seen.append(committed())
    finally:
        await ledger.close()
    assert seen == [0, 2, 2]
    assert committed() == 3


async def test_batched_commits_need_a_sole_writer_of_a_sqlite_store(
    clock: Clock, tmp_path: Path
) -> None:
    ledger = await TradingLedger.open(fresh_store(tmp_path / "s.db"), upgrade=False, clock=clock)
    try:
        with pytest.raises(ValidationError) as shared:
            await ledger.batch_commits()
        await ledger.assume_sole_writer()
        with pytest.raises(ValidationError) as empty:
            await ledger.batch_commits(0)
    finally:
        await ledger.close()
    assert (shared.value.field, empty.value.field) == ("ledger", "writes")
