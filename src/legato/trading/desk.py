"""The desk runtime: builds every part of a trading desk from a `DeskConfig` and runs it.

`Desk(config, store_url=..., clock=...)` wires, for the configured symbols:

- the market feed: the seeded synthetic generator, or a recorded CSV of bars or of trades
  (`load_market_bars`), paced on the clock at `data.speed` times the bars' own spacing;
- the paper venue, which matches every bar;
- the `CoordinatorAgent` (indicators, agents, conflicts, risk, execution), one decision
  pipeline per symbol at a time; or, for a symbol given a strategy of the user's
  (`strategies`, `legato run --strategy`), that strategy: it sees every bar (`on_bar(bar,
  ctx)`, the backtests' strategy API) and the coordinator carries each trade it asks for
  through the decision log, the risk engine and the execution manager;
- the `OrderExecutionManager`, the `PositionTracker`, the `Reconciler`;
- supervised loops (a kernel `Supervisor`): ``reconciler``, ``execution-recovery``,
  ``protection-monitor`` (books fills, cancels the other protective order),
  ``runtime-guards`` (halts, kill switch, unprotected positions) and ``telemetry``
  (equity, exposure, positions, PnL and agent latencies on ``desk.telemetry``).

`run()` reconciles with the venue *before* the first bar, resumes the executions the last
run left unfinished while the bars flow (an entry waiting for its fill can only fill on a
bar) and makes no new decision until they have ended, then feeds bars until the data ends
or `request_stop()` is called, and stops everything it started. On a `SimulatedClock` the
same code is a backtest that runs as fast as the machine allows; on a `RealClock` it is
`legato run`.

Controls: `pause(symbol)` / `resume(symbol)`, `kill_switch()` (no new trades; the guards
close every position), `close_position(symbol)`. `snapshot()` is what the service and the
dashboard show; `metrics()` what /metrics reports (read-only, at scrape time).

`apply_config(new)` changes a running desk's configuration without a restart where that is
safe (risk limits, strategy sizing and thresholds, loop intervals), all or nothing; a change
that needs a restart (instruments, symbols, venue, data, LLM) is refused and changes nothing.
See `legato.trading.config_change`.

The paper venue's book (balances, positions, working orders, fills) is saved in the store
after every bar and at stop, and restored at start, so a restarted desk finds the venue as
it left it, as it would a real exchange; `persist_venue=False` skips that (a backtest, which
always starts from an empty store). `buffer_decisions=True` (a backtest too) stores claimed
decision runs in the decision log's batches as well, instead of each before it acts (see
`legato.trading.decision_log`): a live desk leaves it off. `scratch_store=True` (a backtest
as well) writes the store as scratch space, see `legato.store.scratch`:
no fsyncs, and the desk's one connection holds the file lock until it stops, so nothing else
may open the store meanwhile (it is refused with the orchestrator's scheduling, whose task
store opens a second connection).
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import random
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import structlog

from legato.kernel.bus import MessageBus
from legato.kernel.clock import Clock, RealClock
from legato.kernel.errors import LegatoError, ValidationError
from legato.kernel.message import Message
from legato.kernel.supervisor import LoopHealth, Supervisor
from legato.store.scratch import use_as_scratch
from legato.trading.agents.llm import LLMClient
from legato.trading.agents.snapshot import IndicatorSnapshot
from legato.trading.alerts import Alert, AlertCode, AlertLevel
from legato.trading.config_change import ConfigChange, diff_desk_configs
from legato.trading.conflicts import ConflictResolver, ConflictSettings, LLMResolver, RuleResolver
from legato.trading.coordinator import CoordinatorAgent, PipelineOutcome, StageLatency
from legato.trading.decision_log import DecisionLog, DecisionRecord
from legato.trading.desk_config import DataSource, DeskConfig, ResolverKind
from legato.trading.desk_tasks import DeskTasks, Scheduling
from legato.trading.errors import OrderNotFound, OrderRejected
from legato.trading.execution import ExecutionConfig, OrderExecutionManager
from legato.trading.fills import Fill
from legato.trading.guards import GuardAction, GuardActionKind, GuardInputs, run_guard_iteration
from legato.trading.instruments import Instrument
from legato.trading.ledger import EquityMarks, IntentStage, OrderRole, TradingLedger
from legato.trading.market_data import Bar, load_market_bars, replay
from legato.trading.orders import Order, OrderStatus, OrderType
from legato.trading.paper_venue import PaperVenue, PaperVenueConfig
from legato.trading.positions import Position
from legato.trading.proposals import TradeProposal
from legato.trading.reconciler import Reconciler, ReconcilerConfig
from legato.trading.risk import RiskManagementEngine, TradingState
from legato.trading.strategy import (
    Strategy,
    StrategyContext,
    find_strategy,
    is_strategy,
    make_strategies,
    name_the_bar,
    strategy_label,
)
from legato.trading.synthetic import SyntheticMarketConfig, synthetic_bars
from legato.trading.tracker import PositionTracker

__all__ = [
    "TELEMETRY_TOPIC",
    "Desk",
    "DeskMetrics",
    "DeskSnapshot",
    "DeskTelemetry",
    "SymbolMetrics",
    "configured_strategies",
    "desk_bars",
]

_log = structlog.get_logger(__name__)
_ZERO = Decimal(0)
_CLIENT_PREFIX = "lg-"
TELEMETRY_TOPIC = "desk.telemetry"
STOP_GRACE_SECONDS = 3.0
"""How long a stop request lets decision pipelines in flight finish before cancelling them."""
PROTECT_GRACE_SECONDS = 60.0
"""How much longer a stop waits for an execution that is placing a filled position's stop-loss."""
_PROTECTING = (IntentStage.PROTECT, IntentStage.CLOSE)
"""The topic the desk publishes its `DeskTelemetry` on."""


