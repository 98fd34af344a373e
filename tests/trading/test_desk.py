"""The desk runtime on simulated time: the whole desk trades a scripted market end to end."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from legato.kernel.clock import Clock
from legato.kernel.errors import ValidationError
from legato.kernel.simulation import SimulatedClock, run_simulated
from legato.trading.decision_log import DecisionLog, DecisionRecord, PipelineStatus
from legato.trading.desk import STOP_GRACE_SECONDS, Desk, desk_bars
from legato.trading.desk_config import (
    DataSettings,
    DataSource,
    DeskConfig,
    trading_recorded_market,
)
from legato.trading.desk_tasks import Scheduling
from legato.trading.faults import Fault
from legato.trading.ledger import IntentStage, LedgerOrder, OrderRole, TradingLedger
from legato.trading.market_data import Bar, default_market_data_dir, load_bars
from legato.trading.orders import OrderStatus

from .agents.scripted_bars import SYMBOL, T0, trend
from .backtest.scripted_strategy import ScriptedStrategy
from .desk_harness import (
    empty_desk_tables,
    paused_decisions_and_orders,
    scripted_desk_config,
)

# A bar a virtual second: the loops run a few times a bar, not hundreds.
CONFIG = scripted_desk_config(speed=300.0)


@pytest.fixture
def desk_url(store_url: str) -> str:
    """An empty, migrated store on each backend."""
    empty_desk_tables(store_url)
    return store_url


# The bar of the trend fixture at which the kill-switch tests pull it: two bars after the
# entry was decided.
KILL_AT = 71


def kill_at(bars: Sequence[Bar], at: int, kill: Callable[[], None]) -> Iterator[Bar]:
    """Yield `bars`, calling `kill` just before bar `at` goes out."""
    for index, bar in enumerate(bars):
        if index == at:
            kill()
        yield bar


async def test_a_backtest_run_trades_the_uptrend_into_a_protected_position(
    clock: Clock, desk_url: str
) -> None:
    desk = Desk(CONFIG, store_url=desk_url, clock=clock, bars=trend(72, drift=0.003))
    fed = await desk.run()
    ledger = await TradingLedger.open(desk_url, upgrade=False, clock=clock)
    try:
        position = await ledger.position(SYMBOL)
        executed = await DecisionLog(ledger.database).decisions(status=PipelineStatus.EXECUTED)
        stop = await ledger.get_order(position.stop_loss_order_id or "") if position else None
    finally:
        await ledger.close()
    assert fed == 72
    assert len(executed) == 1
    assert position is not None
    assert stop is not None
    assert stop.order.status is OrderStatus.ACCEPTED
    assert position.take_profit_order_id is not None
    telemetry = desk.telemetry
    assert telemetry is not None
    assert telemetry.open_positions == 1
    assert set(telemetry.latencies) >= {"analysis", "decision", "risk", "execution"}


async def test_the_kill_switch_stops_new_trades_and_closes_the_position(
    clock: Clock, desk_url: str
) -> None:
    bars = trend(85, drift=0.003)
    desk: Desk

    def feed() -> Iterator[Bar]:
        # Two bars after the entry was decided: the position is open and protected.
        return kill_at(bars, KILL_AT, lambda: desk.kill_switch())

    # Ten virtual seconds a bar: the bracket is complete before the next bar arrives.
    slower = dataclasses.replace(CONFIG, data=DataSettings(speed=30.0))
    desk = Desk(slower, store_url=desk_url, clock=clock, bars=feed())
    await desk.run()
    ledger = await TradingLedger.open(desk_url, upgrade=False, clock=clock)
    try:
        open_positions = await ledger.open_positions()
        closes = [r for r in await ledger.orders(symbol=SYMBOL) if r.role is OrderRole.CLOSE]
        protective = [
            r
            for r in await ledger.orders(symbol=SYMBOL, open_only=True)
            if r.role in (OrderRole.STOP_LOSS, OrderRole.TAKE_PROFIT)
        ]
        executed = await DecisionLog(ledger.database).decisions(status=PipelineStatus.EXECUTED)
        closed = await ledger.closed_positions()
    finally:
        await ledger.close()
    assert len(executed) == 1
    assert open_positions == []
    assert [r.order.status for r in closes] == [OrderStatus.FILLED]
    assert protective == []
    # The last telemetry counts the closed trade's realized PnL and fees.
    telemetry = desk.telemetry
    assert telemetry is not None
    assert len(closed) == 1
    assert closed[0].fees_paid > 0
    assert (telemetry.realized_pnl, telemetry.fees_paid) == (
        closed[0].realized_pnl,
        closed[0].fees_paid,
    )


async def test_a_paused_symbol_decides_and_stores_but_never_trades(
    clock: Clock, desk_url: str
) -> None:
    desk = Desk(CONFIG, store_url=desk_url, clock=clock, bars=trend(90, drift=0.003))
    await desk.start()
    desk.pause(SYMBOL)
    await desk.run()
    paused, orders = await paused_decisions_and_orders(desk_url, clock)
    assert paused
    assert orders == []


def test_synthetic_bars_are_seeded_and_capped() -> None:
    config = DeskConfig(data=DataSettings(seed=3, bars=50))
    first = list(desk_bars(config, T0))
    assert len(first) == 50
    assert first == list(desk_bars(config, T0))
    assert [bar.timestamp for bar in first] == sorted(bar.timestamp for bar in first)


async def test_a_restarted_desk_replaying_the_same_bars_decides_nothing_twice(
    clock: Clock, desk_url: str
) -> None:
    await Desk(CONFIG, store_url=desk_url, clock=clock, bars=trend(72, drift=0.003)).run()
    ledger = await TradingLedger.open(desk_url, upgrade=False, clock=clock)
    try:
        decided_before = await DecisionLog(ledger.database).decisions(limit=1000)
        orders_before = await ledger.orders()
    finally:
        await ledger.close()
    restarted = Desk(CONFIG, store_url=desk_url, clock=clock, bars=trend(72, drift=0.003))
    assert await restarted.run() == 72
    ledger = await TradingLedger.open(desk_url, upgrade=False, clock=clock)
    try:
        decided_after = await DecisionLog(ledger.database).decisions(limit=1000)
        entries_after = [r for r in await ledger.orders() if r.role is OrderRole.ENTRY]
    finally:
        await ledger.close()
    before = {record.key: record for record in decided_before}
    # Bars decided before keep their one decision; bars skipped then (superseded while
    # the entry filled) may be decided now, but nothing new is traded.
    assert all(before[r.key] == r for r in decided_after if r.key in before)
    assert {r.status for r in decided_after if r.key not in before} <= {PipelineStatus.NO_TRADE}
    assert entries_after == [r for r in orders_before if r.role is OrderRole.ENTRY]


async def test_a_stop_request_ends_a_live_paced_run_without_waiting_for_the_next_bar(
    clock: Clock, desk_url: str
) -> None:
    # The default synthetic feed never ends; at speed 1 the next bar is five minutes away.
    live = dataclasses.replace(CONFIG, data=DataSettings(speed=1.0))
    desk = Desk(live, store_url=desk_url, clock=clock)
    started = clock.monotonic()

    async def operator() -> None:
        await clock.sleep(10)
        desk.request_stop()

    async with asyncio.TaskGroup() as group:
        group.create_task(operator())
        fed = await desk.run()
    assert fed == 1
    assert clock.monotonic() - started < 15


async def _wait_for_order(desk: Desk, clock: Clock, role: OrderRole, status: OrderStatus) -> str:
    # Polls on virtual time; the deadline (longer than any feed here) turns "never happened"
    # into a failure instead of a test that waits for ever.
    deadline = clock.monotonic() + 30_000
    while clock.monotonic() < deadline:
        for record in await desk.ledger.orders(symbol=SYMBOL):
            if record.role is role and record.order.status is status:
                return record.order.client_order_id
        await clock.sleep(2)
    raise AssertionError(f"no {role.value} order became {status.value}")


async def test_closing_a_position_keeps_its_protection_until_the_close_has_filled(
    clock: Clock, desk_url: str
) -> None:
    slower = dataclasses.replace(CONFIG, data=DataSettings(speed=30.0))
    desk = Desk(slower, store_url=desk_url, clock=clock, bars=trend(85, drift=0.003))
    await desk.start()
    seen: dict[str, object] = {}

    async def operator() -> None:
        stop_loss = await _wait_for_order(desk, clock, OrderRole.STOP_LOSS, OrderStatus.ACCEPTED)
        close = await desk.close_position(SYMBOL)
        assert close is not None
        # Until the next bar fills the close, the stop-loss still guards the position.
        seen["stop_loss_while_closing"] = (
            await desk.venue.get_order(client_order_id=stop_loss)
        ).status
        seen["ids"] = (stop_loss, close.client_order_id)

    async with asyncio.TaskGroup() as group:
        group.create_task(operator())
        await desk.run()
    assert seen["stop_loss_while_closing"] is OrderStatus.ACCEPTED
    stop_loss, close = seen["ids"]  # type: ignore[misc]
    ledger = await TradingLedger.open(desk_url, upgrade=False, clock=clock)
    try:
        closed = await ledger.get_order(close)
        protection = await ledger.get_order(stop_loss)
    finally:
        await ledger.close()
    assert closed is not None
    assert closed.order.status is OrderStatus.FILLED
    # Once flat, the protection monitor cancelled what guarded the closed position.
    assert protection is not None
    assert protection.order.status is OrderStatus.CANCELLED


async def test_a_stop_does_not_wait_for_an_entry_fill_that_no_bar_will_bring(
    clock: Clock, desk_url: str
) -> None:
    # Five virtual minutes a bar: the entry sent on one bar fills on the next.
    live = dataclasses.replace(CONFIG, data=DataSettings(speed=1.0))
    desk = Desk(live, store_url=desk_url, clock=clock, bars=trend(85, drift=0.003))
    await desk.start()
    stopped_at: list[float] = []

    async def operator() -> None:
        await _wait_for_order(desk, clock, OrderRole.ENTRY, OrderStatus.ACCEPTED)
        stopped_at.append(clock.monotonic())
        desk.request_stop()

    async with asyncio.TaskGroup() as group:
        group.create_task(operator())
        await desk.run()
    # Well before the next bar (300 s) or the entry's fill timeout: the grace and shutdown only.
    assert clock.monotonic() - stopped_at[0] < STOP_GRACE_SECONDS + 30
    ledger = await TradingLedger.open(desk_url, upgrade=False, clock=clock)
    try:
        unfinished = [intent for intent in await ledger.intents() if not intent.stage.is_final]
    finally:
        await ledger.close()
    # The cut-short execution is durable: the next start's recover() carries it on.
    assert len(unfinished) == 1


async def test_a_restart_resumes_an_entry_cut_short_while_the_bars_flow_then_decides(
    clock: Clock, desk_url: str
) -> None:
    # An entry waiting for its fill when the desk stopped can only fill on a bar: the next
    # start resumes it while the venue matches the new bars, and decides nothing new until
    # it is protected (before, the start waited out the entry's five-minute timeout first).
    live = dataclasses.replace(CONFIG, data=DataSettings(speed=1.0))
    bars = trend(100, drift=0.003)
    desk = Desk(live, store_url=desk_url, clock=clock, bars=bars)
    await desk.start()

    async def operator() -> None:
        await _wait_for_order(desk, clock, OrderRole.ENTRY, OrderStatus.ACCEPTED)
        desk.request_stop()

    async with asyncio.TaskGroup() as group:
        group.create_task(operator())
        fed = await desk.run()
    # A strategy on the restarted desk shows when deciding starts again (the agents would
    # warm their indicators up over the remaining bars first).
    watcher = ScriptedStrategy({})
    restarted = Desk(
        live, store_url=desk_url, clock=clock, bars=bars[fed:], strategies={SYMBOL: watcher}
    )
    started = clock.monotonic()
    await restarted.start()
    assert clock.monotonic() - started < 30  # not the entry's 300 s timeout
    await restarted.run()
    ledger = await TradingLedger.open(desk_url, upgrade=False, clock=clock)
    try:
        (intent,) = await ledger.intents()
        orders = await ledger.orders(symbol=SYMBOL)
    finally:
        await ledger.close()
    # The entry filled on the restarted desk's bars and was protected (not timed out).
    assert intent.stage is IntentStage.BRACKETED
    entry = next(r.order for r in orders if r.role is OrderRole.ENTRY)
    assert entry.status is OrderStatus.FILLED
    assert entry.updated_at is not None
    assert entry.updated_at > bars[fed - 1].timestamp
    assert {r.role for r in orders} >= {OrderRole.STOP_LOSS, OrderRole.TAKE_PROFIT}
    # Deciding started again once the resumed entry was protected: not on the bar that
    # filled it, and on every bar after that.
    assert 0 < len(watcher.seen) < len(bars) - fed
    assert watcher.seen == bars[-len(watcher.seen) :]
    assert watcher.seen[0].timestamp >= entry.updated_at


async def test_a_restarted_desk_finds_the_venue_as_it_left_it(clock: Clock, desk_url: str) -> None:
    first = Desk(CONFIG, store_url=desk_url, clock=clock, bars=trend(72, drift=0.003))
    await first.run()
    second = Desk(CONFIG, store_url=desk_url, clock=clock, bars=[])
    await second.start()
    try:
        position = await second.ledger.position(SYMBOL)
        assert position is not None
        assert position.stop_loss_order_id is not None
        on_venue = {p.symbol: p for p in await second.venue.positions()}
        stop = await second.venue.get_order(client_order_id=position.stop_loss_order_id)
    finally:
        await second.stop()
    # The paper venue's book came back from the store: same position, stop-loss still live.
    assert on_venue[SYMBOL].quantity == position.quantity
    assert stop.status is OrderStatus.ACCEPTED


async def test_a_stop_waits_for_a_filled_position_to_get_its_stop_loss(
    clock: Clock, desk_url: str
) -> None:
    slower = dataclasses.replace(CONFIG, data=DataSettings(speed=30.0))
    desk = Desk(slower, store_url=desk_url, clock=clock, bars=trend(85, drift=0.003))
    await desk.start()
    # Every order placement takes 8 s: longer than the stop's short grace, so the stop-loss
    # of a just-filled entry is still on its way when the stop request comes.
    desk.venue.faults.add(Fault.latency(8.0, method="place_order", times=None))

    async def operator() -> None:
        await _wait_for_order(desk, clock, OrderRole.ENTRY, OrderStatus.FILLED)
        desk.request_stop()

    async with asyncio.TaskGroup() as group:
        group.create_task(operator())
        await desk.run()
    ledger = await TradingLedger.open(desk_url, upgrade=False, clock=clock)
    try:
        position = await ledger.position(SYMBOL)
        stop = await ledger.get_order(position.stop_loss_order_id or "") if position else None
    finally:
        await ledger.close()
    assert position is not None
    assert stop is not None
    assert stop.order.status is OrderStatus.ACCEPTED


def test_a_scratch_store_is_refused_with_the_orchestrator_scheduling() -> None:
    # The task store's connection would be locked out by the scratch store's exclusive lock.
    with pytest.raises(ValidationError) as raised:
        Desk(
            CONFIG,
            store_url="sqlite:///unused.db",
            scheduling=Scheduling.ORCHESTRATOR,
            scratch_store=True,
        )
    assert raised.value.field == "scratch_store"


def _kill_switch_run(
    store: Path, *, scratch_store: bool
) -> tuple[list[DecisionRecord], list[LedgerOrder]]:
    # The kill-switch scenario above (a position opened, protected, then closed), on its own
    # simulated time; returns every stored decision and order.
    bars = trend(85, drift=0.003)
    clock = SimulatedClock()
    url = f"sqlite:///{store}"
    slower = dataclasses.replace(CONFIG, data=DataSettings(speed=30.0))
    desk: Desk

    def feed() -> Iterator[Bar]:
        return kill_at(bars, KILL_AT, lambda: desk.kill_switch())

    desk = Desk(slower, store_url=url, clock=clock, bars=feed(), scratch_store=scratch_store)

    async def run() -> tuple[list[DecisionRecord], list[LedgerOrder]]:
        await desk.run()
        ledger = await TradingLedger.open(url, upgrade=False, clock=clock)
        try:
            decisions = await DecisionLog(ledger.database).decisions(limit=1000)
            orders = await ledger.orders()
        finally:
            await ledger.close()
        return list(decisions), list(orders)

    return run_simulated(run(), clock=clock)


def test_a_desk_on_a_scratch_store_decides_and_trades_as_on_a_plain_one(tmp_path: Path) -> None:
    plain = _kill_switch_run(tmp_path / "plain.db", scratch_store=False)
    scratch = _kill_switch_run(tmp_path / "scratch.db", scratch_store=True)
    decisions, orders = scratch
    assert {record.status for record in decisions} >= {
        PipelineStatus.EXECUTED,
        PipelineStatus.NO_TRADE,
    }
    assert any(record.role is OrderRole.CLOSE for record in orders)
    assert scratch == plain


async def test_a_scratch_store_keeps_other_connections_out_while_the_desk_runs(
    clock: Clock, tmp_path: Path
) -> None:
    store = tmp_path / "scratch.db"
    desk = Desk(CONFIG, store_url=f"sqlite:///{store}", clock=clock, bars=[], scratch_store=True)
    await desk.start()
    try:
        other = sqlite3.connect(store, timeout=0)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("SELECT COUNT(*) FROM legato_desk_decisions").fetchall()
        finally:
            other.close()
    finally:
        await desk.stop()


@pytest.mark.skipif(not default_market_data_dir().is_dir(), reason="recorded data not found")
def test_a_recorded_file_of_trades_feeds_the_desk_as_bars_of_the_data_interval() -> None:
    recorded = default_market_data_dir() / "binance_XRP-ETH_trades_2019-10.csv"
    config = trading_recorded_market(
        DeskConfig(),
        "XRP-ETH",
        list(load_bars(default_market_data_dir() / "binance_XRP-ETH_1m_2019-10.csv")),
    )
    config = dataclasses.replace(
        config,
        data=DataSettings(source=DataSource.CSV, path=str(recorded), interval_seconds=60),
    )
    assert list(desk_bars(config, T0)) == list(
        load_bars(default_market_data_dir() / "binance_XRP-ETH_1m_2019-10.csv")
    )
