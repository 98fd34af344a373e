"""Full brackets (entry, stop-loss, take-profit) per second through the execution manager.

Run: ``python -m benchmarks.execution``. Prints one JSON object.

Setup: the paper venue with zero added latency and budgets too large to ever wait, the
SQLite store in a temporary file, a real event loop and `RealClock`. A market feed task
processes a quiet bar every `BAR_EVERY` seconds, so a market entry fills on the next bar
(what the entry waits for is the market, not the manager; `fill_poll_interval` is set to
the same period). Each bracket is one `execute_trade` call, timed from call to return, and
runs alone; between brackets the position is flattened and its protective orders cancelled
directly on the venue, outside the timing, so every bracket meets the same state.

Reported: brackets per second (sequential), p50 and p99 latency per bracket, and what one
bracket costs in venue calls.
"""

from __future__ import annotations

import asyncio
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from legato.kernel.clock import RealClock
from legato.kernel.logs import configure_logging
from legato.kernel.ratelimit import Budget
from legato.trading.execution import ExecutionConfig, OrderExecutionManager
from legato.trading.instruments import Instrument, InstrumentKind
from legato.trading.ledger import TradingLedger
from legato.trading.market_data import Bar
from legato.trading.orders import Order, OrderSide, OrderType
from legato.trading.paper_venue import PaperVenue, PaperVenueConfig
from legato.trading.proposals import TradeProposal

BRACKETS = 300
WARMUP = 20
BAR_EVERY = 0.0005  # seconds of real time between bars
SYMBOL = "BTC-USDT-PERP"
UNLIMITED = Budget(limit=10**9, per=1.0)


def _bar(index: int) -> Bar:
    price = Decimal(20000)
    return Bar(
        SYMBOL,
        datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=5 * index),
        price,
        price + 10,
        price - 10,
        price,
        Decimal(1000),
    )


async def _feed(venue: PaperVenue, stop: asyncio.Event) -> None:
    index = 1
    while not stop.is_set():
        venue.process_bar(_bar(index))
        index += 1
        await asyncio.sleep(BAR_EVERY)


async def _flatten(venue: PaperVenue, number: int) -> None:
    for order in await venue.open_orders(SYMBOL):
        await venue.cancel_order(client_order_id=order.client_order_id)
    for position in await venue.positions():
        await venue.place_order(
            Order(
                f"flat-{number}",
                SYMBOL,
                position.side.closing_side,
                OrderType.MARKET,
                position.quantity,
                reduce_only=True,
            )
        )
    flat = False
    while not flat:
        # The closing order fills on the feed's next bar.
        await asyncio.sleep(BAR_EVERY)
        flat = not await venue.positions()


async def _run(path: Path) -> dict[str, object]:
    clock = RealClock()
    instrument = Instrument(
        SYMBOL,
        "BTC",
        "USDT",
        Decimal("0.1"),
        Decimal("0.001"),
        Decimal(5),
        InstrumentKind.PERPETUAL,
        Decimal(20),
    )
    venue = PaperVenue(
        [instrument],
        balances={"USDT": Decimal(10**9)},
        config=PaperVenueConfig(order_budget=UNLIMITED, general_budget=UNLIMITED),
        clock=clock,
    )
    venue.process_bar(_bar(0))
    ledger = await TradingLedger.open(f"sqlite:///{path}", clock=clock)
    manager = OrderExecutionManager(
        venue,
        ledger,
        rng=random.Random(1),
        clock=clock,
        config=ExecutionConfig(fill_poll_interval=BAR_EVERY, confirm_interval=BAR_EVERY),
    )
    proposal = TradeProposal(
        symbol=SYMBOL,
        side=OrderSide.BUY,
        quantity=Decimal("0.010"),
        entry_price=Decimal(20000),
        stop_loss=Decimal(19000),
        take_profit=Decimal(21000),
        leverage=Decimal(5),
    )
    stop = asyncio.Event()
    latencies: list[float] = []
    measured = 0.0
    calls_before = 0
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(_feed(venue, stop))
        for number in range(WARMUP + BRACKETS):
            if number == WARMUP:
                calls_before = sum(venue.call_counts.values())
            started = time.perf_counter()
            result = await manager.execute_trade(proposal)
            elapsed = time.perf_counter() - started
            if not result.success:
                raise RuntimeError(f"bracket {number} failed: {result}")
            calls_after = sum(venue.call_counts.values())
            if number >= WARMUP:
                latencies.append(elapsed)
                measured += elapsed
            await _flatten(venue, number)
            if number >= WARMUP:
                # The flattening calls are not part of the bracket.
                calls_before += sum(venue.call_counts.values()) - calls_after
        stop.set()
    calls = sum(venue.call_counts.values()) - calls_before
    intents = len(await ledger.intents())
    await ledger.close()
    latencies.sort()
    return {
        "benchmark": "execution",
        "brackets": BRACKETS,
        "brackets_per_second": round(BRACKETS / measured, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 3),
        "max_ms": round(latencies[-1] * 1000, 3),
        "venue_calls_per_bracket": round(calls / BRACKETS, 2),
        "intents_recorded": intents,
        "bar_every_ms": BAR_EVERY * 1000,
        "store": "sqlite (WAL, synchronous=NORMAL), temporary file",
        "venue": "paper, zero added latency, unlimited budgets",
        "python": sys.version.split()[0],
        "machine": platform.machine(),
    }


def main() -> None:
    """Run the benchmark and print its JSON result."""
    configure_logging("warning", "console")
    with tempfile.TemporaryDirectory() as directory:
        result = asyncio.run(_run(Path(directory) / "bench.db"))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
