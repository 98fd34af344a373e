"""The production executor: a strategy's proposals through the desk's own safety net.

`ProductionExecutor` is the `TradeExecutor` a backtest uses to run a plain strategy on the
same path as the desk: each opening proposal is checked by the `RiskManagementEngine` (on
the risk state the `PositionTracker` computes from the store), then carried by the
`OrderExecutionManager` (durable intent, entry, stop-loss, take-profit, retries, alerts) to
the `PaperVenue`. A reduce-only proposal is a close: as the desk does it, the closing order is
recorded in the store before it is sent, and the position's stop-loss and take-profit stay
on the venue until the close has filled (all three are reduce-only, none can over-close).

Fills are booked lazily: before each proposal, the manager's protection monitor books the
venue's new fills into the store and cancels the sibling of a protective order that closed
a position. The risk engine therefore decides on an up-to-date state, and the desk's
one-cancels-other rule holds at every decision point.

`production_backtest` is the one-call form: a fresh SQLite store (a copy of an empty,
migrated one), venue and simulated clock. The store is the run's alone: its ledger is the
sole writer (`TradingLedger.assume_sole_writer`), answers the reads of what it wrote from
memory, and commits its writes in batches (`TradingLedger.batch_commits`).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from legato.kernel.clock import Clock
from legato.kernel.errors import ValidationError
from legato.kernel.simulation import SimulatedClock, run_simulated
from legato.trading.backtest.runner import BacktestResult, run_backtest
from legato.trading.backtest.store import fresh_store, use_as_scratch
from legato.trading.backtest.trades import Refusal, entry_fills, refusal_of
from legato.trading.errors import OrderRejected
from legato.trading.execution import ExecutionConfig, ExecutionResult, OrderExecutionManager
from legato.trading.instruments import Instrument
from legato.trading.ledger import OrderRole, TradingLedger
from legato.trading.market_data import Bar
from legato.trading.matching import MatchingRules
from legato.trading.orders import Order, OrderStatus, OrderType
from legato.trading.paper_venue import PaperVenue, PaperVenueConfig
from legato.trading.proposals import TradeProposal
from legato.trading.risk import RiskDecision, RiskLimits, RiskManagementEngine
from legato.trading.strategy import Strategy
from legato.trading.tracker import PositionTracker

__all__ = [
    "ProductionExecutor",
    "ProductionOutcome",
    "backtest_execution_config",
    "production_backtest",
]

_CLOSE_PREFIX = "bx-"


@dataclass(frozen=True, slots=True)
class ProductionOutcome:
    """What became of one proposal on the production path.

    `risk` is the risk engine's decision (None for a close, which reduces risk and is not
    checked); `execution` the execution manager's result (None when the risk engine refused,
    or for a close); `close` the closing order (for a close that was sent). `reason` says why
    a proposal did not succeed.
    """

    proposal: TradeProposal
    success: bool
    risk: RiskDecision | None = None
    execution: ExecutionResult | None = None
    close: Order | None = None
    reason: str | None = None


class ProductionExecutor:
    """Risk engine, then execution manager, then paper venue; closes as the desk closes.

    `quote_asset` is the account currency of the risk state. `config` tunes the execution
    manager; on bars minutes apart, a `fill_poll_interval` near the bar spacing saves
    polls that cannot see anything new (fills only happen when a bar is matched).
    """

    def __init__(
        self,
        venue: PaperVenue,
        ledger: TradingLedger,
        *,
        risk: RiskManagementEngine,
        quote_asset: str,
        clock: Clock,
        rng: random.Random,
        config: ExecutionConfig | None = None,
    ) -> None:
        if not isinstance(rng, random.Random):
            raise ValidationError("rng", rng, "a seeded random.Random")
        self._venue = venue
        self._ledger = ledger
        self._risk = risk
        self._quote = quote_asset
        self._clock = clock
        self._tracker = PositionTracker(
            ledger,
            clock=clock,
            instruments_base={s: i.base_asset for s, i in risk.instruments.items()},
        )
        self._manager = OrderExecutionManager(
            venue, ledger, rng=rng, clock=clock, config=config, tracker=self._tracker
        )
        self._closes = 0
        self._refusals: list[Refusal] = []

    @property
    def refusals(self) -> tuple[Refusal, ...]:
        """The proposals the risk engine refused so far, in time order."""
        return tuple(self._refusals)

    @property
    def manager(self) -> OrderExecutionManager:
        """The execution manager the opening proposals go through."""
        return self._manager

    async def start(self) -> None:
        """Record the venue's starting balances in the store (the risk state's equity)."""
        totals = {
            asset: balance.total for asset, balance in self._venue.snapshot_balances().items()
        }
        await self._tracker.set_balances(totals)

    async def book_fills(self) -> None:
        """Book the venue's new fills and cancel the sibling of a closing protective order."""
        await self._manager.monitor_protection()

    async def execute_trade(self, proposal: TradeProposal) -> ProductionOutcome:
        """Carry out `proposal`: a risk-checked bracket, or (reduce-only) a close."""
        if not isinstance(proposal, TradeProposal):
            raise ValidationError("proposal", proposal, "a TradeProposal")
        await self.book_fills()
        if proposal.reduce_only:
            return await self._close(proposal)
        state = await self._tracker.risk_state(quote_asset=self._quote)
        decision = self._risk.validate_trade(proposal, state)
        approved = decision.approved_proposal
        if approved is None:
            reasons = "; ".join(reason.message for reason in decision.reasons)
            self._refusals.append(refusal_of(decision.as_dict(), state.now))
            return ProductionOutcome(proposal, False, risk=decision, reason=reasons)
        result = await self._manager.execute_trade(approved)
        return ProductionOutcome(
            proposal,
            result.success,
            risk=decision,
            execution=result,
            reason=None if result.success else (result.error_message or result.status.value),
        )

    async def _close(self, proposal: TradeProposal) -> ProductionOutcome:
        position = await self._ledger.position(proposal.symbol)
        if position is None:
            # Its stop-loss or take-profit closed it on the bar the strategy just saw.
            return ProductionOutcome(proposal, False, reason="no open position to close")
        now = self._clock.now()
        self._closes += 1
        order = Order(
            client_order_id=f"{_CLOSE_PREFIX}{self._closes}-X",
            symbol=proposal.symbol,
            side=position.side.closing_side,
            type=OrderType.MARKET,
            quantity=position.quantity,
            reduce_only=True,
            leverage=position.leverage,
            reason="strategy close",
            created_at=now,
            updated_at=now,
        )
        # Recorded before it is sent: a crash leaves a known order for the reconciler.
        await self._ledger.write(lambda tx: tx.put_order(order, OrderRole.CLOSE))
        try:
            placed = await self._venue.place_order(order)
        except OrderRejected as error:
            refused = order.transition(
                OrderStatus.REJECTED, at=self._clock.now(), reason=str(error)
            )
            await self._ledger.write(lambda tx: tx.update_order(refused))
            return ProductionOutcome(proposal, False, close=refused, reason=str(error))
        await self._ledger.write(lambda tx: tx.update_order(placed))
        return ProductionOutcome(proposal, True, close=placed)


