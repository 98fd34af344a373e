"""The whole desk as a backtest: agents, coordinator, risk, execution and venue on recorded bars.

`desk_backtest(config, bars, store=...)` runs the same `Desk` as `legato run` on a
`SimulatedClock` that starts at the first bar, over a fresh SQLite store, and folds the
venue's fills into a `TradeBook` bar by bar (the equity curve is marked at each bar's
close), so the report is built exactly as for a plain strategy.

Bars are replayed at the market's own pace: the simulated clock starts at the first bar and
each bar is delivered at its own timestamp, so a fill the venue makes on a bar carries that
bar's time, the trades in the report carry market times, and every rule written in seconds
means what it means live: a cooldown of an hour is twelve five-minute bars, the daily-loss
limit resets at each UTC midnight of the recorded data, an entry times out after minutes.

What a backtest does not copy from the live desk is how often its loops run
(`backtest_desk_config`): live, the protection monitor and the guards run every second, which
on recorded bars would be hundreds of passes per bar that cannot see anything new (only a bar
makes paper fills). In a backtest they run once a bar; the reconciler and the execution
recovery loop, which have little to repair on the paper venue, every three hours of market
time; telemetry, which nobody watches, hourly. The execution manager polls an entry every
half bar (`backtest_execution_config` of the production path). The risk engine's refusals
are read back from the decision log into the result, for the report. Nor does it
store each decision that may trade before acting on it: on a fresh store that nothing else
writes and no crash is recovered from, every decision is written in the decision log's
batches (`Desk(buffer_decisions=True)`), the same rows a live desk writes. And its store is
scratch space (`Desk(scratch_store=True)`, see `use_as_scratch`): written without fsyncs and
locked by the run while it lasts.
"""

from __future__ import annotations

import dataclasses
import gc
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

from legato.kernel.errors import ValidationError, sole_error
from legato.kernel.simulation import SimulatedClock, run_simulated
from legato.trading.backtest.production import backtest_execution_config
from legato.trading.backtest.runner import PROGRESS_EVERY, BacktestResult
from legato.trading.backtest.store import fresh_store
from legato.trading.backtest.trades import (
    EntryFill,
    EquityPoint,
    Refusal,
    TradeBook,
    entry_fills,
    refusal_of,
)
from legato.trading.decision_log import DecisionLog, PipelineStatus
from legato.trading.desk import Desk
from legato.trading.desk_config import DeskConfig
from legato.trading.fills import Fill
from legato.trading.ledger import TradingLedger
from legato.trading.market_data import Bar
from legato.trading.strategy import Strategy

__all__ = [
    "BACKTEST_RECONCILE_INTERVAL",
    "BACKTEST_TELEMETRY_INTERVAL",
    "backtest_desk_config",
    "desk_backtest",
]

_BACKTEST_GC_THRESHOLD = 50_000
"""Allocations between two young-generation collections while a desk backtest runs (Python's
default is 700). A run makes millions of short-lived objects and keeps many (the bus history,
the stores' caches): collecting every 700 allocations rescans the survivors over and over."""

BACKTEST_TELEMETRY_INTERVAL = 3600.0
"""Seconds of market time between two telemetry passes in a backtest (at least one bar)."""
BACKTEST_RECONCILE_INTERVAL = 10_800.0
"""Seconds of market time between two reconciler (and execution recovery) passes in a
backtest, at least one bar: on the paper venue they have little to repair, and the guards
still call the reconciler at once when a position needs protecting again."""


def backtest_desk_config(config: DeskConfig, spacing: float) -> DeskConfig:
    """`config` as a backtest over bars `spacing` seconds apart runs it.

    The bars are replayed at their own pace (`data.speed` 1). The protection monitor, the
    runtime guards, the reconciler and the execution manager's recovery loop run once a bar
    (or at their configured interval, if that is longer): only a bar makes paper fills, so a
    pass in between has nothing new to see. Telemetry, which nobody watches in a backtest,
    runs once an hour of market time (the last pass is published at the end).
    """
    if isinstance(spacing, bool) or not isinstance(spacing, int | float) or not spacing > 0:
        raise ValidationError("spacing", spacing, "seconds > 0")
    bar = float(spacing)
    return dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, speed=1.0),
        monitor_interval=max(config.monitor_interval, bar),
        guard_interval=max(config.guard_interval, bar),
        reconcile_interval=max(config.reconcile_interval, BACKTEST_RECONCILE_INTERVAL, bar),
        telemetry_interval=max(config.telemetry_interval, BACKTEST_TELEMETRY_INTERVAL, bar),
    )


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """Collect the young generation less often while the block runs; restore it after.

    Only when the collector runs changes, never what it frees: the same garbage is found in
    fewer, larger passes.
    """
    first, *rest = gc.get_threshold()
    gc.set_threshold(max(first, _BACKTEST_GC_THRESHOLD), *rest)
    try:
        yield
    finally:
        gc.set_threshold(first, *rest)


