"""The coordinator: one decision pipeline per symbol, from a closed bar to an order.

`CoordinatorAgent.observe(bar)` feeds the symbol's indicators (every bar, in order, at once);
`run(symbol, snapshot)` carries one decision through the pipeline:

    signal -> technical analysis -> regime -> decision (panel vote) -> conflicts
    -> resolution (rules or LLM) -> proposal sized from the risk budget -> risk engine
    -> executor

Every stage publishes a message on the bus, all with the correlation id of the run's first
message (`desk.signal.<symbol>`) and each caused by the one before it, so a trade can be
followed from signal to order (`bus.trace(correlation_id)`). The decision, the votes and the
conflicts are stored in the `DecisionLog`.

One pipeline per symbol at a time: runs for a symbol queue on its lock (never on another
lock, so they cannot deadlock), and a run whose bar is older than the symbol's latest is
superseded without deciding. A run is keyed by (symbol, bar time); the key is claimed in the
decision log before anything is sent, so a second run for the same bar, here or in another
process, never trades. The execution intent id is derived from the key, so even a retried
call resumes the same trade instead of opening another.

A symbol a strategy of the user's trades (the strategy API's `on_bar(bar, ctx)`, see
`legato.trading.strategy`) skips the agents: the desk publishes each bar's signal
(`publish_bar`) and hands each proposal the strategy makes to `run_proposal`, which keys and
claims it as a decision (no votes, no conflicts) and carries it through the same risk,
execution and outcome stages.

The executor and the position closer are Protocols: the desk passes the
`OrderExecutionManager` and its own closer; the coordinator reads only `success`, `status`,
`error_message`, `intent_id` and `orders` of the result.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import re
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Protocol

import structlog

from legato.kernel.bus import MessageBus
from legato.kernel.clock import Clock, RealClock
from legato.kernel.errors import ValidationError
from legato.kernel.logs import logs_at
from legato.kernel.message import Message
from legato.trading.agents.decision import DecisionSettings, TradeDecision, TradingDecisionAgent
from legato.trading.agents.models import DecisionContext, DecisionModel, TradeAction
from legato.trading.agents.records import slot_init
from legato.trading.agents.regime import RegimeAssessment, RegimeDetectionAgent
from legato.trading.agents.snapshot import IndicatorSet, IndicatorSettings, IndicatorSnapshot
from legato.trading.agents.technical import TechnicalAnalysis, TechnicalAnalysisAgent
from legato.trading.conflicts import (
    Conflict,
    ConflictCase,
    ConflictResolver,
    ConflictSettings,
    Resolution,
    ResolutionAction,
    RuleResolver,
    candidate_action,
    detect_conflicts,
)
from legato.trading.copies import RecordCopier
from legato.trading.decision_log import (
    ConflictRecord,
    DecisionLog,
    DecisionRecord,
    PipelineStatus,
)
from legato.trading.desk_config import StrategyConfig
from legato.trading.instruments import Instrument
from legato.trading.market_data import Bar
from legato.trading.orders import Order, OrderSide
from legato.trading.proposals import TradeProposal
from legato.trading.risk import RiskDecision, RiskManagementEngine, RiskState
from legato.trading.tracker import PositionTracker

__all__ = [
    "LATENCY_BUCKETS",
    "CoordinatorAgent",
    "ExecutionOutcome",
    "PipelineOutcome",
    "PositionCloser",
    "RunDisposition",
    "StageLatency",
    "TradeExecutor",
    "decision_key",
    "intent_id_for",
    "topic_token",
]

_log = structlog.get_logger(__name__)
_SOURCE = "coordinator"
_ENTRIES = (TradeAction.BUY, TradeAction.SELL)
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0)
"""Upper bounds (seconds) of the stage latency histograms; a last +Inf bucket is implied."""


@dataclass(frozen=True, slots=True)
class StageLatency:
    """Every run of one pipeline stage so far: how many, their total and a histogram.

    `buckets[i]` counts the runs that took at most `LATENCY_BUCKETS[i]` seconds (each run
    counted once, in the first bucket it fits; runs slower than the last bound are only in
    `count`).
    """

    count: int
    total_seconds: float
    buckets: tuple[int, ...]

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus-style cumulative buckets, ending with ``+Inf`` = `count`."""
        running = 0
        result = []
        for bound, hits in zip(LATENCY_BUCKETS, self.buckets, strict=True):
            running += hits
            result.append((f"{bound:g}", running))
        result.append(("+Inf", self.count))
        return result


@dataclass(slots=True)
class _StageTimer:
    count: int = 0
    total: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        # The first bucket whose bound is at least `seconds` (none past the last bound).
        index = bisect_left(LATENCY_BUCKETS, seconds)
        if index < len(LATENCY_BUCKETS):
            self.buckets[index] += 1


