"""The position tracker: atomic opening, PnL from fills, marks, closing, risk inputs."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal

import pytest

from legato.kernel.clock import Clock
from legato.store.errors import StoreUnavailableError
from legato.trading.fills import Fill, Liquidity
from legato.trading.ledger import LedgerTransaction, TradingLedger
from legato.trading.orders import Order, OrderSide, OrderStatus, OrderType
from legato.trading.positions import Position, PositionSide
from legato.trading.risk import RiskLimits, RiskState, TradingState, evaluate_trading_state
from legato.trading.tracker import PositionTracker

from .conftest import PERP
from .execution_harness import TRADING_TABLES, ledger_opener
from .test_ledger import closed_position, counted_ledger


def fill(number: int, cid: str, side: OrderSide, quantity: str, price: str, clock: Clock) -> Fill:
    qty, px = Decimal(quantity), Decimal(price)
    return Fill(
        f"F-{number}",
        cid,
        f"V-{cid}",
        PERP,
        side,
        qty,
        px,
        qty * px * Decimal("0.0004"),
        "USDT",
        Liquidity.TAKER,
        clock.now(),
    )


def bracket(clock: Clock) -> tuple[Order, Order, Order]:
    now = clock.now()
    entry = Order(
        "lg-1-E",
        PERP,
        OrderSide.BUY,
        OrderType.MARKET,
        Decimal("0.010"),
        leverage=Decimal(5),
        created_at=now,
    ).transition(OrderStatus.ACCEPTED, at=now, venue_order_id="V-lg-1-E")
    entry = entry.with_fill(Decimal("0.010"), Decimal(20000), at=now)
    stop = Order(
        "lg-1-SL",
        PERP,
        OrderSide.SELL,
        OrderType.STOP,
        Decimal("0.010"),
        stop_price=Decimal(19500),
        reduce_only=True,
        created_at=now,
    )
    take = Order(
        "lg-1-TP",
        PERP,
        OrderSide.SELL,
        OrderType.TAKE_PROFIT,
        Decimal("0.010"),
        stop_price=Decimal(21000),
        reduce_only=True,
        created_at=now,
    )
    return entry, stop, take


async def test_a_position_is_recorded_with_both_protective_orders_or_not_at_all(
    clock: Clock, ledger_url: str
) -> None:
    entry, stop, take = bracket(clock)
    entry_fill = fill(1, "lg-1-E", OrderSide.BUY, "0.010", "20000", clock)
    async with ledger_opener(ledger_url, clock)() as (ledger, database):
        tracker = PositionTracker(ledger, clock=clock)
        database.fail_writes(1)
        with pytest.raises(StoreUnavailableError):
            await tracker.open_position(entry, [entry_fill], stop_loss=stop, take_profit=take)
        nothing = (await ledger.position(PERP), await ledger.orders(), await ledger.fills())
        position = await tracker.open_position(
            entry, [entry_fill], stop_loss=stop, take_profit=take
        )
        orders = await ledger.orders()
    assert nothing == (None, [], [])
    assert position.side is PositionSide.LONG
    assert (position.stop_loss_order_id, position.take_profit_order_id) == ("lg-1-SL", "lg-1-TP")
    assert sorted(record.order.client_order_id for record in orders) == [
        "lg-1-E",
        "lg-1-SL",
        "lg-1-TP",
    ]


async def test_fills_realize_pnl_move_the_balance_and_close_the_position_once(
    clock: Clock, ledger_url: str
) -> None:
    entry, stop, take = bracket(clock)
    opening = fill(1, "lg-1-E", OrderSide.BUY, "0.010", "20000", clock)
    partial = fill(2, "lg-1-TP", OrderSide.SELL, "0.004", "21000", clock)
    rest = fill(3, "lg-1-TP", OrderSide.SELL, "0.006", "21000", clock)
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        tracker = PositionTracker(ledger, clock=clock)
        await tracker.set_balances({"USDT": Decimal(1000)})
        await tracker.open_position(entry, [opening], stop_loss=stop, take_profit=take)
        await tracker.apply_fills([opening, partial])
        half = await ledger.position(PERP)
        booked = await tracker.apply_fills([opening, partial, rest])
        again = await tracker.apply_fills([rest])
        closed = await ledger.closed_positions(PERP)
        balance = (await ledger.balances())["USDT"].total
        take_record = await ledger.get_order("lg-1-TP")
    assert half is not None
    assert half.quantity == Decimal("0.006")
    assert booked == [rest]
    assert again == []
    (position,) = closed
    assert position.realized_pnl == Decimal(1000) * Decimal("0.010")
    fees = opening.fee + partial.fee + rest.fee
    assert position.fees_paid == fees
    assert balance == Decimal(1000) + Decimal(10) - fees
    assert take_record is not None
    assert take_record.order.filled_quantity == Decimal("0.010")


async def test_a_position_closes_when_its_fill_happened_not_when_it_was_booked(
    clock: Clock, ledger_url: str
) -> None:
    # A backtest books the venue's fills lazily (before the next proposal): a stop-loss that
    # filled an hour earlier must not start the losing streak's cooldown only now.
    opening = fill(1, "a", OrderSide.BUY, "0.100", "20000", clock)
    stopped = fill(2, "b", OrderSide.SELL, "0.100", "19000", clock)
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        tracker = PositionTracker(ledger, clock=clock)
        await tracker.set_balances({"USDT": Decimal(10_000)})
        await asyncio.sleep(3600)
        await tracker.apply_fills([opening, stopped])
        (closed,) = await ledger.closed_positions(PERP)
        state = await tracker.risk_state(quote_asset="USDT")
    assert closed.closed_at == stopped.timestamp == clock.now() - timedelta(hours=1)
    assert state.consecutive_losses == 1
    assert state.last_loss_at == stopped.timestamp


async def test_a_fill_larger_than_the_position_flips_it(clock: Clock, ledger_url: str) -> None:
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        tracker = PositionTracker(ledger, clock=clock)
        await tracker.apply_fills([fill(1, "a", OrderSide.BUY, "0.010", "20000", clock)])
        await tracker.apply_fills([fill(2, "b", OrderSide.SELL, "0.015", "20100", clock)])
        position = await ledger.position(PERP)
        (closed,) = await ledger.closed_positions(PERP)
    assert position is not None
    assert (position.side, position.quantity) == (PositionSide.SHORT, Decimal("0.005"))
    assert closed.realized_pnl == Decimal(1)


async def test_marks_value_open_positions_and_close_position_settles_by_hand(
    clock: Clock, ledger_url: str
) -> None:
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        tracker = PositionTracker(ledger, clock=clock)
        await tracker.apply_fills([fill(1, "a", OrderSide.BUY, "0.010", "20000", clock)])
        (marked,) = await tracker.mark({PERP: Decimal(20500)})
        closed = await tracker.close_position(PERP, Decimal(20400))
        after = await ledger.position(PERP)
    assert marked.unrealized_pnl == Decimal(5)
    assert closed.realized_pnl == Decimal(4)
    assert after is None


async def test_risk_state_carries_equity_lows_and_the_losing_streak(
    clock: Clock, ledger_url: str
) -> None:
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        tracker = PositionTracker(ledger, clock=clock, instruments_base={PERP: "BTC"})
        await tracker.set_balances({"USDT": Decimal(10_000)})
        start = await tracker.risk_state(quote_asset="USDT")
        await tracker.apply_fills([fill(1, "a", OrderSide.BUY, "0.100", "20000", clock)])
        await tracker.apply_fills([fill(2, "b", OrderSide.SELL, "0.100", "19000", clock)])
        after_loss = await tracker.risk_state(quote_asset="USDT")
        await tracker.apply_fills([fill(3, "c", OrderSide.BUY, "0.100", "19000", clock)])
        await tracker.mark({PERP: Decimal(19500)})
        next_day = await tracker.risk_state(quote_asset="USDT", now=clock.now() + timedelta(days=1))
    assert start.equity == Decimal(10_000)
    assert after_loss.consecutive_losses == 1
    assert after_loss.equity < start.equity
    assert after_loss.day_low_equity == after_loss.equity
    assert after_loss.start_of_day_equity == Decimal(10_000)
    assert next_day.start_of_day_equity == next_day.equity
    assert next_day.exposure_by_asset == {"BTC": Decimal("1950.0")}
    assert next_day.peak_equity == Decimal(10_000)
    assert next_day.worst_drawdown > 0


async def test_equity_marks_are_written_only_when_they_move(clock: Clock, ledger_url: str) -> None:
    async def updated_at() -> list[float]:
        async with ledger.database.transaction(write=False) as tx:
            rows = await tx.fetch("SELECT updated_at FROM legato_trading_equity")
        return [float(row[0]) for row in rows]

    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        tracker = PositionTracker(ledger, clock=clock, instruments_base={PERP: "BTC"})
        await tracker.set_balances({"USDT": Decimal(10_000)})
        first = clock.now()
        await tracker.risk_state(quote_asset="USDT", now=first)
        # The same equity a minute later: the marks did not move, nothing is written.
        await tracker.risk_state(quote_asset="USDT", now=first + timedelta(minutes=1))
        unmoved = await updated_at()
        await tracker.apply_fills([fill(1, "a", OrderSide.BUY, "0.100", "20000", clock)])
        await tracker.apply_fills([fill(2, "b", OrderSide.SELL, "0.100", "19000", clock)])
        later = first + timedelta(minutes=2)
        after_loss = await tracker.risk_state(quote_asset="USDT", now=later)
        moved = await updated_at()
    assert unmoved == [first.timestamp()]
    assert moved == [later.timestamp()]
    assert after_loss.day_low_equity < Decimal(10_000)


async def test_a_sole_writer_decides_on_unmoved_marks_without_a_transaction(
    clock: Clock, ledger_url: str
) -> None:
    async def decisions(ledger: TradingLedger) -> list[RiskState]:
        tracker = PositionTracker(ledger, clock=clock, instruments_base={PERP: "BTC"})
        first = clock.now()
        states = [await tracker.risk_state(quote_asset="USDT", now=first)]
        await tracker.apply_fills([fill(1, "a", OrderSide.BUY, "0.100", "20000", clock)])
        await tracker.mark({PERP: Decimal(19900)})
        # A lower equity moves the marks; the same equity a minute later does not.
        for minutes in (1, 2, 3):
            later = first + timedelta(minutes=minutes)
            states.append(await tracker.risk_state(quote_asset="USDT", now=later))
        states.append(await tracker.risk_state(quote_asset="USDT", now=first + timedelta(days=1)))
        return states

    async with counted_ledger(ledger_url, clock) as (shared, _):
        await PositionTracker(shared, clock=clock).set_balances({"USDT": Decimal(10_000)})
        expected = await decisions(shared)
        marks = await shared.read(lambda tx: tx.latest_equity_marks())
        async with shared.database.transaction() as tx:
            for table in TRADING_TABLES.split(", "):
                await tx.execute(f"DELETE FROM {table}")
    async with counted_ledger(ledger_url, clock) as (sole, counting):
        await PositionTracker(sole, clock=clock).set_balances({"USDT": Decimal(10_000)})
        await sole.assume_sole_writer()
        transactions = counting.transactions
        states = await decisions(sole)
        opened = counting.transactions - transactions
        sole_marks = await sole.read(lambda tx: tx.latest_equity_marks())
    assert states == expected
    assert sole_marks == marks
    # The fill's booking and the mark; the marks written by the first decision, the one
    # after the mark and the new day's: the two quiet decisions open no transaction.
    assert opened == 2 + 3


async def test_a_drawdown_reset_measures_the_drawdown_from_the_equity_now(
    clock: Clock, ledger_url: str
) -> None:
    limits = RiskLimits()
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        tracker = PositionTracker(ledger, clock=clock, instruments_base={PERP: "BTC"})
        await tracker.set_balances({"USDT": Decimal(10_000)})
        first = clock.now()
        await tracker.risk_state(quote_asset="USDT", now=first)
        # An 11% loss: past the 10% drawdown limit and the 3% daily one.
        await tracker.apply_fills([fill(1, "a", OrderSide.BUY, "1", "20000", clock)])
        await tracker.apply_fills([fill(2, "b", OrderSide.SELL, "1", "18900", clock)])
        halted = await tracker.risk_state(quote_asset="USDT", now=first)
        marks, replaced = await tracker.reset_drawdown(quote_asset="USDT", now=first)
        same_day = await tracker.risk_state(quote_asset="USDT", now=first)
        next_day = first + timedelta(days=1)
        later = await tracker.risk_state(quote_asset="USDT", now=next_day)
    assert evaluate_trading_state(halted, limits).state is TradingState.HALTED
    assert replaced is not None
    assert replaced.peak_equity == Decimal(10_000)
    assert marks.peak_equity == marks.trough_equity == halted.equity
    assert marks.start_equity == Decimal(10_000)  # the day's loss still counts
    assert same_day.worst_drawdown == 0
    assert evaluate_trading_state(same_day, limits).state is TradingState.HALTED
    assert evaluate_trading_state(later, limits).state is TradingState.ACTIVE


async def test_risk_state_counts_a_negative_balance_as_no_equity(
    clock: Clock, ledger_url: str
) -> None:
    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        tracker = PositionTracker(ledger, clock=clock, instruments_base={PERP: "BTC"})
        await tracker.set_balances({"USDT": Decimal(100)})
        await tracker.risk_state(quote_asset="USDT")  # the day starts at 100
        # A loss larger than the balance: the recorded total goes below zero.
        await tracker.apply_fills([fill(1, "a", OrderSide.BUY, "0.100", "20000", clock)])
        await tracker.apply_fills([fill(2, "b", OrderSide.SELL, "0.100", "18000", clock)])
        state = await tracker.risk_state(quote_asset="USDT")
        recorded = (await ledger.balances())["USDT"]
    assert recorded.total == 0  # as the ledger reports balances
    assert state.equity == Decimal(0)
    assert state.consecutive_losses == 1


async def test_risk_state_reads_only_the_latest_closed_positions_for_the_losing_streak(
    clock: Clock, ledger_url: str
) -> None:
    # 40 trades: 36 winners, then 4 losers. The streak needs the last 5 rows, not all 40.
    history = [closed_position(clock, n, "20100") for n in range(36)] + [
        closed_position(clock, 36 + n, "19900") for n in range(4)
    ]

    async def write(tx: LedgerTransaction) -> None:
        for position in history:
            await tx.put_position(position)

    async with counted_ledger(ledger_url, clock) as (ledger, counting):
        tracker = PositionTracker(ledger, clock=clock)
        await tracker.set_balances({"USDT": Decimal(10_000)})
        await ledger.write(write)
        counting.statements.clear()
        state = await tracker.risk_state(quote_asset="USDT")
    closed_rows = [rows for sql, rows in counting.statements if "status = 'closed'" in sql]
    assert state.consecutive_losses == 4
    assert state.last_loss_at == history[-1].closed_at
    assert sum(closed_rows) < 10  # a few of the 40, whatever the history's length


@pytest.mark.parametrize("losers", [0, 1, 7, 8, 9, 40])
async def test_risk_state_counts_a_losing_streak_of_any_length_exactly(
    clock: Clock, ledger_url: str, losers: int
) -> None:
    # A streak as long as (or longer than) one read of the latest positions is still counted
    # to its start; a winner before it, or the start of the history, ends it.
    history = [closed_position(clock, 0, "20100")] + [
        closed_position(clock, 1 + n, "19900") for n in range(losers)
    ]

    async def write(tx: LedgerTransaction) -> None:
        for position in history:
            await tx.put_position(position)

    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        tracker = PositionTracker(ledger, clock=clock)
        await tracker.set_balances({"USDT": Decimal(10_000)})
        await ledger.write(write)
        with_winner = await tracker.risk_state(quote_asset="USDT")
    assert with_winner.consecutive_losses == losers
    assert with_winner.last_loss_at == (history[-1].closed_at if losers else None)


async def test_risk_state_counts_a_history_of_only_losses(clock: Clock, ledger_url: str) -> None:
    history = [closed_position(clock, n, "19900") for n in range(33)]

    async def write(tx: LedgerTransaction) -> None:
        for position in history:
            await tx.put_position(position)

    async with ledger_opener(ledger_url, clock)() as (ledger, _):
        tracker = PositionTracker(ledger, clock=clock)
        await tracker.set_balances({"USDT": Decimal(10_000)})
        await ledger.write(write)
        state = await tracker.risk_state(quote_asset="USDT")
    assert state.consecutive_losses == 33
    assert state.last_loss_at == history[-1].closed_at


async def test_fills_seen_booked_are_skipped_without_a_store_read_and_a_new_tracker_asks(
    clock: Clock, ledger_url: str
) -> None:
    opening = fill(1, "a", OrderSide.BUY, "0.010", "20000", clock)
    closing = fill(2, "b", OrderSide.SELL, "0.010", "20100", clock)
    async with counted_ledger(ledger_url, clock) as (ledger, counting):
        tracker = PositionTracker(ledger, clock=clock)
        await tracker.set_balances({"USDT": Decimal(1000)})
        first = await tracker.apply_fills([opening])
        counting.statements.clear()
        again = await tracker.apply_fills([opening])
        reads_for_known = [sql for sql, _ in counting.statements if "legato_trading_fills" in sql]
        # A restarted process: a new tracker knows nothing and asks the ledger.
        restarted = PositionTracker(ledger, clock=clock)
        replayed = await restarted.apply_fills([opening, closing])
        replayed_again = await restarted.apply_fills([opening, closing])
        position = await ledger.position(PERP)
        closed = await ledger.closed_positions(PERP)
        balance = (await ledger.balances())["USDT"].total
    assert first == [opening]
    assert again == []
    assert reads_for_known == []
    assert replayed == [closing]  # the opening fill was not booked twice
    assert replayed_again == []
    assert position is None
    assert [p.realized_pnl for p in closed] == [Decimal(1)]
    assert balance == Decimal(1000) + Decimal(1) - opening.fee - closing.fee


async def test_the_losing_streak_is_read_once_until_a_position_closes_by_anyone(
    clock: Clock, ledger_url: str
) -> None:
    # One winner then two losers; the tracker keeps the streak until the positions move,
    # whoever closes them (here another writer of the same store), and a new tracker asks
    # the store.
    async def put(*positions: Position) -> None:
        async def write(tx: LedgerTransaction) -> None:
            for position in positions:
                await tx.put_position(position)

        await ledger.write(write)

    async with counted_ledger(ledger_url, clock) as (ledger, counting):
        tracker = PositionTracker(ledger, clock=clock)
        await tracker.set_balances({"USDT": Decimal(10_000)})
        await put(closed_position(clock, 0, "20100"), closed_position(clock, 1, "19900"))
        first = await tracker.risk_state(quote_asset="USDT")
        counting.statements.clear()
        again = await tracker.risk_state(quote_asset="USDT")
        # The closed positions themselves (not the watermark's count of them).
        reads_again = [sql for sql, _ in counting.statements if "WHERE status = 'closed'" in sql]
        await put(closed_position(clock, 2, "19900"))
        after_close = await tracker.risk_state(quote_asset="USDT")
        opened = Position.open(PERP, PositionSide.LONG, Decimal("0.010"), Decimal(20000))
        await put(opened)
        after_open = await tracker.risk_state(quote_asset="USDT")
        await put(opened.reduce(Decimal("0.010"), Decimal(20500), Decimal(0), clock.now()))
        after_win = await tracker.risk_state(quote_asset="USDT")
        restarted = await PositionTracker(ledger, clock=clock).risk_state(quote_asset="USDT")
    assert first.consecutive_losses == again.consecutive_losses == 1
    assert reads_again == []  # nothing closed: the streak came from the tracker
    assert after_close.consecutive_losses == 2
    assert after_close.last_loss_at == clock.now() + timedelta(minutes=2)
    assert after_open.consecutive_losses == 2
    assert after_win.consecutive_losses == restarted.consecutive_losses == 0
    assert after_win.last_loss_at is None


async def test_the_fills_of_a_final_order_are_not_read_when_one_of_them_is_booked(
    clock: Clock, ledger_url: str
) -> None:
    entry, stop, take = bracket(clock)  # the entry is recorded FILLED with its fill
    entry_fill = fill(1, "lg-1-E", OrderSide.BUY, "0.010", "20000", clock)
    async with counted_ledger(ledger_url, clock) as (ledger, counting):
        tracker = PositionTracker(ledger, clock=clock)
        await tracker.set_balances({"USDT": Decimal(1000)})
        counting.statements.clear()
        await tracker.open_position(entry, [entry_fill], stop_loss=stop, take_profit=take)
        stored = await ledger.get_order(entry.client_order_id)
    fill_reads = [
        sql for sql, _ in counting.statements if sql.startswith("SELECT") and "_fills" in sql
    ]
    assert stored is not None
    assert stored.order == entry
    assert fill_reads == []


async def test_fills_noted_as_booked_are_skipped_without_a_store_read(
    clock: Clock, ledger_url: str
) -> None:
    entry, stop, take = bracket(clock)
    entry_fill = fill(1, "lg-1-E", OrderSide.BUY, "0.010", "20000", clock)
    async with counted_ledger(ledger_url, clock) as (ledger, counting):
        tracker = PositionTracker(ledger, clock=clock)
        await tracker.set_balances({"USDT": Decimal(1000)})
        # Booked in a transaction of the caller's (as the execution manager does it).
        await ledger.write(
            tracker.opening_writes(entry, [entry_fill], stop_loss=stop, take_profit=take)
        )
        tracker.note_booked([entry_fill])
        counting.statements.clear()
        again = await tracker.apply_fills([entry_fill])
    assert again == []
    assert counting.statements == []