def desk_backtest(
    config: DeskConfig,
    bars: Sequence[Bar],
    *,
    store: Path | str,
    seed: int | None = None,
    progress: Callable[[int], None] | None = None,
    strategy: Strategy | None = None,
) -> BacktestResult:
    """Run the desk `config` describes over `bars` on simulated time; return the result.

    `bars` are of one symbol the desk trades, in strictly increasing time. `store` is the
    SQLite file the desk writes (replaced by an empty store at the current schema, so a run
    never resumes another; see `fresh_store`).
    `seed` seeds the desk (default `config.data.seed`). `progress` is called with the
    number of bars done every `PROGRESS_EVERY` bars and at the end. `strategy` trades the
    symbol instead of the agents, as `legato run --strategy` runs it live (`Desk(strategies=
    ...)`); an exception it raises ends the run.
    """
    if not bars:
        raise ValidationError("bars", [], "at least one bar")
    symbol = bars[0].symbol
    if symbol not in config.symbols:
        raise ValidationError("bars[0].symbol", symbol, f"one of {list(config.symbols)}")
    for index in range(1, len(bars)):
        if bars[index].symbol != symbol:
            raise ValidationError(f"bars[{index}].symbol", bars[index].symbol, repr(symbol))
        if bars[index].timestamp <= bars[index - 1].timestamp:
            raise ValidationError(
                f"bars[{index}].timestamp", bars[index].timestamp.isoformat(), "a later time"
            )
    spacing = (bars[1].timestamp - bars[0].timestamp).total_seconds() if len(bars) > 1 else 1.0
    config = backtest_desk_config(config, spacing)
    url = fresh_store(store)
    initial = config.venue.starting_balance
    book = TradeBook(symbol, initial)
    equity: list[EquityPoint] = []
    fills: list[Fill] = []

    def on_bar(bar: Bar, new_fills: Sequence[Fill]) -> None:
        for fill in new_fills:
            fills.append(fill)
            book.apply(fill)
        equity.append(book.point(bar.timestamp, bar.close))
        if progress is not None and not len(equity) % PROGRESS_EVERY:
            progress(len(equity))

    clock = SimulatedClock(start=bars[0].timestamp)
    desk = Desk(
        config,
        store_url=url,
        clock=clock,
        rng=random.Random(config.data.seed if seed is None else seed),
        bars=bars,
        on_bar=on_bar,
        # Every backtest starts from an empty store: saving the venue's book would be waste,
        # and no crash needs each decision stored before it acts (they are, in batches).
        persist_venue=False,
        buffer_decisions=True,
        # Scratch space too: no fsyncs, and the run's one connection keeps the file locked.
        scratch_store=True,
        execution=backtest_execution_config(spacing),
        strategies=None if strategy is None else {symbol: strategy},
        raise_strategy_errors=True,
    )
    try:
        with _fewer_collections():
            run_simulated(desk.run(), clock=clock)
    except BaseExceptionGroup as failed:
        # The strategy's own error is raised as itself, as `run_backtest` raises it.
        only = sole_error(failed)
        if only is not None:
            raise only from None
        raise
    refusals, entries = run_simulated(_read_back(url, len(bars)))
    if progress is not None:
        progress(len(equity))
    return BacktestResult(
        symbol=symbol,
        initial_equity=initial,
        trades=tuple(book.trades),
        equity=tuple(equity),
        fills=tuple(fills),
        outcomes=(),
        unexecuted=(),
        final_position=book.position if book.position else Decimal(0),
        refusals=refusals,
        entries=entries,
    )


async def _read_back(url: str, bars: int) -> tuple[tuple[Refusal, ...], tuple[EntryFill, ...]]:
    """The run's refusals and entry orders, read back from its store.

    The refusals come from the decision log, in time order; the entry orders, with what each
    filled, from the ledger. One symbol, one decision per bar at most: `bars` bounds how many
    refusals there can be.
    """
    log = await DecisionLog.open(url, upgrade=False)
    try:
        rejected = await log.decisions(status=PipelineStatus.REJECTED, limit=bars)
    finally:
        await log.close()
    ledger = await TradingLedger.open(url, upgrade=False)
    try:
        orders = await ledger.orders()
    finally:
        await ledger.close()
    refusals = tuple(
        refusal_of(record.risk or {}, record.bar_time)
        for record in sorted(rejected, key=lambda record: record.bar_time)
    )
    return refusals, entry_fills(orders)
