"""A scripted desk over a whole recorded market file: store and venue agree at the end.

The paper venue replays every bar of the recorded BTC/USDT perpetual file (Binance, 5-minute
bars, January 2023). A simple script opens a bracket whenever the desk is flat, every
`EVERY` bars, long or short by the recent trend, through the execution manager; the
protection monitor books fills and cancels the other protective order (OCO). At the end:

- the reconciler finds no difference between the store and the venue, balances included;
- every closed position's realized PnL and fees equal a recomputation from the venue's
  fills, done here independently of `Position` arithmetic;
- the store's quote balance equals the venue's.
"""

from __future__ import annotations

import asyncio
import random
from decimal import ROUND_DOWN, Decimal
from pathlib import Path

import pytest

from legato.kernel.clock import Clock
from legato.trading.execution import ExecutionConfig, ExecutionResult, OrderExecutionManager
from legato.trading.fills import Fill
from legato.trading.instruments import Instrument, InstrumentKind
from legato.trading.market_data import default_market_data_dir, load_bars
from legato.trading.matching import MatchingRules
from legato.trading.orders import OrderSide
from legato.trading.paper_venue import PaperVenue, PaperVenueConfig
from legato.trading.proposals import TradeProposal
from legato.trading.reconciler import Reconciler
from legato.trading.tracker import PositionTracker

from .execution_harness import FEES, START_BALANCE, ledger_opener

RECORDED = default_market_data_dir() / "binance_BTC-USDT-PERP_5m_2023-01.csv"
SYMBOL = "BTC-USDT-PERP"
EVERY = 60  # bars between attempts to open a trade (5 hours of market time)
BAR_SECONDS = 10.0  # virtual seconds between bars: the replay runs compressed
TICK = Decimal("0.1")


def btc_perp() -> Instrument:
    return Instrument(
        symbol=SYMBOL,
        base_asset="BTC",
        quote_asset="USDT",
        tick_size=TICK,
        lot_size=Decimal("0.001"),
        min_notional=Decimal(5),
        kind=InstrumentKind.PERPETUAL,
        max_leverage=Decimal(20),
    )


def on_tick(price: Decimal) -> Decimal:
    return (price / TICK).to_integral_value(rounding=ROUND_DOWN) * TICK


def proposal_at(close: Decimal, rising: bool) -> TradeProposal:
    side = OrderSide.BUY if rising else OrderSide.SELL
    sign = Decimal(1) if rising else Decimal(-1)
    return TradeProposal(
        symbol=SYMBOL,
        side=side,
        quantity=Decimal("0.050"),
        entry_price=close,
        stop_loss=on_tick(close * (1 - sign * Decimal("0.01"))),
        take_profit=on_tick(close * (1 + sign * Decimal("0.015"))),
        leverage=Decimal(3),
    )


def recomputed(fills: list[Fill]) -> list[tuple[Decimal, Decimal]]:
    """(realized PnL, fees) of each round trip, from fills alone, in order.

    A round trip starts when the net quantity leaves zero and ends when it returns to zero;
    its realized PnL is what the closing fills received minus what the opening fills paid
    (sign-adjusted for a short), which for a flat-to-flat trip is sells minus buys.
    """
    trips: list[tuple[Decimal, Decimal]] = []
    net = Decimal(0)
    cash = Decimal(0)
    fees = Decimal(0)
    for fill in fills:
        signed = fill.quantity if fill.side is OrderSide.BUY else -fill.quantity
        cash -= signed * fill.price
        fees += fill.fee
        net += signed
        if net == 0:
            trips.append((cash, fees))
            cash = Decimal(0)
            fees = Decimal(0)
    return trips


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    import shutil

    path = tmp_path / "legato.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.mark.skipif(not RECORDED.exists(), reason=f"recorded data missing: {RECORDED}")
async def test_a_scripted_desk_over_a_whole_recorded_file_ends_in_agreement_with_exact_pnl(
    clock: Clock, sqlite_url: str
) -> None:
    bars = list(load_bars(RECORDED))
    venue = PaperVenue(
        [btc_perp()],
        balances={"USDT": START_BALANCE},
        config=PaperVenueConfig(rules=MatchingRules(fees=FEES)),
        clock=clock,
    )
    results: list[ExecutionResult] = []
    async with ledger_opener(sqlite_url, clock)() as (ledger, _):
        tracker = PositionTracker(ledger, clock=clock)
        await tracker.set_balances({"USDT": START_BALANCE})
        manager = OrderExecutionManager(
            venue,
            ledger,
            rng=random.Random(2023),
            clock=clock,
            tracker=tracker,
            config=ExecutionConfig(fill_poll_interval=BAR_SECONDS, confirm_interval=2.0),
        )
        trading: asyncio.Task[ExecutionResult] | None = None
        async with asyncio.TaskGroup() as tasks:
            for index, bar in enumerate(bars):
                venue.process_bar(bar)
                if index % 3 == 0:
                    await manager.monitor_protection()
                if trading is not None and trading.done():
                    results.append(trading.result())
                    trading = None
                if (
                    index % EVERY == 0
                    and index >= 24
                    and trading is None
                    and await ledger.position(SYMBOL) is None
                ):
                    rising = bar.close >= bars[index - 24].close
                    trading = tasks.create_task(
                        manager.execute_trade(proposal_at(bar.close, rising))
                    )
                await clock.sleep(BAR_SECONDS)
            if trading is not None:
                results.append(await trading)
        await manager.monitor_protection()
        report = await Reconciler(venue, ledger, clock=clock).reconcile()
        closed = await ledger.closed_positions(SYMBOL)
        store_balance = (await ledger.balances())["USDT"].total
    venue_fills = list(await venue.fills(SYMBOL))
    assert len(results) >= 50
    assert all(result.success for result in results), [r for r in results if not r.success]
    assert report.in_agreement, report.plan.actions
    trips = recomputed(venue_fills)
    assert len(closed) == len(trips) >= 50
    assert [(p.realized_pnl, p.fees_paid) for p in closed] == trips
    assert [p.realized_pnl for p in closed] == [p.realized_pnl for p in venue.closed_positions]
    assert store_balance == venue.snapshot_balances()["USDT"].total