class ExecutionOutcome(Protocol):
    """What the coordinator reads of an executor's result."""

    @property
    def intent_id(self) -> str:
        """The execution intent's id."""
        ...

    @property
    def success(self) -> bool:
        """True when the position is open and protected."""
        ...

    @property
    def status(self) -> enum.Enum:
        """Where the trade stands."""
        ...

    @property
    def error_message(self) -> str | None:
        """Why it failed, if it did."""
        ...

    @property
    def orders(self) -> Sequence[Order]:
        """The orders of the trade."""
        ...


class TradeExecutor(Protocol):
    """Carries an approved proposal to the venue (the `OrderExecutionManager`)."""

    async def execute_trade(
        self, proposal: TradeProposal, *, intent_id: str | None = None
    ) -> ExecutionOutcome:
        """Execute `proposal`; the same `intent_id` resumes instead of trading again."""
        ...


class PositionCloser(Protocol):
    """Closes the open position of a symbol (the desk's close control)."""

    async def close_position(self, symbol: str, reason: str) -> object:
        """Close `symbol`'s position; `reason` is recorded."""
        ...


class RunDisposition(enum.Enum):
    """Whether a run decided at all."""

    DECIDED = "decided"  # stored in the decision log with a PipelineStatus
    DUPLICATE = "duplicate"  # its key was already claimed: nothing done
    SUPERSEDED = "superseded"  # a newer bar of the symbol arrived first: nothing done
    WARMING_UP = "warming_up"  # the indicators are not ready yet: nothing done


@slot_init
@dataclass(frozen=True, slots=True)
class PipelineOutcome:
    """What one pipeline run did, stage by stage (None where it did not get that far)."""

    key: str
    symbol: str
    bar_time: datetime
    disposition: RunDisposition
    status: PipelineStatus | None = None
    correlation_id: str | None = None
    decision: TradeDecision | None = None
    conflicts: tuple[Conflict, ...] = ()
    resolution: Resolution | None = None
    proposal: TradeProposal | None = None
    risk: RiskDecision | None = None
    execution: ExecutionOutcome | None = None
    detail: str | None = None

    @property
    def traded(self) -> bool:
        """True when an executor was asked to trade (successfully or not)."""
        return self.execution is not None


# A run's outcome is copied at each stage it passes: cheaper than `dataclasses.replace`.
_OUTCOMES = RecordCopier(PipelineOutcome)


def decision_key(symbol: str, bar_time: datetime) -> str:
    """The idempotency key of the run for `symbol`'s bar closing at `bar_time`."""
    return _key(symbol, bar_time.isoformat())


def _key(symbol: str, bar_time: str) -> str:
    # `decision_key` with the bar time already in ISO 8601 (a run needs that text too).
    return f"{symbol}@{bar_time}"


def intent_id_for(key: str) -> str:
    """The execution intent id of run `key`: 20 hex digits, short enough for client ids."""
    return hashlib.sha256(key.encode()).hexdigest()[:20]


_TOKEN = re.compile(r"[^A-Za-z0-9_-]+")


def topic_token(symbol: str) -> str:
    """`symbol` as one topic segment ("ETH/USDT" -> "ETH-USDT")."""
    return _TOKEN.sub("-", symbol).strip("-") or "symbol"


@dataclass(slots=True)
class _Book:
    # The per-symbol state: indicators, agents, settings and the pipeline lock.
    instrument: Instrument
    strategy: StrategyConfig
    indicators: IndicatorSet
    technical: TechnicalAnalysisAgent
    regime: RegimeDetectionAgent
    agent: TradingDecisionAgent
    levels: TradingDecisionAgent
    resolver: ConflictResolver
    conflict_settings: ConflictSettings
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    latest: datetime | None = None


@dataclass(slots=True)
class _Run:
    # The working state of one run: its key, the chain of messages, the stage timings.
    key: str
    bar_time: str  # the bar's timestamp in ISO 8601, as in `key`
    book: _Book
    symbol: str
    last: Message | None = None
    correlation_id: str | None = None


