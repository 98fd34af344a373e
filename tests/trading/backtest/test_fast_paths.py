"""The backtest's fast paths decide what the slow paths decided.

- A stop or take-profit that is not triggered yet triggers exactly when the bar reaches its
  level in the trigger's direction (the matcher now answers "not reached" from the bar's
  high or low before walking the intrabar path), and a bar inside the band that reaches
  none of a symbol's triggers is skipped as a whole with what the walk would decide.
- A bar with no working order still marks the venue's position at its close; the venue
  makes that mark only when something reads it, and nothing it does or shows differs from a
  venue whose position is read (so marked) after every bar.
- A venue call with no fault armed skips the fault plan, and still counts toward the call
  numbers a fault armed later fires on.
- `TradeBook.point` is the `EquityPoint` of the book's equity and position.
- A backtest's store is a copy of an empty database at the current schema, replacing any
  file (and stale write-ahead log) at that path; while a run writes it, it is scratch space
  (no fsync, one exclusive connection) and still holds every row after the run.
- On the production path, a partly filled entry has its rest cancelled and the filled part
  protected before the next bar (the execution manager polls four times a bar, not every
  two seconds).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from legato.kernel.errors import TransientError
from legato.kernel.simulation import SimulatedClock, run_simulated
from legato.store import migrate
from legato.trading.backtest.production import production_backtest
from legato.trading.backtest.store import fresh_store, use_as_scratch
from legato.trading.backtest.trades import EquityPoint, TradeBook
from legato.trading.balances import Balance
from legato.trading.errors import OrderRejected
from legato.trading.faults import Fault
from legato.trading.fills import Fill, Liquidity
from legato.trading.instruments import Instrument
from legato.trading.ledger import OrderRole, TradingLedger
from legato.trading.market_data import Bar
from legato.trading.matching import MatchingRules, intrabar_path, match_order
from legato.trading.orders import Order, OrderSide, OrderStatus, OrderType
from legato.trading.paper_venue import PaperVenue, PaperVenueConfig
from legato.trading.positions import Position, PositionSide

from ..conftest import PERP, SPOT, T0, BarMaker, make_bar
from .scripted_strategy import ScriptedStrategy, buy

NO_SLIP = MatchingRules(slippage_bps=Decimal(0), participation=Decimal(1))

prices = st.integers(min_value=90, max_value=110).map(Decimal)


@given(
    corners=st.lists(prices, min_size=4, max_size=4),
    level=prices,
    kind=st.sampled_from([OrderType.STOP, OrderType.TAKE_PROFIT]),
    side=st.sampled_from([OrderSide.BUY, OrderSide.SELL]),
    held=st.sampled_from([None, PositionSide.LONG, PositionSide.SHORT]),
)
def test_a_working_trigger_fires_exactly_when_the_bar_reaches_its_level(
    corners: list[Decimal],
    level: Decimal,
    kind: OrderType,
    side: OrderSide,
    held: PositionSide | None,
) -> None:
    open_, close, first, second = corners
    high = max(corners)
    low = min(corners)
    del first, second  # they only widen the range
    bar = Bar(PERP, T0, open_, high, low, close, Decimal(1000))
    order = Order(
        "t1",
        PERP,
        side,
        kind,
        Decimal(1),
        stop_price=level,
        status=OrderStatus.ACCEPTED,
        reduce_only=True,
    )
    path = intrabar_path(bar, NO_SLIP.intrabar, held)
    execution = match_order(order, bar, path, NO_SLIP, Decimal("0.001"), fresh=False)
    rises = (kind is OrderType.TAKE_PROFIT) == (side is OrderSide.SELL)
    reached = high >= level if rises else low <= level
    assert (execution is not None) == reached
    if execution is not None:
        assert execution.triggered
        assert low <= execution.price <= high


async def test_a_bar_without_working_orders_still_marks_the_position(
    perp: Instrument, clock: SimulatedClock, bar: BarMaker
) -> None:
    venue = PaperVenue(
        [perp],
        balances={"USDT": Decimal(100_000)},
        config=PaperVenueConfig(rules=NO_SLIP),
        clock=clock,
    )
    venue.process_bar(bar(0, "100", "101", "99", "100"))
    await venue.place_order(
        Order("m1", PERP, OrderSide.BUY, OrderType.MARKET, Decimal(1), leverage=Decimal(5))
    )
    assert len(venue.process_bar(bar(1, "100", "102", "99", "101"))) == 1
    assert not await venue.open_orders()
    assert venue.process_bar(bar(2, "101", "110", "100", "108")) == []
    (position,) = await venue.positions()
    assert position.mark_price == Decimal(108)
    assert position.unrealized_pnl == Decimal(8)


_ACTIONS = st.sampled_from([None, None, "buy", "sell", "reduce", "stop", "read"])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.tuples(st.integers(min_value=-3, max_value=3), _ACTIONS), min_size=1, max_size=25
    )
)
def test_a_position_marked_only_when_read_shows_what_marking_every_bar_shows(
    perp: Instrument, steps: list[tuple[int, str | None]]
) -> None:
    # Two venues get the same orders and bars; `eager` has its positions read after every
    # bar (so marked at every close), `lazy` only when the step says so.
    async def run() -> None:
        venues = _twin_venues(perp, clock)
        eager, lazy = venues
        price = 100
        for index, (move, action) in enumerate(steps):
            bar, close = _step_bar(index, price, move)
            clock.advance(300.0)
            assert eager.process_bar(bar) == lazy.process_bar(bar)
            price = close
            assert await eager.positions() is not None
            if action == "read":
                assert await lazy.positions() == await eager.positions()
            for asset in ("USDT", "BTC"):
                assert lazy._free(asset) == _free_in_snapshot(eager, asset)
            if action is not None and action != "read":
                answers: list[Order | str] = []
                order = _order_for(action, index, list(await eager.positions()))
                for venue in venues:
                    try:
                        answers.append(await venue.place_order(order))
                    except OrderRejected as rejected:
                        answers.append(str(rejected))
                assert answers[0] == answers[1]
        assert lazy.state() == eager.state()
        assert await lazy.positions() == await eager.positions()
        for position in await lazy.positions():
            assert position.mark_price == Decimal(price)

    clock = SimulatedClock(start=T0 - timedelta(minutes=5))
    run_simulated(run(), clock=clock)


_BAND_ACTIONS = st.sampled_from([None, None, None, "buy", "sell", "stop", "target", "limit"])


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.tuples(st.integers(min_value=-4, max_value=4), _BAND_ACTIONS),
        min_size=1,
        max_size=30,
    )
)
def test_bars_inside_the_quiet_band_decide_what_the_order_by_order_walk_decides(
    perp: Instrument, steps: list[tuple[int, str | None]]
) -> None:
    # Two venues get the same orders and bars; `walker` matches every bar order by order
    # (no quiet band), `banded` skips the bars that reach none of its triggers.
    async def run() -> None:
        venues = _twin_venues(perp, clock)
        banded, walker = venues
        walker._quiet_band = lambda symbol: None  # type: ignore[method-assign]
        price = 100
        for index, (move, action) in enumerate(steps):
            bar, close = _step_bar(index, price, move)
            clock.advance(300.0)
            assert banded.process_bar(bar) == walker.process_bar(bar)
            assert banded.state() == walker.state()  # bars seen by each order included
            price = close
            if action is not None:
                order = _band_order_for(action, index, price, list(await walker.positions()))
                answers: list[Order | str] = []
                for venue in venues:
                    try:
                        answers.append(await venue.place_order(order))
                    except OrderRejected as rejected:
                        answers.append(str(rejected))
                assert answers[0] == answers[1]
        assert banded.state() == walker.state()

    clock = SimulatedClock(start=T0 - timedelta(minutes=5))
    run_simulated(run(), clock=clock)


def _band_order_for(action: str, index: int, price: int, positions: list[Position]) -> Order:
    cid = f"{action}-{index}"
    if action in ("buy", "sell"):
        side = OrderSide.BUY if action == "buy" else OrderSide.SELL
        return Order(cid, PERP, side, OrderType.MARKET, Decimal(1), leverage=Decimal(5))
    held = positions[0] if positions else None
    closing = OrderSide.SELL if held is None or held.side is PositionSide.LONG else OrderSide.BUY
    away = -3 if closing is OrderSide.SELL else 3
    if action == "limit":
        return Order(
            cid,
            PERP,
            closing.opposite,
            OrderType.LIMIT,
            Decimal(1),
            price=Decimal(price - away),
            leverage=Decimal(5),
        )
    kind = OrderType.STOP if action == "stop" else OrderType.TAKE_PROFIT
    trigger = Decimal(price + away if action == "stop" else price - away)
    return Order(cid, PERP, closing, kind, Decimal(1), stop_price=trigger, reduce_only=True)


def _twin_venues(perp: Instrument, clock: SimulatedClock) -> list[PaperVenue]:
    """Two identical venues on one clock, for comparing two ways of doing the same."""
    return [
        PaperVenue(
            [perp],
            balances={"USDT": Decimal(100_000)},
            config=PaperVenueConfig(rules=NO_SLIP),
            clock=clock,
        )
        for _ in range(2)
    ]


def _step_bar(index: int, price: int, move: int) -> tuple[Bar, int]:
    """Bar `index`: opens at `price`, closes `move` away, a point beyond both; and its close."""
    close = price + move
    low, high = min(price, close) - 1, max(price, close) + 1
    return make_bar(index, str(price), str(high), str(low), str(close)), close


def _free_in_snapshot(venue: PaperVenue, asset: str) -> Decimal:
    return venue.snapshot_balances().get(asset, Balance(asset, Decimal(0))).free


async def test_the_free_balance_of_one_asset_is_what_the_snapshot_says(
    spot: Instrument, perp: Instrument, clock: SimulatedClock, bar: BarMaker
) -> None:
    venue = PaperVenue(
        [spot, perp],
        balances={"USDT": Decimal(1000), "ETH": Decimal(2)},
        config=PaperVenueConfig(rules=NO_SLIP),
        clock=clock,
    )
    venue.process_bar(bar(0, "100", "101", "99", "100", symbol=SPOT))
    venue.process_bar(bar(0, "100", "101", "99", "100"))
    orders = [
        Order("b1", SPOT, OrderSide.BUY, OrderType.LIMIT, Decimal(3), price=Decimal(95)),
        Order("s1", SPOT, OrderSide.SELL, OrderType.LIMIT, Decimal("1.5"), price=Decimal(120)),
        Order("m1", SPOT, OrderSide.BUY, OrderType.MARKET, Decimal(1)),
        Order("p1", PERP, OrderSide.BUY, OrderType.MARKET, Decimal(2), leverage=Decimal(4)),
    ]
    seen = []
    for order in orders:
        await venue.place_order(order)
        seen.append([venue._free(a) == _free_in_snapshot(venue, a) for a in ("USDT", "ETH", "X")])
    venue.process_bar(bar(1, "100", "101", "99", "100"))  # the perpetual's margin is taken
    seen.append([venue._free(a) == _free_in_snapshot(venue, a) for a in ("USDT", "ETH", "X")])
    assert seen == [[True, True, True]] * 5
    assert venue._free("USDT") < Decimal(1000)
    with pytest.raises(OrderRejected, match="insufficient balance"):
        await venue.place_order(
            Order("b2", SPOT, OrderSide.BUY, OrderType.LIMIT, Decimal(100), price=Decimal(95))
        )


def _order_for(action: str, index: int, positions: list[Position]) -> Order:
    cid = f"{action}-{index}"
    held = positions[0] if positions else None
    if action in ("buy", "sell"):
        side = OrderSide.BUY if action == "buy" else OrderSide.SELL
        return Order(cid, PERP, side, OrderType.MARKET, Decimal(1), leverage=Decimal(5))
    closing = OrderSide.SELL if held is None or held.side is PositionSide.LONG else OrderSide.BUY
    if action == "reduce":
        return Order(cid, PERP, closing, OrderType.MARKET, Decimal("0.5"), reduce_only=True)
    trigger = Decimal(90) if closing is OrderSide.SELL else Decimal(110)
    return Order(
        cid, PERP, closing, OrderType.STOP, Decimal(1), stop_price=trigger, reduce_only=True
    )


async def test_a_call_with_no_fault_armed_still_counts_for_a_fault_armed_later(
    perp: Instrument, clock: SimulatedClock, bar: BarMaker
) -> None:
    venue = PaperVenue([perp], balances={"USDT": Decimal(1000)}, clock=clock)
    venue.process_bar(bar(0, "100", "101", "99", "100"))
    assert await venue.open_orders() == []
    assert await venue.open_orders() == []
    assert venue.call_counts["open_orders"] == 2
    assert venue.faults.history == []
    venue.faults.add(Fault.transient("open_orders", on_call=3))
    venue.faults.add(Fault.latency(7.0, "open_orders"))
    before = clock.monotonic()
    with pytest.raises(TransientError):
        await venue.open_orders()
    assert clock.monotonic() == before + 7.0
    assert [(record.call_number, record.kind.value) for record in venue.faults.history] == [
        (3, "transient"),
        (3, "latency"),
    ]


@pytest.mark.parametrize("signed", ["0", "1.5", "-2"])
def test_a_trade_books_point_is_the_equity_point_of_its_equity_and_position(
    signed: str,
) -> None:
    book = TradeBook(PERP, Decimal(10_000))
    quantity = Decimal(signed)
    if quantity:
        side = OrderSide.BUY if quantity > 0 else OrderSide.SELL
        book.apply(
            Fill(
                "f1",
                "e1",
                "v1",
                PERP,
                side,
                abs(quantity),
                Decimal(100),
                Decimal("0.06"),
                "USDT",
                Liquidity.TAKER,
                T0,
            )
        )
    point = book.point(T0, Decimal("103.5"))
    expected = EquityPoint(T0, book.equity(Decimal("103.5")), book.position)
    assert type(point) is EquityPoint
    assert point == expected
    assert [getattr(point, f.name) for f in dataclasses.fields(EquityPoint)] == [
        T0,
        expected.equity,
        quantity,
    ]


def test_a_fresh_store_replaces_the_file_with_an_empty_current_schema(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "bt.db"
    path.parent.mkdir()
    path.write_bytes(b"not a database")
    stale = path.with_name("bt.db-wal")
    stale.write_bytes(b"a log from another run")
    url = fresh_store(path)
    assert url == f"sqlite:///{path}"
    assert not stale.exists()
    assert migrate.current(url) == migrate.head()

    async def rows() -> tuple[int, int, int]:
        ledger = await TradingLedger.open(url, upgrade=False)
        try:
            return (
                len(await ledger.orders()),
                len(await ledger.fills()),
                len(await ledger.closed_positions()),
            )
        finally:
            await ledger.close()

    assert run_simulated(rows()) == (0, 0, 0)
    # A second run over the same path starts from nothing again.
    with sqlite3.connect(path) as connection:
        connection.execute(
            "INSERT INTO legato_trading_balances (asset, total, updated_at) VALUES ('X', '1', 0)"
        )
    connection.close()
    fresh_store(path)
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT COUNT(*) FROM legato_trading_balances").fetchone() == (0,)
    connection.close()


def test_a_scratch_store_skips_fsyncs_and_holds_the_file_for_its_one_connection(
    tmp_path: Path,
) -> None:
    url = fresh_store(tmp_path / "bt.db")

    async def settings() -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
        ledger = await TradingLedger.open(url, upgrade=False)
        try:
            await use_as_scratch(ledger.database)
            return (
                await ledger.database.run("PRAGMA synchronous"),
                await ledger.database.run("PRAGMA locking_mode"),
            )
        finally:
            await ledger.close()

    assert run_simulated(settings()) == ([(0,)], [("exclusive",)])


def test_a_production_run_leaves_its_rows_readable_after_it_ends(
    tmp_path: Path, perp: Instrument, bar: BarMaker
) -> None:
    path = tmp_path / "bt.db"
    bars = [bar(i, 100, 101, 99, 100) for i in range(6)]
    result = production_backtest(
        ScriptedStrategy({1: buy("1")}), bars, perp, store=path, rules=NO_SLIP
    )
    with sqlite3.connect(path) as connection:
        (orders,) = connection.execute("SELECT COUNT(*) FROM legato_trading_orders").fetchone()
        (fills,) = connection.execute("SELECT COUNT(*) FROM legato_trading_fills").fetchone()
    connection.close()
    assert fills == len(result.fills) >= 1
    assert orders >= 3  # the entry, its stop-loss and take-profit


def test_a_partly_filled_entry_is_protected_before_the_next_bar(
    tmp_path: Path, perp: Instrument, bar: BarMaker
) -> None:
    # Bar 2 has volume for half the entry (a quarter of 2 BTC); bar 3 could fill the rest.
    bars = [
        bar(0, "20000", "20010", "19990", "20000"),
        bar(1, "20000", "20010", "19990", "20000"),
        bar(2, "20000", "20010", "19990", "20000", volume="2"),
        bar(3, "20000", "20010", "19990", "20000"),
        bar(4, "20000", "20010", "19990", "20000"),
        bar(5, "20000", "20010", "19990", "20000"),
    ]
    store = tmp_path / "bt.db"
    result = production_backtest(
        ScriptedStrategy({1: buy("1", stop="0.02", target="0.04")}),
        bars,
        perp,
        rules=MatchingRules(slippage_bps=Decimal(0)),
        store=store,
    )
    (fill,) = result.fills
    assert (fill.quantity, fill.timestamp) == (Decimal("0.5"), bars[2].timestamp)
    assert result.final_position == Decimal("0.5")

    async def booked() -> tuple[Decimal, str | None, list[OrderStatus]]:
        ledger = await TradingLedger.open(f"sqlite:///{store}", upgrade=False)
        try:
            position = await ledger.position(PERP)
            assert position is not None
            entries = [o for o in await ledger.orders() if o.role is OrderRole.ENTRY]
            return (
                position.quantity,
                position.stop_loss_order_id,
                [o.order.status for o in entries],
            )
        finally:
            await ledger.close()

    quantity, stop_loss, statuses = run_simulated(booked())
    assert quantity == Decimal("0.5")
    assert stop_loss is not None
    assert statuses == [OrderStatus.CANCELLED]