@dataclass(frozen=True, slots=True)
class DeskTelemetry:
    """The desk's vital signs at one instant (also published on ``desk.telemetry``)."""

    at: datetime
    equity: Decimal
    exposure: Decimal
    open_positions: int
    unrealized_pnl: Decimal
    realized_pnl: Decimal
    fees_paid: Decimal
    trading_state: TradingState
    latencies: Mapping[str, float]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (Decimals as exact strings)."""
        return {
            "at": self.at.isoformat(),
            "equity": str(self.equity),
            "exposure": str(self.exposure),
            "open_positions": self.open_positions,
            "unrealized_pnl": str(self.unrealized_pnl),
            "realized_pnl": str(self.realized_pnl),
            "fees_paid": str(self.fees_paid),
            "trading_state": self.trading_state.value,
            "latencies": {stage: round(value, 6) for stage, value in self.latencies.items()},
        }


@dataclass(frozen=True, slots=True)
class DeskSnapshot:
    """What the service and the dashboard show of a running desk."""

    telemetry: DeskTelemetry | None
    positions: tuple[Position, ...]
    open_orders: tuple[Order, ...]
    recent_decisions: tuple[DecisionRecord, ...]
    paused: frozenset[str]
    kill_switch: bool
    bars_processed: int
    loops: Mapping[str, LoopHealth]


@dataclass(frozen=True, slots=True)
class SymbolMetrics:
    """One traded symbol's figures for /metrics (money in the quote asset).

    The open position (if any) is valued at the last bar's close the desk has seen.
    `side` is ``long``, ``short`` or None when flat.
    """

    symbol: str
    side: str | None
    quantity: Decimal
    exposure: Decimal
    unrealized_pnl: Decimal
    realized_pnl: Decimal
    fees_paid: Decimal
    last_price: Decimal | None
    paused: bool
    unknown_orders: int
    open_orders: int
    decisions: Mapping[str, int]
    """Decided runs since start, by `PipelineStatus` value."""
    trades: Mapping[bool, int]
    """Trades handed to the execution manager since start, by whether they succeeded."""


@dataclass(frozen=True, slots=True)
class DeskMetrics:
    """Everything /metrics reports about a running desk, read in one go at scrape time.

    Equity is the quote balance plus the open positions' unrealized PnL at the last prices
    seen (the telemetry loop's figure may be a few seconds older). Counters count since the
    desk started; alerts since the store was created.
    """

    quote_asset: str
    equity: Decimal
    balances: Mapping[str, Decimal]
    symbols: tuple[SymbolMetrics, ...]
    trading_state: TradingState | None
    kill_switch: bool
    bars_processed: int
    alerts: Mapping[AlertLevel, int]
    latencies: Mapping[str, StageLatency]
    pending_writes: int
    telemetry: DeskTelemetry | None

    @property
    def exposure(self) -> Decimal:
        """The open positions' notional, all symbols together."""
        return sum((s.exposure for s in self.symbols), _ZERO)

    @property
    def open_positions(self) -> int:
        """How many symbols hold a position."""
        return sum(1 for s in self.symbols if s.side is not None)


def desk_bars(
    config: DeskConfig,
    start: datetime,
    *,
    start_prices: Mapping[str, Decimal] | None = None,
    after: datetime | None = None,
) -> Iterator[Bar]:
    """The bars `config.data` describes, in time order (synthetic ones from `start`).

    Synthetic symbols each get their own generator seeded from `data.seed` and their place
    in the list, so adding a symbol does not change another's prices. A resumed desk passes
    `start_prices` (its venue's last prices), so its synthetic market carries on from where
    the last run left it, and `after` (its last decided bar), so a recorded file carries on
    after the bars already traded.
    """
    data = config.data
    if data.source is DataSource.CSV:
        assert data.path is not None  # DataSettings requires it for csv
        # A file of trades is made into bars of the synthetic bar length.
        bars: Iterator[Bar] = load_market_bars(
            Path(data.path), config.symbols[0], trade_bar_seconds=data.interval_seconds
        )
        if after is not None:
            bars = (bar for bar in bars if bar.timestamp > after)
    else:
        interval = timedelta(seconds=data.interval_seconds)
        streams = []
        for index, symbol in enumerate(config.symbols):
            instrument = config.instrument(symbol)
            streams.append(
                synthetic_bars(
                    random.Random(data.seed * 1_000 + index),
                    symbol=symbol,
                    start=start,
                    interval=interval,
                    start_price=(start_prices or {}).get(symbol, data.start_price),
                    config=SyntheticMarketConfig(
                        tick_size=instrument.tick_size, lot_size=instrument.lot_size
                    ),
                )
            )
        bars = heapq.merge(*streams, key=lambda bar: bar.timestamp)
    if data.bars is None:
        yield from bars
        return
    for count, bar in enumerate(bars):
        if count >= data.bars:
            return
        yield bar


class Desk:
    """A whole paper-trading desk from one `DeskConfig`; see the module docstring.

    `store_url` is the store (SQLite file or PostgreSQL). `bars` overrides the configured
    feed (a test's scripted market). `resolvers` overrides conflict resolvers by strategy
    name. `rng` seeds everything random (intent ids, retry jitter, message ids).
    `on_bar` is called with each bar and the venue fills it made, once the venue has matched
    it and before the coordinator decides on it (a backtest's trade book and progress bar).
    `scheduling` is how decisions run: inline asyncio tasks (the default; backtests), or
    durable `legato.desk.decide` tasks on the store (`legato run`; see
    `legato.trading.desk_tasks`). `scratch_store` trades the store's durability for speed
    (a backtest's fresh store; see the module docstring). `strategies` maps a symbol to a
    strategy object that trades it instead of the agents (see `legato.trading.strategy`), on
    top of those the config names (a strategy's `code`, see `configured_strategies`);
    an exception its `on_bar` raises drops that bar's proposals and raises a HIGH alert
    (the first of a run of failing bars, logged with its traceback; every later one is
    logged in a line), or, with
    `raise_strategy_errors` (a backtest), ends the run with it. When the data runs out, the
    decision runs in flight are waited for (a backtest: on simulated time an entry's timeout
    passes at once); `stop_at_end_of_data` (`legato run`) makes the end of the data a stop
    request instead, so a run waiting for a fill that no bar will bring gets the stop's grace
    and resumes at the next start, rather than holding the process until its timeout.
    """

    def __init__(
        self,
        config: DeskConfig,
        *,
        store_url: str,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        bars: Iterable[Bar] | None = None,
        resolvers: Mapping[str, ConflictResolver] | None = None,
        execution: ExecutionConfig | None = None,
        on_bar: Callable[[Bar, Sequence[Fill]], None] | None = None,
        persist_venue: bool = True,
        scheduling: Scheduling = Scheduling.INLINE,
        buffer_decisions: bool = False,
        scratch_store: bool = False,
        strategies: Mapping[str, Strategy] | None = None,
        raise_strategy_errors: bool = False,
        stop_at_end_of_data: bool = False,
    ) -> None:
        if not isinstance(config, DeskConfig):
            raise ValidationError("config", config, "a DeskConfig")
        self._strategists: dict[str, _Strategist] = {}
        for symbol, strategy in {
            **configured_strategies(config, strategies),
            **(strategies or {}),
        }.items():
            if symbol not in config.symbols:
                raise ValidationError("strategies", symbol, f"one of {list(config.symbols)}")
            if not is_strategy(strategy):
                raise ValidationError(
                    f"strategies[{symbol!r}]", strategy, "an object with on_bar(bar, ctx)"
                )
            self._strategists[symbol] = _Strategist(strategy, config.instrument(symbol))
        self._raise_strategy_errors = bool(raise_strategy_errors)
        self._stop_at_end_of_data = bool(stop_at_end_of_data)
        if not isinstance(scheduling, Scheduling):
            raise ValidationError(
                "scheduling", scheduling, "a Scheduling ('inline' or 'orchestrator')"
            )
        if scratch_store and scheduling is not Scheduling.INLINE:
            # The scratch store's exclusive lock would keep the task store's connection out.
            raise ValidationError(
                "scratch_store",
                scratch_store,
                f"False with scheduling {scheduling.value!r} (its task store opens a second "
                "connection, which the scratch store's exclusive lock keeps out)",
            )
        self._scratch_store = bool(scratch_store)
        self._scheduling = scheduling
        self._tasks: DeskTasks | None = None
        self._config = config
        self._store_url = store_url
        self._persist_venue = persist_venue
        self._buffer_decisions = buffer_decisions
        self._clock: Clock = clock if clock is not None else RealClock()
        self._rng = rng if rng is not None else random.Random(config.data.seed)
        self._bars = bars
        self._resolver_overrides = dict(resolvers or {})
        self._execution_config = execution
        self._on_bar = on_bar
        # Set when the venue matched a bar into fills the protection monitor has not booked:
        # only bars make paper fills, so a monitor pass without new ones has nothing to do.
        self._unbooked_fills = False
        self._booking = asyncio.Lock()
        self._stop = asyncio.Event()
        self._started = False
        self._bars_processed = 0
        self._telemetry: DeskTelemetry | None = None
        self._last_price: dict[str, Decimal] = {}
        self._close_sequence = 0
        # The closed positions' sums per symbol, with the positions watermark they were
        # read under: read again only once a position has opened or closed since.
        self._closed: tuple[tuple[int, int], dict[str, tuple[Decimal, Decimal]]] | None = None
        self._llm_clients: dict[str, LLMClient] = {}
        self._reconfiguring = asyncio.Lock()
        self._in_flight: set[asyncio.Task[PipelineOutcome | None]] = set()
        # The resumption of the executions the last run left unfinished, while it lasts.
        self._resuming: asyncio.Task[PipelineOutcome | None] | None = None
        # Built by start(), dropped by stop().
        self._parts: _Parts | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def config(self) -> DeskConfig:
        """The configuration the desk runs on."""
        return self._config

    @property
    def running(self) -> bool:
        """True between `start` and `stop`: the parts exist and can be read."""
        return self._parts is not None

    @property
    def bus(self) -> MessageBus:
        """The desk's message bus (after `start`)."""
        return self._running().bus

    @property
    def ledger(self) -> TradingLedger:
        """The desk's trading ledger (after `start`)."""
        return self._running().ledger

    @property
    def decision_log(self) -> DecisionLog:
        """The stored decisions, votes and conflicts (after `start`)."""
        return self._running().decisions

    @property
    def coordinator(self) -> CoordinatorAgent:
        """The coordinator (after `start`)."""
        return self._running().coordinator

    @property
    def telemetry(self) -> DeskTelemetry | None:
        """The latest telemetry (None before the first pass); kept after `stop`."""
        return self._telemetry

    @property
    def strategies(self) -> dict[str, str]:
        """The symbols a strategy trades instead of the agents, with its name (MODULE:NAME)."""
        return {symbol: strategist.name for symbol, strategist in self._strategists.items()}

    @property
    def bars_processed(self) -> int:
        """How many bars the desk has fed to the venue and the coordinator."""
        return self._bars_processed

    @property
    def venue(self) -> PaperVenue:
        """The paper venue (after `start`)."""
        return self._running().venue

    async def start(self) -> None:
        """Open the store, build every part, reconcile and resume before any trading."""
        if self._started:
            raise ValidationError("state", "started", "a desk not started yet")
        config = self._config
        ledger = await TradingLedger.open(self._store_url, clock=self._clock)
        try:
            if self._scratch_store:
                await use_as_scratch(ledger.database)
                if ledger.database.dialect == "sqlite":
                    # The exclusive lock keeps every other connection out, and every part
                    # of the desk writes the trading tables through this one ledger: it can
                    # answer the reads of what it wrote from memory.
                    await ledger.assume_sole_writer()
            self._parts = await self._build(ledger)
        except BaseException:
            await ledger.close()
            raise
        self._started = True
        parts = self._parts
        for symbol in config.paused_symbols:
            parts.coordinator.pause(symbol)
        # Reconcile before trading: a restart picks up where the store says it was.
        await parts.reconciler.reconcile()
        if await parts.ledger.intents(unfinished_only=True):
            # Executions the last stop cut short resume now. One waiting for its entry's fill
            # can only finish on a bar, so they go on while the bars flow, and no decision is
            # made before they have all finished (see `_consume`). A stop treats them as the
            # decision runs in flight: the same grace, longer for one protecting a position.
            self._resuming = asyncio.create_task(self._resume(), name="desk-resume")
            self._in_flight.add(self._resuming)
        supervisor = parts.supervisor
        for name, (function, interval_field) in self._loop_functions(parts).items():
            supervisor.add_loop(name, function, interval=getattr(config, interval_field))
        await supervisor.start()
        if self._scheduling is Scheduling.ORCHESTRATOR:
            tasks = DeskTasks(
                self._store_url,
                clock=self._clock,
                rng=random.Random(self._rng.getrandbits(32)),
                decide=self._pipeline,
                in_flight=self._in_flight,
                stopping=self._stop.is_set,
                concurrency=max(4, 2 * len(config.symbols)),
                grace=STOP_GRACE_SECONDS,
            )
            try:
                await tasks.start()
            except BaseException:
                await self.stop()
                raise
            self._tasks = tasks
        _log.info("desk_started", symbols=list(config.symbols), store=self._store_url)

    async def stop(self) -> None:
        """Stop the loops, close the LLM clients, the bus and the store."""
        if self._parts is None:
            return
        # The decision worker first: the tasks it is running still use the parts.
        tasks, self._tasks = self._tasks, None
        resuming, self._resuming = self._resuming, None
        try:
            if resuming is not None and not resuming.done():
                # Still waiting (an entry no bar filled): durable, the next start resumes it.
                resuming.cancel()
                await asyncio.wait([resuming])
            if tasks is not None:
                await tasks.stop()
        finally:
            parts, self._parts = self._parts, None
            await self._stop_parts(parts)

    async def _stop_parts(self, parts: _Parts) -> None:
        try:
            await parts.supervisor.stop(grace=5.0)
        finally:
            for client in self._llm_clients.values():
                await client.aclose()
            await parts.bus.close(drain=False)
            try:
                await parts.decisions.flush()
                if self._persist_venue:
                    # Orders placed after the last bar are part of the book too.
                    await parts.ledger.save_paper_venue(parts.venue.state())
            finally:
                await parts.ledger.close()
            _log.info("desk_stopped", bars=self._bars_processed)

    async def __aenter__(self) -> Desk:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def request_stop(self) -> None:
        """Ask `run` to stop after the bar in hand (what Ctrl-C does)."""
        self._stop.set()

    async def run(self) -> int:
        """Feed bars and trade until the data ends or a stop is requested; return the bars fed.

        Starts the desk if it is not started, and stops it at the end either way.
        """
        if not self._started:
            await self.start()
        try:
            return await self._feed()
        finally:
            await self.stop()

    async def _feed(self) -> int:
        parts = self._running()
        source = self._bars if self._bars is not None else await self._configured_bars()
        async with asyncio.TaskGroup() as pipelines, asyncio.TaskGroup() as feeding:
            feed = feeding.create_task(self._consume(source, pipelines), name="desk-feed")
            # A stop must not wait for the next bar (five minutes away on a live 5m feed).
            watcher = feeding.create_task(self._stop_feed_on_request(feed), name="desk-stop")
            # Data that simply ran out needs no watcher, unless its end is a stop; a stop
            # request keeps it to the end.
            feed.add_done_callback(lambda _: self._fed(watcher))
        if self._tasks is not None:
            await self._tasks.settle()
        if self._resuming is not None and not self._stop.is_set():
            # Data that ran out lets the resumed executions end, as it lets decision runs
            # (at once if they have).
            await asyncio.wait([self._resuming])
        # The last bars' fills are booked before the desk reports and stops.
        await parts.manager.monitor_protection()
        await self._publish_telemetry()
        return self._bars_processed

    async def _resume(self) -> PipelineOutcome | None:
        # The resumption of start(): a task in `_in_flight`, so a stop gives it a grace.
        try:
            await self._running().manager.recover()
        except LegatoError as error:
            # The execution-recovery loop tries again; deciding need not wait for it.
            _log.error("desk_resume_failed", error=str(error))
        finally:
            self._in_flight.discard(asyncio.current_task())
        return None

    def _fed(self, watcher: asyncio.Task[None]) -> None:
        # The feed ended: a stop request, the end of the data, or a failure.
        if self._stop.is_set():
            return
        if self._stop_at_end_of_data:
            self._stop.set()  # the watcher gives the runs in flight the stop's grace
        else:
            watcher.cancel()

    async def _protecting(self) -> bool:
        intents = await self._running().ledger.intents(unfinished_only=True)
        return any(intent.stage in _PROTECTING for intent in intents)

    async def _configured_bars(self) -> Iterator[Bar]:
        # Resume where the store says the last run stopped: the venue's last prices, and the
        # newest bar it matched or a decision was made on (a strategy of yours stores a
        # decision only when it asks for a trade, and a venue saved before it kept its last
        # bars has none: whichever is later).
        parts = self._running()
        config = self._config
        start_prices = {
            symbol: price
            for symbol in config.symbols
            if (price := parts.venue.last_price(symbol)) is not None
        }
        latest = await parts.decisions.decisions(limit=1)
        seen = [latest[0].bar_time] if latest else []
        seen += [
            at for symbol in config.symbols if (at := parts.venue.last_bar_time(symbol)) is not None
        ]
        return desk_bars(
            config,
            _start_of_bar(self._clock.now(), config.data.interval_seconds),
            start_prices=start_prices,
            after=max(seen, default=None),
        )

    async def _consume(self, source: Iterable[Bar], pipelines: asyncio.TaskGroup) -> None:
        parts = self._running()
        stream = replay(source, self._clock, self._config.data.speed)
        try:
            async for bar in stream:
                fills = parts.venue.process_bar(bar)
                if self._persist_venue:
                    await parts.ledger.save_paper_venue(parts.venue.state())
                if fills:
                    self._unbooked_fills = True
                if self._on_bar is not None:
                    self._on_bar(bar, fills)
                self._last_price[bar.symbol] = bar.close
                self._bars_processed += 1
                strategist = self._strategists.get(bar.symbol)
                if self._resuming is not None and not self._resuming.done():
                    # No decision while the last run's executions are resumed; the agents'
                    # indicators still see every bar.
                    if strategist is None:
                        parts.coordinator.observe(bar)
                    if self._stop.is_set():
                        break
                    continue
                if strategist is not None:
                    await self._strategy_bar(strategist, bar, pipelines)
                    if self._stop.is_set():
                        break
                    continue
                snapshot = parts.coordinator.observe(bar)
                if self._tasks is not None:
                    await self._tasks.submit(snapshot)
                    if self._stop.is_set():
                        break
                    continue
                bar_time = parts.coordinator.bar_time_text(snapshot.timestamp)
                run = pipelines.create_task(
                    self._pipeline(bar.symbol, snapshot), name=f"pipeline:{bar.symbol}:{bar_time}"
                )
                # The run takes itself out of `_in_flight` as it ends (see `_pipeline`): a
                # done callback would cost a trip through the event loop for every bar.
                self._in_flight.add(run)
                if self._stop.is_set():
                    break
        finally:
            await _close_stream(stream)

    async def _stop_feed_on_request(self, feed: asyncio.Task[None]) -> None:
        await self._stop.wait()
        feed.cancel()
        # Decisions in flight get a moment to finish. One still waiting after that (say, an
        # entry waiting for a fill that no bar will bring now) is cancelled: its execution is
        # durable and `recover()` carries it on at the next start, so a stop never hangs.
        pending = [run for run in self._in_flight if not run.done()]
        if pending:
            await asyncio.wait(pending, timeout=STOP_GRACE_SECONDS)
            still = [run for run in pending if not run.done()]
            if still and await self._protecting():
                # An execution whose entry has filled is placing the stop-loss (or closing a
                # position it could not protect): cutting it short would leave the position
                # bare until the next start. It gets longer, as long as it needs within bound.
                await asyncio.wait(still, timeout=PROTECT_GRACE_SECONDS)
            for run in pending:
                run.cancel()

    async def _pipeline(self, symbol: str, snapshot: IndicatorSnapshot) -> PipelineOutcome | None:
        try:
            return await self._running().coordinator.run(symbol, snapshot)
        except LegatoError as error:
            _run_failed(symbol, error)
            return None
        finally:
            # Nothing runs between here and the task's end, so to every reader of `_in_flight`
            # this is a done callback without the trip through the event loop. (A run cancelled
            # before it ever started, at a stop, stays in the set: finished, so skipped.)
            self._in_flight.discard(asyncio.current_task())

    async def _strategy_bar(
        self,
        strategist: _Strategist,
        bar: Bar,
        pipelines: asyncio.TaskGroup,
    ) -> None:
        """Show `bar` to the symbol's strategy; start a run for each trade it asks for."""
        parts = self._running()
        symbol = bar.symbol
        # The strategy decides on what it holds now: the bar's fills are booked first (or,
        # if the protection monitor's pass is booking them, once that pass has ended).
        if self._booking.locked():
            async with self._booking:
                pass
        await self._monitor_protection()
        position = await parts.ledger.position(symbol)
        ctx = strategist.context
        ctx.position = _ZERO if position is None else position.quantity * position.side.sign
        ctx.equity = await self._equity(parts.ledger)
        ctx.pending = strategist.in_flight > 0
        ctx.begin_bar(bar)
        proposals = strategist.proposals
        try:
            strategist.strategy.on_bar(bar, ctx)
        except Exception as error:
            proposals.clear()
            if self._raise_strategy_errors:
                name_the_bar(error, bar)
                raise
            await self._strategy_failed(strategist, bar, error)
        else:
            strategist.failing = False
        signal = await parts.coordinator.publish_bar(bar)
        for sequence, proposal in enumerate(proposals, 1):
            strategist.in_flight += 1
            run = pipelines.create_task(
                self._proposal_run(strategist, proposal, bar, signal, sequence),
                name=f"proposal:{symbol}:{signal.payload['bar_time']}:{sequence}",
            )
            self._in_flight.add(run)
        proposals.clear()

    async def _strategy_failed(self, strategist: _Strategist, bar: Bar, error: Exception) -> None:
        _log.error(
            "desk_strategy_failed",
            symbol=bar.symbol,
            strategy=strategist.name,
            bar_time=bar.timestamp.isoformat(),
            error=f"{type(error).__name__}: {error}",
            # The traceback once a run of failing bars, not on every bar of it.
            exc_info=None if strategist.failing else error,
        )
        if strategist.failing:
            return  # alerted at the first bar of this run of failures
        strategist.failing = True
        await self._running().ledger.record_alert(
            Alert(
                AlertLevel.HIGH,
                AlertCode.STRATEGY_FAILED,
                f"{strategist.name} raised {type(error).__name__}: {error} on the bar of "
                f"{bar.timestamp.isoformat()}; that bar's trades were not asked for (later "
                "failures are logged, and alerted again after a bar that succeeds)",
                self._clock.now(),
                symbol=bar.symbol,
            )
        )

    async def _proposal_run(
        self,
        strategist: _Strategist,
        proposal: TradeProposal,
        bar: Bar,
        signal: Message,
        sequence: int,
    ) -> PipelineOutcome | None:
        try:
            return await self._running().coordinator.run_proposal(
                proposal,
                bar_time=bar.timestamp,
                signal=signal,
                source=strategist.name,
                sequence=sequence,
            )
        except LegatoError as error:
            _run_failed(bar.symbol, error)
            return None
        finally:
            strategist.in_flight -= 1
            self._in_flight.discard(asyncio.current_task())  # as `_pipeline` does

    async def _equity(self, ledger: TradingLedger) -> Decimal:
        """The account's equity now: the quote balance, and the open positions at last prices."""
        balance = (await ledger.balances()).get(self._config.venue.quote_asset)
        equity = _ZERO if balance is None else balance.total
        for position in await ledger.open_positions():
            equity += _unrealized(position, self._last_price.get(position.symbol))
        return equity

    def _loop_functions(
        self, parts: _Parts
    ) -> dict[str, tuple[Callable[[], Awaitable[object]], str]]:
        # Each supervised loop: what it calls, and the DeskConfig field of its interval.
        return {
            "reconciler": (parts.reconciler.reconcile, "reconcile_interval"),
            "execution-recovery": (parts.manager.recover, "reconcile_interval"),
            "protection-monitor": (self._monitor_protection, "monitor_interval"),
            "runtime-guards": (self._guard_pass, "guard_interval"),
            "telemetry": (self._publish_telemetry, "telemetry_interval"),
        }

    # ------------------------------------------------------------------ configuration

    async def apply_config(self, new: DeskConfig) -> ConfigChange:
        """Take `new` as the running configuration where that is safe without a restart.

        Diffs the running config against `new` (`diff_desk_configs`). When every change is
        safe at runtime (risk limits, strategy sizing and thresholds, loop intervals), all
        are applied together and the result has `applied` True: the risk engine is rebuilt
        with the new limits, the coordinator swaps in new strategy settings and resolvers
        (`CoordinatorAgent.reconfigure`), and loops whose interval changed are rescheduled.
        When any change needs a restart (instruments, symbols, venue, data, LLM endpoint),
        nothing is applied and the result lists each such field, its old and new value and
        why. A stopped desk simply takes a safe config for its next start.
        """
        if not isinstance(new, DeskConfig):
            raise ValidationError("config", new, "a DeskConfig")
        async with self._reconfiguring:
            old = self._config
            change = diff_desk_configs(old, new)
            if change.empty:
                return dataclasses.replace(change, applied=True)
            if not change.applicable:
                _log.warning(
                    "desk_config_refused",
                    refused=[c.describe() for c in change.refused],
                    held_back=[c.describe() for c in change.safe],
                )
                return change
            parts = self._parts
            if parts is not None:
                # Every new part is built before any is swapped in; the swaps themselves do
                # not await, so no decision run sees half a configuration.
                risk = parts.risk
                if new.risk != old.risk:
                    risk = RiskManagementEngine(new.instruments, new.risk)
                resolvers = self._resolvers(new)
                parts.coordinator.reconfigure(
                    strategies=new.strategies, risk_engine=risk, resolvers=resolvers
                )
                for symbol in sorted(set(new.paused_symbols) - set(old.paused_symbols)):
                    parts.coordinator.pause(symbol)
                for symbol in sorted(set(old.paused_symbols) - set(new.paused_symbols)):
                    parts.coordinator.resume(symbol)
                self._parts = parts = dataclasses.replace(parts, risk=risk)
            self._config = new
            if parts is not None:
                await self._reschedule(parts, old, new)
            applied = dataclasses.replace(change, applied=True)
            _log.info("desk_config_applied", changes=[c.describe() for c in applied.safe])
            return applied

    async def _reschedule(self, parts: _Parts, old: DeskConfig, new: DeskConfig) -> None:
        supervisor = parts.supervisor
        for name, (function, interval_field) in self._loop_functions(parts).items():
            interval = getattr(new, interval_field)
            if interval == getattr(old, interval_field):
                continue
            # The supervisor has no interval setter: the loop is stopped (an iteration in
            # flight may finish) and added back, its next pass one new interval away.
            await supervisor.remove_loop(name)
            supervisor.add_loop(name, function, interval=interval, run_immediately=False)

    # ------------------------------------------------------------------ controls

    def pause(self, symbol: str) -> None:
        """Stop acting on `symbol`'s decisions (they are still made and stored)."""
        self._running().coordinator.pause(symbol)

    def resume(self, symbol: str) -> None:
        """Act on `symbol`'s decisions again."""
        self._running().coordinator.resume(symbol)

    def kill_switch(self, on: bool = True) -> None:
        """No new trades; the runtime guards close every position at their next pass."""
        parts = self._running()
        parts.coordinator.set_kill_switch(on)
        parts.supervisor.trigger("runtime-guards")

    async def reset_drawdown(
        self, reason: str = "operator"
    ) -> tuple[EquityMarks, EquityMarks | None]:
        """Measure the drawdown from the equity now: the release of a drawdown halt.

        For after a review (the limit stops a strategy that is not working): today's peak
        and trough become the current equity, today's start and low stay, so a daily-loss
        halt still holds until the next day. Recorded as a WARNING alert naming the peak it
        replaced; the runtime guards run at once on the new state. Returns the new marks
        and the replaced ones (see `PositionTracker.reset_drawdown`).
        """
        parts = self._running()
        marks, replaced = await parts.tracker.reset_drawdown(
            quote_asset=self._config.venue.quote_asset
        )
        was = "none" if replaced is None else f"{replaced.peak_equity:.2f}"
        await parts.ledger.record_alert(
            Alert(
                AlertLevel.WARNING,
                AlertCode.DRAWDOWN_RESET,
                f"{reason}: drawdown now measured from equity {marks.peak_equity:.2f} "
                f"(the peak was {was})",
                self._clock.now(),
            )
        )
        _log.warning("desk_drawdown_reset", reason=reason, peak=str(marks.peak_equity), was=was)
        parts.supervisor.trigger("runtime-guards")
        return marks, replaced

    async def close_position(self, symbol: str, reason: str = "operator") -> Order | None:
        """Close `symbol`'s position at the market, keeping its protection until it is flat.

        Waits for a decision run in flight on `symbol` (an entry being protected) to end
        first, so the close never races the bracket. Returns the reduce-only closing order
        (recorded before it is sent), or None when no position is open or a close is
        already working. The fill is booked by the protection monitor.
        """
        self._config.instrument(symbol)
        async with self._running().coordinator.exclusive(symbol):
            return await self._close_now(symbol, reason)

    async def _close_now(self, symbol: str, reason: str) -> Order | None:
        parts = self._running()
        position = await parts.ledger.position(symbol)
        if position is None:
            return None
        working = await parts.ledger.orders(symbol=symbol, open_only=True)
        if any(record.role is OrderRole.CLOSE for record in working):
            return None
        # The stop-loss and take-profit stay on the venue until the close has filled: were
        # they cancelled first, a crash or a close that never fills would leave the position
        # bare. All three are reduce-only, so none of them can over-close; the protection
        # monitor cancels what is left once the position is flat.
        now = self._clock.now()
        self._close_sequence += 1
        stamp = f"{int(self._clock.timestamp() * 1000):x}{self._rng.getrandbits(16):04x}"
        order = Order(
            client_order_id=f"{_CLIENT_PREFIX}c{stamp}{self._close_sequence}-X",
            symbol=symbol,
            side=position.side.closing_side,
            type=OrderType.MARKET,
            quantity=position.quantity,
            reduce_only=True,
            leverage=position.leverage,
            reason=reason,
            created_at=now,
            updated_at=now,
        )
        await parts.ledger.write(lambda tx: tx.put_order(order, OrderRole.CLOSE))
        try:
            placed = await parts.venue.place_order(order)
        except OrderRejected as error:
            refused = order.transition(
                OrderStatus.REJECTED, at=self._clock.now(), reason=str(error)
            )
            await parts.ledger.write(lambda tx: tx.update_order(refused))
            # Most often the venue already closed the position through its stop-loss or
            # take-profit, a fill the protection monitor has not booked yet: nothing to do,
            # and nothing to warn about. A refusal with the position still open is.
            still_open = any(p.symbol == symbol for p in await parts.venue.positions())
            log = _log.warning if still_open else _log.info
            log(
                "desk_close_refused",
                symbol=symbol,
                reason=str(error),
                venue_position_open=still_open,
            )
            return None
        await parts.ledger.write(lambda tx: tx.update_order(placed))
        _log.info("desk_position_closing", symbol=symbol, reason=reason)
        return placed

    async def snapshot(self) -> DeskSnapshot:
        """The desk's state now: telemetry, positions, working orders, recent decisions."""
        parts = self._running()
        return DeskSnapshot(
            telemetry=self._telemetry,
            positions=tuple(await parts.ledger.open_positions()),
            open_orders=tuple(record.order for record in await parts.ledger.orders(open_only=True)),
            recent_decisions=tuple(await parts.decisions.decisions(limit=20)),
            paused=parts.coordinator.paused,
            kill_switch=parts.coordinator.kill_switch,
            bars_processed=self._bars_processed,
            loops=parts.supervisor.health(),
        )

    async def metrics(self) -> DeskMetrics:
        """The desk's figures now, for /metrics: read-only (it writes nothing to the store)."""
        parts = self._running()
        ledger = parts.ledger
        coordinator = parts.coordinator
        quote = self._config.venue.quote_asset
        balances = {asset: balance.total for asset, balance in (await ledger.balances()).items()}
        open_positions = {p.symbol: p for p in await ledger.open_positions()}
        closed = await self._closed_totals(ledger)
        orders = await ledger.orders(open_only=True)
        decided = coordinator.decision_counts()
        executed = coordinator.execution_counts()
        paused = coordinator.paused
        symbols = []
        for symbol in self._config.symbols:
            position = open_positions.get(symbol)
            price = self._last_price.get(symbol)
            realized, fees = closed.get(symbol, (_ZERO, _ZERO))
            if position is not None:
                realized += position.realized_pnl
                fees += position.fees_paid
            unrealized = _ZERO
            exposure = _ZERO
            if position is not None:
                unrealized = _unrealized(position, price)
                exposure = position.quantity * _mark(position, price)
            working = [r.order for r in orders if r.order.symbol == symbol]
            symbols.append(
                SymbolMetrics(
                    symbol=symbol,
                    side=None if position is None else position.side.value,
                    quantity=_ZERO if position is None else position.quantity,
                    exposure=exposure,
                    unrealized_pnl=unrealized,
                    realized_pnl=realized,
                    fees_paid=fees,
                    last_price=price,
                    paused=symbol in paused,
                    unknown_orders=sum(1 for o in working if o.status is OrderStatus.UNKNOWN),
                    open_orders=len(working),
                    decisions={
                        status: count for (sym, status), count in decided.items() if sym == symbol
                    },
                    trades={ok: count for (sym, ok), count in executed.items() if sym == symbol},
                )
            )
        alerts = await ledger.alert_counts()
        telemetry = self._telemetry
        return DeskMetrics(
            quote_asset=quote,
            equity=balances.get(quote, _ZERO) + sum((s.unrealized_pnl for s in symbols), _ZERO),
            balances=balances,
            symbols=tuple(symbols),
            trading_state=None if telemetry is None else telemetry.trading_state,
            kill_switch=coordinator.kill_switch,
            bars_processed=self._bars_processed,
            alerts=alerts,
            latencies=coordinator.stage_latencies(),
            pending_writes=len(parts.manager.pending),
            telemetry=telemetry,
        )

    # ------------------------------------------------------------------ loops

    async def _monitor_protection(self) -> int:
        if not self._unbooked_fills:
            return 0
        # One pass at a time (see `_strategy_bar`, which waits for a pass under way).
        async with self._booking:
            return await self._book_fills()

    async def _book_fills(self) -> int:
        # Under `_booking`: another pass may have booked them while this one waited.
        if not self._unbooked_fills:
            return 0
        self._unbooked_fills = False
        try:
            return await self._running().manager.monitor_protection()
        except BaseException:
            self._unbooked_fills = True  # the next pass books them
            raise

    async def _guard_pass(self) -> object:
        parts = self._running()
        if (
            not parts.coordinator.kill_switch
            and not await parts.ledger.has_open_positions_or_orders()
        ):
            # No position and no working order: the guards could neither close nor cancel
            # anything, so the pass (and the equity marks it writes) is skipped. Halts are
            # still enforced where they matter, by the risk engine on every proposal.
            return None

        async def fetch() -> GuardInputs:
            state = await parts.tracker.risk_state(
                quote_asset=self._config.venue.quote_asset,
                kill_switch=parts.coordinator.kill_switch,
            )
            positions = tuple(await parts.ledger.open_positions())
            orders = {
                r.order.client_order_id: r.order for r in await parts.ledger.orders(open_only=True)
            }
            for position in positions:
                cid = position.stop_loss_order_id
                if cid is not None and cid not in orders:
                    record = await parts.ledger.get_order(cid)
                    if record is not None:
                        orders[cid] = record.order
            return GuardInputs(state, positions, tuple(orders.values()))

        return await run_guard_iteration(
            fetch, self._act, limits=self._config.risk, clock=self._clock
        )

    async def _act(self, action: GuardAction) -> None:
        parts = self._running()
        if action.kind is GuardActionKind.CLOSE_POSITION and action.symbol is not None:
            await self.close_position(action.symbol, action.reason)
        elif action.kind is GuardActionKind.CANCEL_ORDER and action.client_order_id is not None:
            await self._cancel(action.client_order_id)
        elif action.kind is GuardActionKind.REPROTECT:
            # The reconciler owns re-protection (it knows the recorded stop prices).
            parts.supervisor.trigger("reconciler")

    async def _cancel(self, client_order_id: str) -> None:
        parts = self._running()
        try:
            cancelled = await parts.venue.cancel_order(client_order_id=client_order_id)
        except OrderNotFound:
            return  # gone already: the reconciler records what became of it
        except OrderRejected:
            # Filled or cancelled before our cancel arrived: record what the venue has.
            cancelled = await parts.venue.get_order(client_order_id=client_order_id)
        await parts.ledger.write(lambda tx: tx.update_order(cancelled))

    async def _closed_totals(self, ledger: TradingLedger) -> dict[str, tuple[Decimal, Decimal]]:
        """`ledger.closed_totals()`, summed again only when a position opened or closed since.

        The watermark is read before the sums: a close landing between the two moves it, and
        the next call sums again.
        """
        watermark = await ledger.positions_watermark()
        cached = self._closed
        if cached is not None and cached[0] == watermark:
            return cached[1]
        totals = await ledger.closed_totals()
        self._closed = (watermark, totals)
        return totals

    async def _publish_telemetry(self) -> DeskTelemetry:
        parts = self._running()
        if self._last_price:
            await parts.tracker.mark(dict(self._last_price))
        state = await parts.tracker.risk_state(
            quote_asset=self._config.venue.quote_asset,
            kill_switch=parts.coordinator.kill_switch,
        )
        # Per-symbol sums of the closed positions: no `Position` built per closed trade.
        closed = (await self._closed_totals(parts.ledger)).values()
        open_positions = state.open_positions
        telemetry = DeskTelemetry(
            at=self._clock.now(),
            equity=state.equity,
            exposure=state.total_exposure,
            open_positions=len(open_positions),
            unrealized_pnl=sum((p.unrealized_pnl for p in open_positions), _ZERO),
            realized_pnl=sum(
                (*(realized for realized, _ in closed), *(p.realized_pnl for p in open_positions)),
                _ZERO,
            ),
            fees_paid=sum(
                (*(fees for _, fees in closed), *(p.fees_paid for p in open_positions)), _ZERO
            ),
            trading_state=parts.risk.evaluate_state(state).state,
            latencies=parts.coordinator.latencies,
        )
        self._telemetry = telemetry
        if parts.bus.running:
            await parts.bus.publish(
                parts.bus.create_message(TELEMETRY_TOPIC, "desk", telemetry.as_dict())
            )
        return telemetry

    # ------------------------------------------------------------------ wiring

    async def _build(self, ledger: TradingLedger) -> _Parts:
        config = self._config
        quote = config.venue.quote_asset
        tracker = PositionTracker(
            ledger,
            clock=self._clock,
            instruments_base={i.symbol: i.base_asset for i in config.instruments},
        )
        balances = await ledger.balances()
        if quote not in balances:
            await tracker.set_balances({quote: config.venue.starting_balance})
            starting = config.venue.starting_balance
        else:
            # Resume: the venue starts from the balance the store carried over.
            starting = balances[quote].total
        venue_settings = config.venue
        venue = PaperVenue(
            config.instruments,
            balances={quote: starting},
            config=PaperVenueConfig(
                rules=venue_settings.matching_rules(),
                latency=venue_settings.latency,
                # The venue lives in the replayed market's time: budgets and latency too.
            ).at_speed(config.data.speed),
            clock=self._clock,
        )
        if self._persist_venue and (saved := await ledger.paper_venue_state(venue.name)):
            # A restart finds the venue's book as the last run left it.
            venue.restore(saved)
        bus = MessageBus(
            clock=self._clock, rng=random.Random(self._rng.getrandbits(32)), name="desk"
        )
        await bus.start()
        manager = OrderExecutionManager(
            venue,
            ledger,
            rng=random.Random(self._rng.getrandbits(32)),
            clock=self._clock,
            config=self._execution_config,
            tracker=tracker,
            bus=bus,
        )
        reconciler = Reconciler(
            venue,
            ledger,
            clock=self._clock,
            config=ReconcilerConfig(client_id_prefix=manager.config.client_id_prefix),
            tracker=tracker,
            bus=bus,
            on_resolved=manager.recover,
            in_progress=manager.orders_in_progress,
        )
        risk = RiskManagementEngine(config.instruments, config.risk)
        decisions = DecisionLog(ledger.database, buffer_claims=self._buffer_decisions)
        coordinator = CoordinatorAgent(
            instruments=config.instruments,
            strategies=config.strategies,
            risk_engine=risk,
            executor=manager,
            tracker=tracker,
            decision_log=decisions,
            bus=bus,
            quote_asset=quote,
            clock=self._clock,
            resolvers=self._resolvers(config),
            closer=_PipelineCloser(self),
        )
        return _Parts(
            ledger=ledger,
            bus=bus,
            venue=venue,
            tracker=tracker,
            manager=manager,
            reconciler=reconciler,
            risk=risk,
            decisions=decisions,
            coordinator=coordinator,
            supervisor=Supervisor(clock=self._clock, rng=random.Random(self._rng.getrandbits(32))),
        )

    def _resolvers(self, config: DeskConfig) -> dict[str, ConflictResolver]:
        # A strategy's LLM client is built once and reused when its settings are reloaded.
        resolvers: dict[str, ConflictResolver] = {}
        for strategy in config.strategies:
            if strategy.name in self._resolver_overrides:
                resolvers[strategy.name] = self._resolver_overrides[strategy.name]
                continue
            rules = RuleResolver(
                ConflictSettings(
                    weak_consensus=strategy.weak_consensus,
                    high_volatility_size=strategy.high_volatility_size,
                )
            )
            if strategy.resolver is ResolverKind.LLM:
                llm = config.llm
                client = self._llm_clients.get(strategy.name)
                if client is None:
                    client = LLMClient(
                        llm.client_settings(),
                        clock=self._clock,
                        rng=random.Random(self._rng.getrandbits(32)),
                    )
                    self._llm_clients[strategy.name] = client
                resolvers[strategy.name] = LLMResolver(client, rules, timeout=llm.timeout)
            else:
                resolvers[strategy.name] = rules
        return resolvers

    def _running(self) -> _Parts:
        if self._parts is None:
            raise ValidationError("state", "stopped", "a started desk (call start() first)")
        return self._parts


@dataclass(frozen=True, slots=True)
class _Parts:
    ledger: TradingLedger
    bus: MessageBus
    venue: PaperVenue
    tracker: PositionTracker
    manager: OrderExecutionManager
    reconciler: Reconciler
    risk: RiskManagementEngine
    decisions: DecisionLog
    coordinator: CoordinatorAgent
    supervisor: Supervisor


class _PipelineCloser:
    # A CLOSE decision is acted on inside its run, which already holds the symbol's lock.
    __slots__ = ("_desk",)

    def __init__(self, desk: Desk) -> None:
        self._desk = desk

    async def close_position(self, symbol: str, reason: str) -> Order | None:
        return await self._desk._close_now(symbol, reason)


def _run_failed(symbol: str, error: LegatoError) -> None:
    # One failed run (a store outage, a venue error) must not stop the desk: the next bar
    # decides again, and the reconciler repairs what was left half-done.
    _log.error("desk_pipeline_failed", symbol=symbol, error=str(error))


def configured_strategies(
    config: DeskConfig, given: Mapping[str, Strategy] | None = None
) -> dict[str, Strategy]:
    """The strategies of yours `config` names (`code`), made for the symbols not in `given`.

    By symbol, each made from its strategy's `params` (see `StrategyConfig`). The user's
    module is imported here: ValidationError names ``strategies[NAME].code`` or ``.params``.
    """
    made: dict[str, Strategy] = {}
    for strategy in config.strategies:
        symbols = [symbol for symbol in strategy.symbols if symbol not in (given or {})]
        if strategy.code is None or not symbols:
            continue
        where = f"strategies[{strategy.name}]"
        found = find_strategy(
            strategy.code, field=f"{where}.code", expected="MODULE:NAME of a strategy of yours"
        )
        made.update(
            zip(
                symbols,
                make_strategies(
                    found,
                    dict(strategy.params),
                    len(symbols),
                    spec=strategy.code,
                    field=f"{where}.code",
                    params_field=f"{where}.params",
                ),
                strict=True,
            )
        )
    return made


class _Strategist:
    # A symbol's strategy of the user's, its context, and its proposals in flight.
    __slots__ = ("context", "failing", "in_flight", "name", "proposals", "strategy")

    def __init__(self, strategy: Strategy, instrument: Instrument) -> None:
        self.strategy = strategy
        self.name = strategy_label(strategy)
        self.proposals: list[TradeProposal] = []
        self.context = StrategyContext(instrument, self.proposals.append, strategy_id=self.name)
        self.in_flight = 0
        self.failing = False


def _mark(position: Position, price: Decimal | None) -> Decimal:
    # The last bar's close, else the position's own mark, else its entry.
    return price if price is not None else position.mark_price or position.entry_price


def _unrealized(position: Position, price: Decimal | None) -> Decimal:
    return (_mark(position, price) - position.entry_price) * position.quantity * position.side.sign


def _start_of_bar(now: datetime, interval_seconds: float) -> datetime:
    seconds = now.timestamp()
    return datetime.fromtimestamp(seconds - seconds % interval_seconds, UTC)


async def _close_stream(stream: AsyncIterator[Bar]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()