class CoordinatorAgent:
    """Runs the decision pipeline of each symbol; see the module docstring.

    `strategies` say which symbols are traded and how; `instruments` give their tick and
    lot sizes. `resolvers` maps a strategy name to its conflict resolver (default: the
    rules). `models` builds a strategy's decision panel (default: the offline rule models).
    `closer` acts on CLOSE decisions (without one they are stored and not acted on).
    """

    def __init__(
        self,
        *,
        instruments: Iterable[Instrument],
        strategies: Sequence[StrategyConfig],
        risk_engine: RiskManagementEngine,
        executor: TradeExecutor,
        tracker: PositionTracker,
        decision_log: DecisionLog,
        bus: MessageBus,
        quote_asset: str,
        clock: Clock | None = None,
        resolvers: Mapping[str, ConflictResolver] | None = None,
        models: Mapping[str, Sequence[DecisionModel]] | None = None,
        closer: PositionCloser | None = None,
        indicator_settings: IndicatorSettings | None = None,
    ) -> None:
        by_symbol = {instrument.symbol: instrument for instrument in instruments}
        self._clock: Clock = clock if clock is not None else RealClock()
        self._risk = risk_engine
        self._executor = executor
        self._tracker = tracker
        self._log = decision_log
        self._bus = bus
        self._quote = quote_asset
        self._closer = closer
        self._books: dict[str, _Book] = {}
        self._paused: set[str] = set()
        self._kill_switch = False
        self._latency: dict[str, float] = {}
        self._timers: dict[str, _StageTimer] = {}
        self._decided: dict[tuple[str, str], int] = {}
        self._executed: dict[tuple[str, bool], int] = {}
        # "desk.<stage>.<symbol token>" by (stage, symbol): a few stages times the symbols.
        self._topics: dict[tuple[str, str], str] = {}
        # The last bar time and its ISO text (see `bar_time_text`).
        self._last_bar_time: tuple[datetime, str] | None = None
        for strategy in strategies:
            panel = (models or {}).get(strategy.name)
            for symbol in strategy.symbols:
                instrument = by_symbol.get(symbol)
                if instrument is None:
                    raise ValidationError(
                        "strategies", symbol, f"symbols with an instrument ({sorted(by_symbol)})"
                    )
                if symbol in self._books:
                    raise ValidationError("strategies", symbol, "each symbol in one strategy")
                settings = DecisionSettings(
                    min_consensus=strategy.min_consensus,
                    stop_atr=strategy.stop_atr,
                    target_atr=strategy.target_atr,
                    tick_size=instrument.tick_size,
                )
                agent = TradingDecisionAgent(panel, settings)
                conflict_settings = ConflictSettings(
                    weak_consensus=strategy.weak_consensus,
                    high_volatility_size=strategy.high_volatility_size,
                )
                resolver = (resolvers or {}).get(strategy.name) or RuleResolver(conflict_settings)
                self._books[symbol] = _Book(
                    instrument=instrument,
                    strategy=strategy,
                    indicators=IndicatorSet(symbol, indicator_settings),
                    technical=TechnicalAnalysisAgent(symbol),
                    regime=RegimeDetectionAgent(symbol),
                    agent=agent,
                    # The same panel with no consensus bar: levels for a split vote's leader.
                    levels=TradingDecisionAgent(agent.models, replace(settings, min_consensus=0.0)),
                    resolver=resolver,
                    conflict_settings=conflict_settings,
                )

    # ------------------------------------------------------------------ controls and state

    @property
    def symbols(self) -> tuple[str, ...]:
        """The symbols coordinated."""
        return tuple(self._books)

    def pause(self, symbol: str) -> None:
        """Keep deciding on `symbol` (and storing it) but act on nothing until `resume`."""
        self._book(symbol)
        self._paused.add(symbol)

    def resume(self, symbol: str) -> None:
        """Act on `symbol`'s decisions again."""
        self._book(symbol)
        self._paused.discard(symbol)

    def exclusive(self, symbol: str) -> asyncio.Lock:
        """The lock of `symbol`'s pipeline: hold it to act on the symbol between runs.

        `async with coordinator.exclusive(symbol):` waits for a run in flight (an entry
        being filled and protected) to finish, and keeps the next one waiting. Never take
        it inside a run (the pipeline's position closer is called with it held).
        """
        return self._book(symbol).lock

    @property
    def paused(self) -> frozenset[str]:
        """The paused symbols."""
        return frozenset(self._paused)

    @property
    def kill_switch(self) -> bool:
        """True when the kill switch is on (the risk engine rejects every opening trade)."""
        return self._kill_switch

    def set_kill_switch(self, on: bool) -> None:
        """Turn the kill switch on or off for the risk checks of later runs."""
        self._kill_switch = on

    @property
    def latencies(self) -> dict[str, float]:
        """Seconds the last run of each stage took (`analysis`, `decision`, ...)."""
        return dict(self._latency)

    def stage_latencies(self) -> dict[str, StageLatency]:
        """Every run of each stage since the coordinator was built, as histograms.

        Stages: ``analysis`` (the technical-analysis and regime agents), ``decision`` (the
        decision agent polling its panel), ``resolution`` (the conflict resolver, rules or
        LLM), ``risk`` (sizing and the risk engine) and ``execution`` (the executor).
        """
        return {
            stage: StageLatency(timer.count, timer.total, tuple(timer.buckets))
            for stage, timer in self._timers.items()
        }

    def decision_counts(self) -> dict[tuple[str, str], int]:
        """Decided runs since the coordinator was built, by (symbol, PipelineStatus value)."""
        return dict(self._decided)

    def execution_counts(self) -> dict[tuple[str, bool], int]:
        """Trades handed to the executor, by (symbol, whether it reported success)."""
        return dict(self._executed)

    def _time(self, stage: str, started: float) -> None:
        elapsed = self._clock.monotonic() - started
        self._latency[stage] = elapsed
        timer = self._timers.get(stage)
        if timer is None:
            timer = self._timers[stage] = _StageTimer()
        timer.add(elapsed)

    def reconfigure(
        self,
        *,
        strategies: Sequence[StrategyConfig],
        risk_engine: RiskManagementEngine,
        resolvers: Mapping[str, ConflictResolver] | None = None,
    ) -> None:
        """Take new strategy settings, risk engine and resolvers for the runs that follow.

        All or nothing: every new part is built and checked before any replaces the old,
        so a ValidationError (a strategy whose symbols differ from the running ones)
        changes nothing. The symbols' indicators, locks, decision panels and latest bars
        carry over; a run in flight finishes on the book it started with. A strategy with
        no resolver in `resolvers` keeps its resolver.
        """
        if not isinstance(risk_engine, RiskManagementEngine):
            raise ValidationError("risk_engine", risk_engine, "a RiskManagementEngine")
        books: dict[str, _Book] = {}
        for strategy in strategies:
            for symbol in strategy.symbols:
                book = self._books.get(symbol)
                if book is None or book.strategy.name != strategy.name:
                    raise ValidationError(
                        "strategies",
                        symbol,
                        f"the running symbols of strategy {strategy.name!r} (a restart "
                        "changes which symbols a strategy trades)",
                    )
                settings = replace(
                    book.agent.settings,
                    min_consensus=strategy.min_consensus,
                    stop_atr=strategy.stop_atr,
                    target_atr=strategy.target_atr,
                )
                agent = TradingDecisionAgent(book.agent.models, settings)
                conflict_settings = ConflictSettings(
                    weak_consensus=strategy.weak_consensus,
                    high_volatility_size=strategy.high_volatility_size,
                )
                books[symbol] = replace(
                    book,
                    strategy=strategy,
                    agent=agent,
                    levels=TradingDecisionAgent(agent.models, replace(settings, min_consensus=0.0)),
                    resolver=(resolvers or {}).get(strategy.name) or book.resolver,
                    conflict_settings=conflict_settings,
                )
        if set(books) != set(self._books):
            raise ValidationError(
                "strategies", sorted(books), f"strategies over the symbols {sorted(self._books)}"
            )
        # Nothing awaits between here and the last assignment: no run sees half of it.
        self._books = books
        self._risk = risk_engine

    # ------------------------------------------------------------------ the pipeline

    def bar_time_text(self, timestamp: datetime) -> str:
        """`timestamp.isoformat()`: a bar time as decision keys spell it.

        The last one is kept, so a bar's text is made once though the desk names the bar's
        run with it before the run keys itself with it (`isoformat` is a slow formatter).
        """
        last = self._last_bar_time
        if last is not None and last[0] is timestamp:
            return last[1]
        text = timestamp.isoformat()
        self._last_bar_time = (timestamp, text)
        return text

    def observe(self, bar: Bar) -> IndicatorSnapshot:
        """Feed `bar` into its symbol's indicators; return the snapshot to `run` on."""
        book = self._book(bar.symbol)
        snapshot = book.indicators.update(bar)
        book.latest = snapshot.timestamp
        return snapshot

    async def on_bar(self, bar: Bar) -> PipelineOutcome:
        """`observe(bar)` and `run` the pipeline on it."""
        return await self.run(bar.symbol, self.observe(bar))

    async def run(self, symbol: str, snapshot: IndicatorSnapshot) -> PipelineOutcome:
        """Run the decision pipeline for `symbol` on `snapshot` (one run per symbol at once)."""
        book = self._book(symbol)
        if snapshot.symbol != symbol:
            raise ValidationError("snapshot", snapshot.symbol, f"a snapshot of {symbol}")
        bar_time = self.bar_time_text(snapshot.timestamp)
        key = _key(symbol, bar_time)
        async with book.lock:
            # The book now, not the one found before waiting: `reconfigure` may have swapped
            # it meanwhile (the lock is shared), and the queued run takes the new settings.
            book = self._book(symbol)
            if book.latest is not None and snapshot.timestamp < book.latest:
                return PipelineOutcome(key, symbol, snapshot.timestamp, RunDisposition.SUPERSEDED)
            if await self._log.has(key):
                return PipelineOutcome(key, symbol, snapshot.timestamp, RunDisposition.DUPLICATE)
            return await self._run(_Run(key, bar_time, book, symbol), snapshot)

    async def _run(self, run: _Run, snapshot: IndicatorSnapshot) -> PipelineOutcome:
        book, symbol = run.book, run.symbol
        started = self._clock.monotonic()
        technical = book.technical.analyze(snapshot)
        regime = book.regime.analyze(snapshot)
        if technical is None or regime is None:
            return PipelineOutcome(run.key, symbol, snapshot.timestamp, RunDisposition.WARMING_UP)
        self._time("analysis", started)

        position = await self._tracker.ledger.position(symbol)
        context = DecisionContext(
            symbol=symbol,
            timestamp=snapshot.timestamp,
            indicators=snapshot,
            technical=technical,
            regime=regime,
            position=position.side if position is not None else None,
        )
        started = self._clock.monotonic()
        decision = await book.agent.decide(context)
        self._time("decision", started)
        # The run's messages go out only once it owns its key: a run that loses the claim
        # to another process publishes nothing, so the bus holds one chain per bar.
        signal = self._bus.create_message(
            self._topic("signal", symbol),
            _SOURCE,
            {
                "key": run.key,
                "symbol": symbol,
                "bar_time": run.bar_time,
                "close": str(snapshot.close_price),
            },
        )
        correlation_id = signal.correlation_id
        now = self._clock.now()
        action = candidate_action(decision)
        acting = action in _ENTRIES or (action is TradeAction.CLOSE and position is not None)
        # A run that cannot lead to an order is stored in a batch, not claimed: see
        # DecisionLog.record_no_trade for what that trades away (and what it keeps).
        no_trade = not acting and symbol not in self._paused
        technical_payload = _technical_payload(technical)
        regime_payload = _regime_payload(regime)
        record = DecisionRecord(
            key=run.key,
            symbol=symbol,
            bar_time=snapshot.timestamp,
            strategy=book.strategy.name,
            correlation_id=correlation_id,
            action=decision.action,
            leading_action=decision.leading_action,
            consensus=decision.consensus,
            split=decision.split,
            entry=decision.entry,
            stop=decision.stop,
            target=decision.target,
            reasoning=decision.reasoning,
            # The same readings go out on the bus (`_announce`): built once for both.
            analysis={"technical": technical_payload, "regime": regime_payload},
            status=PipelineStatus.NO_TRADE if no_trade else PipelineStatus.CLAIMED,
            created_at=now,
            updated_at=now,
            detail=decision.reasoning if no_trade else None,
        )
        if no_trade:
            if not await self._log.record_no_trade(record, decision.votes):
                return PipelineOutcome(
                    run.key, symbol, snapshot.timestamp, RunDisposition.DUPLICATE
                )
            await self._announce(run, signal, technical_payload, regime_payload, decision)
            outcome = PipelineOutcome(
                run.key,
                symbol,
                snapshot.timestamp,
                RunDisposition.DECIDED,
                status=PipelineStatus.NO_TRADE,
                correlation_id=run.correlation_id,
                decision=decision,
                detail=decision.reasoning,
            )
            return await self._end(
                run, outcome, PipelineStatus.NO_TRADE, decision.reasoning, stored=True
            )
        if not await self._log.claim(record, decision.votes):
            # Another process claimed this bar between our check and our write.
            return PipelineOutcome(run.key, symbol, snapshot.timestamp, RunDisposition.DUPLICATE)
        await self._announce(run, signal, technical_payload, regime_payload, decision)
        outcome = PipelineOutcome(
            run.key,
            symbol,
            snapshot.timestamp,
            RunDisposition.DECIDED,
            correlation_id=run.correlation_id,
            decision=decision,
        )
        return await self._act(run, outcome, context, technical, regime, position is not None)

    # ------------------------------------------------------------------ a strategy's proposals

    async def publish_bar(self, bar: Bar) -> Message:
        """Publish `bar`'s ``desk.signal.<symbol>`` message, for a symbol a strategy trades.

        An agents' run starts its chain with this message. A symbol traded by a strategy
        (`run_proposal`) gets one each bar all the same, so its price chart and bus history
        read as an agents' symbol's do. Returns the message: the chains of the proposals the
        strategy made on the bar hang from it.
        """
        symbol = bar.symbol
        self._book(symbol)
        bar_time = self.bar_time_text(bar.timestamp)
        signal = self._bus.create_message(
            self._topic("signal", symbol),
            _SOURCE,
            {
                "key": _key(symbol, bar_time),
                "symbol": symbol,
                "bar_time": bar_time,
                "close": str(bar.close),
            },
        )
        await self._bus.publish(signal)
        return signal

    async def run_proposal(
        self,
        proposal: TradeProposal,
        *,
        bar_time: datetime,
        signal: Message,
        source: str,
        sequence: int = 1,
    ) -> PipelineOutcome:
        """Carry a strategy's `proposal`, made on the bar of `bar_time`, through the pipeline.

        What follows a decision in an agents' run follows here, under the symbol's lock: the
        run is keyed by the bar (the second proposal of a bar gets "#2" after the key, and so
        on, by `sequence`) and claimed in the decision log, as a BUY, SELL or CLOSE decision
        whose strategy and reasoning name `source` and which has no votes; it is announced on
        the bus, caused by the bar's `signal` (see `publish_bar`); then an opening proposal
        is checked by the risk engine, which may refuse it or cut its quantity (the
        strategy's own), and executed, and a reduce-only one closes the position through the
        desk's closer. A paused symbol's proposals are stored and not acted on; a key
        already claimed (a restart replaying a bar) is a DUPLICATE and does nothing.
        """
        if not isinstance(proposal, TradeProposal):
            raise ValidationError("proposal", proposal, "a TradeProposal")
        if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 1:
            raise ValidationError("sequence", sequence, "an int >= 1")
        symbol = proposal.symbol
        book = self._book(symbol)
        text = self.bar_time_text(bar_time)
        key = _key(symbol, text) if sequence == 1 else f"{_key(symbol, text)}#{sequence}"
        async with book.lock:
            if await self._log.has(key):
                return PipelineOutcome(key, symbol, bar_time, RunDisposition.DUPLICATE)
            closing = proposal.reduce_only
            if closing:
                action = TradeAction.CLOSE
                asked = "asked to close the position"
            else:
                action = TradeAction.BUY if proposal.side is OrderSide.BUY else TradeAction.SELL
                target = "" if proposal.take_profit is None else f", target {proposal.take_profit}"
                asked = (
                    f"asked to {proposal.side.value.lower()} {proposal.quantity} at the market "
                    f"(stop {proposal.stop_loss}{target})"
                )
            reasoning = f"{source} {asked}"
            now = self._clock.now()
            claimed = await self._log.claim(
                DecisionRecord(
                    key=key,
                    symbol=symbol,
                    bar_time=bar_time,
                    strategy=source,
                    correlation_id=signal.correlation_id,
                    action=action,
                    leading_action=action,
                    consensus=1.0,
                    split=False,
                    entry=proposal.entry_price,
                    stop=proposal.stop_loss,
                    target=proposal.take_profit,
                    reasoning=reasoning,
                    analysis={"strategy": source},
                    status=PipelineStatus.CLAIMED,
                    created_at=now,
                    updated_at=now,
                ),
                (),
            )
            if not claimed:
                return PipelineOutcome(key, symbol, bar_time, RunDisposition.DUPLICATE)
            run = _Run(key, text, book, symbol, signal, signal.correlation_id)
            await self._publish(
                run,
                "decision",
                {
                    "action": action._value_,
                    "strategy": source,
                    "quantity": str(proposal.quantity),
                    "entry": str(proposal.entry_price),
                    "stop": None if proposal.stop_loss is None else str(proposal.stop_loss),
                    "target": None if proposal.take_profit is None else str(proposal.take_profit),
                    "reasoning": reasoning,
                },
            )
            outcome = PipelineOutcome(
                key, symbol, bar_time, RunDisposition.DECIDED, correlation_id=run.correlation_id
            )
            if symbol in self._paused:
                return await self._end(run, outcome, PipelineStatus.PAUSED, "the symbol is paused")
            if closing:
                if self._closer is None:
                    return await self._end(
                        run, outcome, PipelineStatus.NO_TRADE, "CLOSE asked; no closer configured"
                    )
                if await self._tracker.ledger.position(symbol) is None:
                    # Its stop-loss or take-profit closed it on the bar the strategy just saw.
                    return await self._end(
                        run, outcome, PipelineStatus.NO_TRADE, "no open position to close"
                    )
                await self._closer.close_position(symbol, f"decision {key}: {reasoning}")
                return await self._end(run, outcome, PipelineStatus.CLOSE_REQUESTED, "CLOSE")
            started = self._clock.monotonic()
            state = await self._tracker.risk_state(
                quote_asset=self._quote, kill_switch=self._kill_switch
            )
            # The bus's correlation id, as an agents' proposal carries: signal to order.
            carried = replace(proposal, correlation_id=run.correlation_id)
            return await self._carry_out(run, outcome, carried, state, started)

    async def _announce(
        self,
        run: _Run,
        signal: Message,
        technical: Mapping[str, Any],
        regime: Mapping[str, Any],
        decision: TradeDecision,
    ) -> None:
        """Publish a stored run's signal, analysis, regime and decision, in one chain."""
        await self._bus.publish(signal)
        run.last, run.correlation_id = signal, signal.correlation_id
        await self._publish(run, "analysis", technical)
        await self._publish(run, "regime", regime)
        await self._publish(run, "decision", _decision_payload(decision))

    async def _act(
        self,
        run: _Run,
        outcome: PipelineOutcome,
        context: DecisionContext,
        technical: TechnicalAnalysis,
        regime: RegimeAssessment,
        holding: bool,
    ) -> PipelineOutcome:
        book = run.book
        decision = outcome.decision
        assert decision is not None
        symbol = decision.symbol
        if symbol in self._paused:
            return await self._end(run, outcome, PipelineStatus.PAUSED, "the symbol is paused")
        action = candidate_action(decision)
        if action is TradeAction.CLOSE and holding:
            if self._closer is None:
                return await self._end(
                    run, outcome, PipelineStatus.NO_TRADE, "CLOSE decided; no closer configured"
                )
            await self._closer.close_position(symbol, f"decision {run.key}: {decision.reasoning}")
            return await self._end(run, outcome, PipelineStatus.CLOSE_REQUESTED, "CLOSE")
        if action not in _ENTRIES:
            return await self._end(run, outcome, PipelineStatus.NO_TRADE, decision.reasoning)

        conflicts = detect_conflicts(decision, technical, regime, book.conflict_settings)
        resolution = Resolution(ResolutionAction.PROCEED, Decimal(1), "no conflict", 1.0, "rules")
        if conflicts:
            started = self._clock.monotonic()
            resolution = await book.resolver.resolve(
                ConflictCase(decision, technical, regime, conflicts)
            )
            self._time("resolution", started)
            await self._log.record_conflict(
                ConflictRecord(run.key, symbol, conflicts, resolution, self._clock.now())
            )
            await self._publish(run, "conflict", _conflict_payload(conflicts, resolution))
        outcome = _OUTCOMES.copy(outcome, {"conflicts": conflicts, "resolution": resolution})
        if not resolution.trades:
            status = (
                PipelineStatus.ABORTED
                if resolution.action is ResolutionAction.ABORT
                else PipelineStatus.WAITED
            )
            return await self._end(run, outcome, status, resolution.reasoning)

        levels = decision if not decision.split else book.levels.combine(context, decision.votes)
        if levels.entry is None or levels.stop is None:
            return await self._end(
                run, outcome, PipelineStatus.INVALID, "the decision has no entry and stop levels"
            )
        started = self._clock.monotonic()
        state = await self._tracker.risk_state(
            quote_asset=self._quote, kill_switch=self._kill_switch
        )
        quantity = _size(
            state.equity,
            book.strategy.risk_per_trade * resolution.size_factor,
            levels.entry,
            levels.stop,
            book,
        )
        try:
            proposal = TradeProposal(
                symbol=symbol,
                side=OrderSide.BUY if action is TradeAction.BUY else OrderSide.SELL,
                quantity=quantity,
                entry_price=levels.entry,
                stop_loss=levels.stop,
                take_profit=levels.target,
                leverage=book.strategy.leverage,
                strategy_id=book.strategy.name,
                correlation_id=run.correlation_id,
            )
        except ValidationError as error:
            return await self._end(run, outcome, PipelineStatus.INVALID, str(error))
        return await self._carry_out(run, outcome, proposal, state, started)

    async def _carry_out(
        self,
        run: _Run,
        outcome: PipelineOutcome,
        proposal: TradeProposal,
        state: RiskState,
        started: float,
    ) -> PipelineOutcome:
        """Risk-check `proposal` on `state`, link it to its intent, execute it, end the run.

        `started` is when the risk stage began (the sizing, for the agents' runs).
        """
        symbol = run.symbol
        outcome = _OUTCOMES.copy(outcome, {"proposal": proposal})
        await self._publish(run, "proposal", proposal.as_dict())
        risk = self._risk.validate_trade(proposal, state)
        self._time("risk", started)
        outcome = _OUTCOMES.copy(outcome, {"risk": risk})
        # The same verdict goes out on the bus and into the decision log: built once for both.
        verdict = risk.as_dict()
        await self._publish(run, "risk", verdict)
        approved = risk.approved_proposal
        if approved is None:
            reasons = "; ".join(reason.message for reason in risk.reasons)
            return await self._end(run, outcome, PipelineStatus.REJECTED, reasons, risk=verdict)
        intent_id = intent_id_for(run.key)
        # Linked before sending: after a crash the audit still leads to the intent's orders.
        await self._log.finish(
            run.key,
            PipelineStatus.CLAIMED,
            self._clock.now(),
            intent_id=intent_id,
            proposal=approved.as_dict(),
            risk=verdict,
        )
        started = self._clock.monotonic()
        try:
            result = await self._executor.execute_trade(approved, intent_id=intent_id)
        except ValidationError as error:
            return await self._end(run, outcome, PipelineStatus.INVALID, str(error))
        self._time("execution", started)
        outcome = _OUTCOMES.copy(outcome, {"execution": result})
        executed = (symbol, result.success)
        self._executed[executed] = self._executed.get(executed, 0) + 1
        await self._publish(
            run,
            "execution",
            {
                "intent_id": result.intent_id,
                "success": result.success,
                "status": str(result.status.value),
                "error": result.error_message,
                "orders": [
                    {
                        "client_order_id": order.client_order_id,
                        "type": order.type.value,
                        "side": order.side.value,
                        "status": order.status.value,
                    }
                    for order in result.orders
                ],
            },
        )
        status = PipelineStatus.EXECUTED if result.success else PipelineStatus.FAILED
        return await self._end(
            run, outcome, status, result.error_message or str(result.status.value)
        )

    async def _end(
        self,
        run: _Run,
        outcome: PipelineOutcome,
        status: PipelineStatus,
        detail: str,
        *,
        risk: Mapping[str, Any] | None = None,
        stored: bool = False,
    ) -> PipelineOutcome:
        if not stored:
            await self._log.finish(run.key, status, self._clock.now(), detail=detail, risk=risk)
        value = status._value_
        counted = (run.symbol, value)
        self._decided[counted] = self._decided.get(counted, 0) + 1
        await self._publish(run, "outcome", {"key": run.key, "status": value, "detail": detail})
        if logs_at("info"):  # once a bar: a backtest logs at warning
            _log.info("desk_decision", key=run.key, status=value, detail=detail)
        if outcome.status is status and outcome.detail == detail:
            return outcome  # built finished (a no-trade run): nothing to replace
        return _OUTCOMES.copy(outcome, {"status": status, "detail": detail})

    async def _publish(self, run: _Run, stage: str, payload: Mapping[str, Any]) -> None:
        message = self._bus.create_message(
            self._topic(stage, run.symbol), _SOURCE, dict(payload), caused_by=run.last
        )
        await self._bus.publish(message)
        run.last = message
        run.correlation_id = message.correlation_id

    def _topic(self, stage: str, symbol: str) -> str:
        topic = self._topics.get((stage, symbol))
        if topic is None:
            topic = self._topics[stage, symbol] = f"desk.{stage}.{topic_token(symbol)}"
        return topic

    def _book(self, symbol: str) -> _Book:
        book = self._books.get(symbol)
        if book is None:
            raise ValidationError("symbol", symbol, f"one of {sorted(self._books)}")
        return book