def backtest_execution_config(spacing: float, *, poll: float | None = None) -> ExecutionConfig:
    """The execution manager's settings for bars `spacing` seconds apart.

    A market entry fills on the bar after its decision. It is polled every half bar (or
    every `poll` seconds): the poll that falls on the fill's bar instant may run before or
    after that bar, and if before, the next one, half a bar later, sees the fill; either way
    the stop-loss is placed before the next bar. A partly filled entry's rest is cancelled
    within one poll of the fill (`partial_protect_after`), before the next bar too; live,
    that is two seconds, which here would be 150 polls per five-minute bar that cannot see
    anything new. An entry with no fill at all is cancelled after four bars (at least five
    minutes). Raises ValidationError for a spacing or poll that is not a positive number.
    """
    for name, value in (("spacing", spacing), ("poll", spacing if poll is None else poll)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValidationError(name, value, "seconds > 0")
    interval = max(float(spacing) / 2, 0.25) if poll is None else float(poll)
    return ExecutionConfig(
        fill_poll_interval=interval,
        partial_protect_after=interval,
        entry_timeout=max(300.0, 4 * float(spacing)),
    )


def production_backtest(
    strategy: Strategy,
    bars: Sequence[Bar],
    instrument: Instrument,
    *,
    store: Path | str,
    initial_cash: Decimal = Decimal(100_000),
    rules: MatchingRules | None = None,
    limits: RiskLimits | None = None,
    seed: int = 0,
    fill_poll_interval: float | None = None,
    strategy_id: str = "backtest",
    progress: Callable[[int], None] | None = None,
) -> BacktestResult:
    """Run `strategy` over `bars` through the production path; return the result.

    `store` is the SQLite file the run writes (replaced by an empty store at the current
    schema, see `fresh_store`: scratch space, written without fsyncs and locked by the run
    while it lasts, see `use_as_scratch`; not meant to survive a crash). `limits` are the
    risk engine's (default `RiskLimits()`); `seed` seeds intent ids and retry jitter.
    The execution manager runs on `backtest_execution_config` for the spacing of the first
    two bars (`fill_poll_interval` overrides its poll). `progress` is called with the number
    of bars done (see `run_backtest`).
    """
    if not bars:
        raise ValidationError("bars", [], "at least one bar")
    spacing = (bars[1].timestamp - bars[0].timestamp).total_seconds() if len(bars) > 1 else 1.0
    execution = backtest_execution_config(spacing, poll=fill_poll_interval)
    url = fresh_store(store)
    clock = SimulatedClock(start=bars[0].timestamp)
    venue = PaperVenue(
        [instrument],
        balances={instrument.quote_asset: initial_cash},
        config=PaperVenueConfig(rules=rules if rules is not None else MatchingRules()),
        clock=clock,
    )
    engine = RiskManagementEngine([instrument], limits if limits is not None else RiskLimits())

    async def run() -> BacktestResult:
        # fresh_store wrote an empty store at the current schema: nothing to migrate.
        ledger = await TradingLedger.open(url, upgrade=False, clock=clock)
        try:
            # Scratch space: commits skip the fsyncs a store that must survive an OS crash
            # pays for (see `use_as_scratch`). Locked for this run's one connection, written
            # by this ledger alone: the ledger keeps what it wrote in memory instead of
            # reading it back, and commits its writes in batches (the same rows; a crash
            # loses the last batch, and nothing resumes from this store).
            await use_as_scratch(ledger.database)
            await ledger.assume_sole_writer()
            await ledger.batch_commits()
            executor = ProductionExecutor(
                venue,
                ledger,
                risk=engine,
                quote_asset=instrument.quote_asset,
                clock=clock,
                rng=random.Random(seed),
                config=execution,
            )
            await executor.start()
            result = await run_backtest(
                strategy,
                bars,
                venue=venue,
                executor=executor,
                clock=clock,
                strategy_id=strategy_id,
                progress=progress,
            )
            await executor.book_fills()
            return dataclasses.replace(
                result, refusals=executor.refusals, entries=entry_fills(await ledger.orders())
            )
        finally:
            await ledger.close()

    return run_simulated(run(), clock=clock)
