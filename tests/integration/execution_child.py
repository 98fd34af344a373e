"""The trading process that test_execution_kill.py kills: a desk's execution, one trade.

    python execution_child.py trade   EXCHANGE_URL LEDGER_URL INTENT_ID [--stop-before SUFFIX]
                                      [--monitor]
    python execution_child.py recover EXCHANGE_URL LEDGER_URL INTENT_ID [--pause]

Both modes import everything first, print ``{"event": "ready"}`` and wait for a line on
stdin before touching the ledger or the exchange, so the parent can start the next process
ahead of time (a warm restart) without it acting early.

`trade` builds an `OrderExecutionManager` on the SQLite ledger with an `HttpVenue` and runs
`execute_trade(proposal, intent_id=INTENT_ID)`, then prints ``{"event": "result", ...}``
and waits to be killed. With `--stop-before SUFFIX` the process stops for good just before
it would send the order whose client id ends with SUFFIX (printing ``{"event": "stopped"}``):
the point between "recorded in the store" and "sent" that no exchange-side hold can reach.
With `--monitor` it goes on after the result as a running desk does: the protection monitor
(`monitor_protection`: book fills, cancel the protection of flat positions) every `CYCLE`
seconds, so a kill can land in the middle of an OCO cancel.

`recover` is what a restarted desk does (`Desk.start`): one reconciliation cycle, then
`manager.recover()`; then it runs the desk's loops (protection monitor, reconciler,
execution recovery) every `CYCLE` seconds until every intent is final and the reconciler
finds the ledger and the exchange in agreement, and prints ``{"event": "settled", ...}``.
With `--pause` the first time it is settled it prints ``{"event": "paused"}`` instead and
waits for another line on stdin, then runs its loops again until settled: the parent lets a
long-held request land at the exchange in between (the ghost order).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

import structlog

from legato.kernel.clock import RealClock
from legato.kernel.retry import Jitter, RetryPolicy
from legato.trading.balances import Balance
from legato.trading.execution import ExecutionConfig, ExecutionResult, OrderExecutionManager
from legato.trading.fills import Fill
from legato.trading.http_venue import HttpVenue
from legato.trading.instruments import Instrument
from legato.trading.ledger import TradingLedger
from legato.trading.market_data import Bar
from legato.trading.orders import Order, OrderSide
from legato.trading.positions import Position
from legato.trading.proposals import TradeProposal
from legato.trading.reconciler import Reconciler, ReconcilerConfig

SYMBOL = "BTC-USDT-PERP"
# The desk's loops, shortened to fit a test: a lost order is given up after GRACE seconds.
GRACE = 1.0
CYCLE = 0.2
SETTLE_DEADLINE = 30.0
QUICK = RetryPolicy(max_attempts=4, initial_delay=0.05, max_delay=0.2, jitter=Jitter.EQUAL)
CONFIG = ExecutionConfig(
    stop_loss_retry=QUICK,
    order_retry=QUICK,
    entry_timeout=20.0,
    fill_poll_interval=0.05,
    confirm_queries=2,
    confirm_interval=0.2,
    close_timeout=10.0,
    take_profit_retry_delay=0.5,
    partial_protect_after=0.3,
)


def proposal() -> TradeProposal:
    """A market long of 0.010 BTC at leverage 5, stop 19,500, take-profit 21,000."""
    return TradeProposal(
        symbol=SYMBOL,
        side=OrderSide.BUY,
        quantity=Decimal("0.010"),
        entry_price=Decimal(20000),
        stop_loss=Decimal(19500),
        take_profit=Decimal(21000),
        leverage=Decimal(5),
    )


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}, default=str), flush=True)


class StopBeforeSend:
    """The venue, except that the process stops for good before sending one order."""

    def __init__(self, venue: HttpVenue, suffix: str | None) -> None:
        self._venue = venue
        self._suffix = suffix

    @property
    def name(self) -> str:
        return self._venue.name

    def instrument(self, symbol: str) -> Instrument:
        return self._venue.instrument(symbol)

    async def place_order(self, order: Order) -> Order:
        if self._suffix is not None and order.client_order_id.endswith(self._suffix):
            emit("stopped", client_order_id=order.client_order_id)
            await asyncio.Event().wait()  # never set: the parent kills us here
        return await self._venue.place_order(order)

    async def cancel_order(
        self, *, client_order_id: str | None = None, venue_order_id: str | None = None
    ) -> Order:
        return await self._venue.cancel_order(
            client_order_id=client_order_id, venue_order_id=venue_order_id
        )

    async def get_order(
        self, *, client_order_id: str | None = None, venue_order_id: str | None = None
    ) -> Order:
        return await self._venue.get_order(
            client_order_id=client_order_id, venue_order_id=venue_order_id
        )

    async def open_orders(self, symbol: str | None = None) -> Sequence[Order]:
        return await self._venue.open_orders(symbol)

    async def fills(self, symbol: str | None = None) -> Sequence[Fill]:
        return await self._venue.fills(symbol)

    async def positions(self) -> Sequence[Position]:
        return await self._venue.positions()

    async def balances(self) -> Mapping[str, Balance]:
        return await self._venue.balances()

    def subscribe(self, symbol: str | None = None) -> AsyncIterator[Bar]:
        return self._venue.subscribe(symbol)


def summary(result: ExecutionResult) -> dict[str, Any]:
    return {
        "intent_id": result.intent_id,
        "status": result.status.value,
        "success": result.success,
        "error": result.error_message,
        "orders": {order.client_order_id: order.status.value for order in result.orders},
    }


async def trade(options: argparse.Namespace) -> None:
    clock = RealClock()
    ledger = await TradingLedger.open(options.ledger, upgrade=False, clock=clock)
    async with HttpVenue(options.exchange, clock=clock, timeout=30.0) as venue:
        manager = OrderExecutionManager(
            StopBeforeSend(venue, options.stop_before),
            ledger,
            rng=random.Random(1),
            clock=clock,
            config=CONFIG,
        )
        result = await manager.execute_trade(proposal(), intent_id=options.intent_id)
        emit("result", **summary(result))
        while options.monitor:
            await manager.monitor_protection()
            await clock.sleep(CYCLE)
        await asyncio.Event().wait()  # "done": the parent kills us after the result


async def recover(options: argparse.Namespace) -> int:
    clock = RealClock()
    ledger = await TradingLedger.open(options.ledger, upgrade=False, clock=clock)
    try:
        async with HttpVenue(options.exchange, clock=clock, timeout=30.0) as venue:
            manager = OrderExecutionManager(
                venue, ledger, rng=random.Random(2), clock=clock, config=CONFIG
            )
            reconciler = Reconciler(
                venue,
                ledger,
                clock=clock,
                config=ReconcilerConfig(
                    client_id_prefix=manager.config.client_id_prefix, grace_seconds=GRACE
                ),
                tracker=manager.tracker,
                on_resolved=manager.recover,
                in_progress=manager.orders_in_progress,
            )
            # What Desk.start() does before trading.
            await reconciler.reconcile()
            first = await manager.recover()
            started = clock.monotonic()
            cycles = 0
            pause = bool(options.pause)
            while True:
                await manager.monitor_protection()
                report = await reconciler.reconcile()
                await manager.recover()
                cycles += 1
                unfinished = [
                    intent.intent_id for intent in await ledger.intents(unfinished_only=True)
                ]
                settled = not unfinished and report.in_agreement
                if settled and pause:
                    pause = False
                    emit("paused", cycles=cycles)
                    if not await asyncio.to_thread(sys.stdin.readline):
                        return 1
                    started = clock.monotonic()
                    continue
                if settled or clock.monotonic() - started > SETTLE_DEADLINE:
                    emit(
                        "settled" if settled else "unsettled",
                        cycles=cycles,
                        first=[summary(result) for result in first],
                        unfinished=unfinished,
                        actions=[str(action) for action in report.plan.actions],
                    )
                    return 0 if settled else 1
                await clock.sleep(CYCLE)
    finally:
        await ledger.close()


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["trade", "recover"])
    parser.add_argument("exchange")
    parser.add_argument("ledger")
    parser.add_argument("intent_id")
    parser.add_argument("--stop-before")
    parser.add_argument("--monitor", action="store_true")
    parser.add_argument("--pause", action="store_true")
    options = parser.parse_args(argv)
    # Logs go to stderr (the parent keeps them); stdout carries only the events.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    emit("ready")
    if not sys.stdin.readline():
        return 1  # the parent went away before saying go
    if options.mode == "trade":
        asyncio.run(trade(options))
        return 0
    return asyncio.run(recover(options))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