def _size(equity: Decimal, budget: Decimal, entry: Decimal, stop: Decimal, book: _Book) -> Decimal:
    """Quantity whose loss at the stop is `budget` of `equity`, in whole lots."""
    distance = abs(entry - stop)
    if distance <= 0 or equity <= 0:
        return Decimal(0)
    lot = book.instrument.lot_size
    raw = equity * budget / distance
    return (raw / lot).to_integral_value(rounding=ROUND_FLOOR) * lot


# The payloads read enum members' `_value_`, the attribute `.value` returns: in Python 3.11
# `.value` is a property written in Python, and a run reads a score of them.


def _technical_payload(technical: TechnicalAnalysis) -> dict[str, Any]:
    return {
        "trend": technical.trend._value_,
        "bias": technical.bias._value_,
        "confidence": round(technical.confidence, 4),
        "score": round(technical.score, 4),
        "signals": {signal.name: signal.vote for signal in technical.signals},
    }


def _regime_payload(regime: RegimeAssessment) -> dict[str, Any]:
    return {
        "regime": regime.regime._value_,
        "confidence": round(regime.confidence, 4),
        "reasons": list(regime.reasons),
    }


def _decision_payload(decision: TradeDecision) -> dict[str, Any]:
    return {
        "action": decision.action._value_,
        "leading_action": decision.leading_action._value_,
        "consensus": round(decision.consensus, 4),
        "split": decision.split,
        "entry": None if decision.entry is None else str(decision.entry),
        "stop": None if decision.stop is None else str(decision.stop),
        "target": None if decision.target is None else str(decision.target),
        "votes": [
            {"model": vote.model, "action": vote.action._value_, "confidence": vote.confidence}
            for vote in decision.votes
        ],
        "reasoning": decision.reasoning,
    }


def _conflict_payload(conflicts: Sequence[Conflict], resolution: Resolution) -> dict[str, Any]:
    return {
        "conflicts": [conflict.kind.value for conflict in conflicts],
        "resolution": resolution.action.value,
        "size_factor": str(resolution.size_factor),
        "source": resolution.source,
        "fallback_reason": resolution.fallback_reason,
        "reasoning": resolution.reasoning,
    }
