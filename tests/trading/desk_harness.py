"""Test support for the coordinator and desk tests: the real desk parts on a test store.

Nothing here stands in for Legato code: `desk_parts` builds the real paper venue, ledger,
tracker, execution manager, risk engine, decision log and coordinator on the test's clock,
with the scripted market of tests/trading/agents/scripted_bars.py.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal

import psycopg

from legato.kernel.bus import MessageBus
from legato.kernel.clock import Clock
from legato.trading.conflicts import ConflictResolver
from legato.trading.coordinator import CoordinatorAgent
from legato.trading.decision_log import DecisionLog, DecisionRecord, PipelineStatus
from legato.trading.desk_config import DataSettings, DeskConfig, StrategyConfig, VenueSettings
from legato.trading.execution import ExecutionConfig, OrderExecutionManager
from legato.trading.instruments import Instrument, InstrumentKind
from legato.trading.ledger import LedgerOrder, TradingLedger
from legato.trading.paper_venue import PaperVenue
from legato.trading.risk import RiskLimits, RiskManagementEngine
from legato.trading.tracker import PositionTracker

from .agents.scripted_bars import SYMBOL
from .execution_harness import GENEROUS, empty_trading_tables

DESK_TABLES = "legato_desk_decisions, legato_desk_votes, legato_desk_conflicts"
# Small enough that a 0.5% risk budget buys less than one scripted bar's volume (100).
START = Decimal(10_000)

# The scripted market trades around 100: a tick of 0.01 keeps the ATR-placed levels apart.
INSTRUMENT = Instrument(
    symbol=SYMBOL,
    base_asset="BTC",
    quote_asset="USDT",
    tick_size=Decimal("0.01"),
    lot_size=Decimal("0.001"),
    min_notional=Decimal(5),
    kind=InstrumentKind.PERPETUAL,
    max_leverage=Decimal(20),
)


def scripted_desk_config(speed: float) -> DeskConfig:
    """The whole desk on the scripted market, replayed at `speed` (bars are 300 s long).

    The scripted bars trade 100 units each, so an order may fill in one bar.
    """
    return DeskConfig(
        instruments=(INSTRUMENT,),
        strategies=(StrategyConfig(symbols=(SYMBOL,)),),
        venue=VenueSettings(starting_balance=START, participation=Decimal(1)),
        data=DataSettings(speed=speed),
        guard_interval=2.0,
        telemetry_interval=60.0,
    )


async def paused_decisions_and_orders(
    url: str, clock: Clock
) -> tuple[list[DecisionRecord], list[LedgerOrder]]:
    """After a run: the decisions stored as paused, and every order of the scripted symbol."""
    ledger = await TradingLedger.open(url, upgrade=False, clock=clock)
    try:
        paused = await DecisionLog(ledger.database).decisions(status=PipelineStatus.PAUSED)
        orders = await ledger.orders(symbol=SYMBOL)
    finally:
        await ledger.close()
    return paused, orders


def empty_desk_tables(url: str) -> None:
    """Delete every trading ledger and decision log row of a PostgreSQL test store."""
    empty_trading_tables(url)
    if url.startswith("postgresql"):
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(f"TRUNCATE {DESK_TABLES} RESTART IDENTITY")


@dataclass
class DeskParts:
    """The real components of one symbol's desk, wired together."""

    venue: PaperVenue
    ledger: TradingLedger
    tracker: PositionTracker
    manager: OrderExecutionManager
    decisions: DecisionLog
    bus: MessageBus
    coordinator: CoordinatorAgent


@asynccontextmanager
async def desk_parts(
    url: str,
    clock: Clock,
    *,
    strategy: StrategyConfig | None = None,
    resolvers: Mapping[str, ConflictResolver] | None = None,
) -> AsyncIterator[DeskParts]:
    """`async with desk_parts(url, clock) as parts:` the desk's parts on a running bus."""
    ledger = await TradingLedger.open(url, upgrade=False, clock=clock)
    try:
        async with MessageBus(clock=clock, rng=random.Random(3)) as bus:
            venue = PaperVenue([INSTRUMENT], balances={"USDT": START}, config=GENEROUS, clock=clock)
            tracker = PositionTracker(ledger, clock=clock, instruments_base={SYMBOL: "BTC"})
            await tracker.set_balances({"USDT": START})
            manager = OrderExecutionManager(
                venue,
                ledger,
                rng=random.Random(5),
                clock=clock,
                config=ExecutionConfig(fill_poll_interval=1.0),
                tracker=tracker,
                bus=bus,
            )
            decisions = DecisionLog(ledger.database)
            chosen = strategy if strategy is not None else StrategyConfig(symbols=(SYMBOL,))
            coordinator = CoordinatorAgent(
                instruments=[INSTRUMENT],
                strategies=[chosen],
                risk_engine=RiskManagementEngine([INSTRUMENT], RiskLimits()),
                executor=manager,
                tracker=tracker,
                decision_log=decisions,
                bus=bus,
                quote_asset="USDT",
                clock=clock,
                resolvers=resolvers,
            )
            yield DeskParts(venue, ledger, tracker, manager, decisions, bus, coordinator)
    finally:
        await ledger.close()
