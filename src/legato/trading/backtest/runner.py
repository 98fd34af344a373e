"""The backtest runner: a strategy, recorded bars and a paper venue on simulated time.

`run_backtest` drives the bars one at a time, in time order. For each bar it:

1. moves the clock to the bar's timestamp: a sleep on the clock while any proposal is being
   executed (so the executor's tasks run, and its timers fire in order), otherwise, on a
   `SimulatedClock`, a direct `advance` (no loop turn: this doubles the speed, and nothing the
   runner started is waiting on a timer). `sleep_every_bar=True` sleeps on every bar, for an
   executor that runs timers of its own in the background (the desk's supervised loops);
2. lets the venue match the bar against the resting orders (`PaperVenue.process_bar`) and
   books the fills in a `TradeBook`;
3. records the equity, marked at the bar's close (`ctx.equity` reads it);
4. calls `strategy.on_bar(bar, ctx)` and hands each proposal it made to the executor, as a
   task the runner owns (a `TaskGroup`): an executor may wait for later bars (an entry fill)
   while the runner goes on feeding them.

Orders the strategy asks for on a bar can therefore only fill on later bars: the venue has
already matched the bar the strategy is looking at. Proposals made on the last bar are not
sent (nothing could fill them) and are returned as `unexecuted`. Fills are stamped with the
clock, which reads the timestamp of the bar being matched.

`backtest` is the one-call form: it builds the simulated clock, the paper venue and (unless
given another) the research executor, and runs everything with `run_simulated`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from legato.kernel.clock import Clock
from legato.kernel.errors import ValidationError, sole_error
from legato.kernel.simulation import SimulatedClock, run_simulated
from legato.trading.backtest.executor import DirectBracketExecutor
from legato.trading.backtest.trades import ClosedTrade, EntryFill, EquityPoint, Refusal, TradeBook
from legato.trading.fills import Fill
from legato.trading.instruments import Instrument
from legato.trading.market_data import Bar
from legato.trading.matching import MatchingRules
from legato.trading.paper_venue import PaperVenue, PaperVenueConfig
from legato.trading.proposals import TradeProposal
from legato.trading.strategy import (
    Strategy,
    StrategyContext,
    TradeExecutor,
    TradeOutcome,
    name_the_bar,
)

__all__ = ["PROGRESS_EVERY", "BacktestResult", "backtest", "run_backtest"]

PROGRESS_EVERY = 250
"""Bars between two `progress` calls: often enough for a progress bar, cheap per bar."""


@dataclass(frozen=True, slots=True, repr=False)
class BacktestResult:
    """Everything a backtest produced: trades, equity curve, fills and executor outcomes.

    `initial_equity` is the quote balance at the start; `final_position` is the signed
    quantity still held after the last bar (its value is in the last equity point, not in
    `trades`). `outcomes` are the executor's answers, in the order they came back;
    `unexecuted` the proposals made on the last bar, which no later bar could fill;
    `refusals` the proposals the risk engine refused, in time order (none on the research
    path, which has no risk engine); `entries` the entry orders placed and how much of each
    filled, in the order they were placed (read from the store: none on the research path).
    """

    symbol: str
    initial_equity: Decimal
    trades: tuple[ClosedTrade, ...]
    equity: tuple[EquityPoint, ...]
    fills: tuple[Fill, ...]
    outcomes: tuple[TradeOutcome, ...]
    unexecuted: tuple[TradeProposal, ...]
    final_position: Decimal
    refusals: tuple[Refusal, ...] = ()
    entries: tuple[EntryFill, ...] = ()

    def __repr__(self) -> str:
        # A summary: the full repr of thousands of points is useless to read, and asyncio
        # formats it when the runner's task is inspected at shutdown (a tenth of a second).
        return (
            f"BacktestResult(symbol={self.symbol!r}, bars={self.bars}, "
            f"trades={len(self.trades)}, final_equity={self.final_equity}, "
            f"final_position={self.final_position})"
        )

    @property
    def bars(self) -> int:
        """How many bars were replayed."""
        return len(self.equity)

    @property
    def final_equity(self) -> Decimal:
        """Equity after the last bar (the initial equity if there were no bars)."""
        return self.equity[-1].equity if self.equity else self.initial_equity


def _check_bars(bars: Sequence[Bar], symbol: str) -> None:
    previous = None
    for index, bar in enumerate(bars):
        if bar.symbol != symbol:
            raise ValidationError(f"bars[{index}].symbol", bar.symbol, f"{symbol!r}")
        if previous is not None and bar.timestamp <= previous:
            raise ValidationError(
                f"bars[{index}].timestamp", bar.timestamp.isoformat(), "later than the bar before"
            )
        previous = bar.timestamp


async def run_backtest(
    strategy: Strategy,
    bars: Sequence[Bar],
    *,
    venue: PaperVenue,
    executor: TradeExecutor,
    clock: Clock,
    strategy_id: str = "backtest",
    sleep_every_bar: bool = False,
    progress: Callable[[int], None] | None = None,
) -> BacktestResult:
    """Replay `bars` through `venue`, calling `strategy` on each; return the result.

    All bars must be of one symbol listed by `venue`, in strictly increasing time; `clock`
    must be the venue's clock, at or before the first bar. The initial equity is the venue's
    quote-asset balance when the run starts. `sleep_every_bar` makes every bar a loop turn
    (see the module docstring). `progress`, if given, is called with the number of bars
    done every `PROGRESS_EVERY` bars and after the last one (a progress bar's feed).
    """
    if not bars:
        raise ValidationError("bars", [], "at least one bar")
    symbol = bars[0].symbol
    instrument = venue.instrument(symbol)
    _check_bars(bars, symbol)
    if venue.clock is not clock:
        raise ValidationError("clock", clock, "the venue's own clock")
    if clock.timestamp() > bars[0].timestamp.timestamp():
        raise ValidationError(
            "clock", clock.now().isoformat(), f"at or before the first bar {bars[0].timestamp}"
        )
    balances = venue.snapshot_balances()
    start = balances.get(instrument.quote_asset)
    initial_equity = start.total if start is not None else Decimal(0)
    book = TradeBook(symbol, initial_equity)
    proposals: list[TradeProposal] = []
    ctx = StrategyContext(instrument, proposals.append, strategy_id=strategy_id)
    fills: list[Fill] = []
    equity: list[EquityPoint] = []
    outcomes: list[TradeOutcome] = []
    unexecuted: list[TradeProposal] = []
    last = bars[-1]
    in_flight = 0

    async def execute(proposal: TradeProposal) -> None:
        nonlocal in_flight
        try:
            outcomes.append(await executor.execute_trade(proposal))
        finally:
            in_flight -= 1

    on_bar = strategy.on_bar
    # Skipping the loop turn is only sound on a simulated clock (see the module docstring).
    advance = clock.advance if isinstance(clock, SimulatedClock) and not sleep_every_bar else None
    process_bar = venue.process_bar
    apply_fill = book.apply
    point = book.point
    record = equity.append
    try:
        async with asyncio.TaskGroup() as group:
            try:
                for bar in bars:
                    gap = bar.timestamp.timestamp() - clock.timestamp()
                    if gap > 0:
                        if in_flight or advance is None:
                            await clock.sleep(gap)
                        else:
                            advance(gap)
                    new_fills = process_bar(bar)
                    if new_fills:
                        fills.extend(new_fills)
                        for fill in new_fills:
                            apply_fill(fill)
                        ctx.position = book.position
                    marked = point(bar.timestamp, bar.close)
                    record(marked)
                    ctx.equity = marked.equity
                    if progress is not None and not len(equity) % PROGRESS_EVERY:
                        progress(len(equity))
                    ctx.pending = in_flight > 0
                    ctx.begin_bar(bar)
                    try:
                        on_bar(bar, ctx)
                    except Exception as error:
                        name_the_bar(error, bar)
                        raise
                    if proposals:
                        if bar is last:
                            # No later bar can fill them; report them instead of sending them.
                            unexecuted.extend(proposals)
                            proposals.clear()
                            break
                        for proposal in proposals:
                            in_flight += 1
                            group.create_task(
                                execute(proposal),
                                name=f"backtest-execute-{proposal.correlation_id}",
                            )
                        proposals.clear()
            finally:
                # Executors waiting for a fill see the stream end and give up; nothing is left
                # running when the group exits.
                venue.end_of_data()
    except BaseExceptionGroup as failed:
        # One failure (the strategy's own, or one execution's) is raised as itself: the
        # caller catches the ValidationError it knows, not a group holding it.
        only = sole_error(failed)
        if only is not None:
            raise only from None
        raise
    if progress is not None:
        progress(len(equity))
    return BacktestResult(
        symbol=symbol,
        initial_equity=initial_equity,
        trades=tuple(book.trades),
        equity=tuple(equity),
        fills=tuple(fills),
        outcomes=tuple(outcomes),
        unexecuted=tuple(unexecuted),
        final_position=book.position,
    )


def backtest(
    strategy: Strategy,
    bars: Sequence[Bar],
    instrument: Instrument,
    *,
    initial_cash: Decimal = Decimal(100_000),
    rules: MatchingRules | None = None,
    executor: Callable[[PaperVenue], TradeExecutor] | None = None,
    strategy_id: str = "backtest",
) -> BacktestResult:
    """Run `strategy` over `bars` on a fresh paper venue and simulated clock; return the result.

    The venue lists `instrument` and starts with `initial_cash` of its quote asset; `rules`
    are its matching rules (slippage, fees, intrabar path). `executor` builds the executor
    from the venue; the default is the research path, `DirectBracketExecutor`.
    """
    if not bars:
        raise ValidationError("bars", [], "at least one bar")
    clock = SimulatedClock(start=bars[0].timestamp)
    config = PaperVenueConfig(rules=rules if rules is not None else MatchingRules())
    venue = PaperVenue(
        [instrument],
        balances={instrument.quote_asset: initial_cash},
        config=config,
        clock=clock,
    )
    chosen = executor(venue) if executor is not None else DirectBracketExecutor(venue)
    return run_simulated(
        run_backtest(
            strategy, bars, venue=venue, executor=chosen, clock=clock, strategy_id=strategy_id
        ),
        clock=clock,
    )
