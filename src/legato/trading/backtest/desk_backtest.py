"""The whole desk as a backtest: agents, coordinator, risk, execution and venue on recorded bars.

`desk_backtest(config, bars, store=...)` runs the same `Desk` as `legato run` on a
`SimulatedClock` that starts at the first bar, over a fresh SQLite store, and folds the
venue's fills into a `TradeBook` bar by bar (the equity curve is marked at each bar's
close), so the report is built exactly as for a plain strategy.

Bars are replayed one virtual second apart (`data.speed` is set to the bars' spacing), as
the desk tests do: the desk's supervised loops (protection monitor, guards, telemetry), whose
intervals are seconds, then run about once per bar, as they would see each new bar live,
instead of hundreds of times per five-minute bar that cannot change anything between two
bars. The trade-off: the desk's clock runs compressed, so rules written in seconds
(cooldowns, entry timeouts, the unprotected bound, the UTC day of the daily-loss limit)
count bars as seconds. Replaying at the bars' own pace with loop intervals of one bar was
tried; it exposed a race between the execution manager's recovery loop and an entry being
carried (see docs/backtesting.md), so this stays the backtest's pacing until that is fixed.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path

from legato.kernel.errors import ValidationError
from legato.kernel.simulation import SimulatedClock, run_simulated
from legato.trading.backtest.runner import PROGRESS_EVERY, BacktestResult
from legato.trading.backtest.store import fresh_store
from legato.trading.backtest.trades import EquityPoint, TradeBook
from legato.trading.desk import Desk
from legato.trading.desk_config import DeskConfig
from legato.trading.fills import Fill
from legato.trading.market_data import Bar

__all__ = ["BACKTEST_TELEMETRY_INTERVAL", "desk_backtest"]

BACKTEST_TELEMETRY_INTERVAL = 3600.0
"""Virtual seconds (bars, at one a second) between two telemetry passes in a backtest."""


def desk_backtest(
    config: DeskConfig,
    bars: Sequence[Bar],
    *,
    store: Path | str,
    seed: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> BacktestResult:
    """Run the desk `config` describes over `bars` on simulated time; return the result.

    `bars` are of one symbol the desk trades, in strictly increasing time. `store` is the
    SQLite file the desk writes (replaced by an empty store at the current schema, so a run
    never resumes another; see `fresh_store`).
    `seed` seeds the desk (default `config.data.seed`). `progress` is called with the
    number of bars done every `PROGRESS_EVERY` bars and at the end.
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
    config = dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, speed=max(spacing, 1.0)),
        # Nobody watches a backtest's telemetry; the last one is published at the end.
        telemetry_interval=max(config.telemetry_interval, BACKTEST_TELEMETRY_INTERVAL),
    )
    url = fresh_store(store)
    initial = config.venue.starting_balance
    book = TradeBook(symbol, initial)
    equity: list[EquityPoint] = []
    fills: list[Fill] = []

    def on_bar(bar: Bar, new_fills: Sequence[Fill]) -> None:
        for fill in new_fills:
            fills.append(fill)
            book.apply(fill)
        equity.append(EquityPoint(bar.timestamp, book.equity(bar.close), book.position))
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
        # Every backtest starts from an empty store: saving the venue's book would be waste.
        persist_venue=False,
    )
    run_simulated(desk.run(), clock=clock)
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
    )
