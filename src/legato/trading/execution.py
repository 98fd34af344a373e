"""The execution manager: a trade proposal becomes an entry protected by a stop-loss.

`OrderExecutionManager.execute_trade(proposal)` carries one trade through a resumable state
machine whose state lives in the store (`ExecutionIntent` in the `TradingLedger`):

1. Record the intent with its client order ids (``<prefix><intent>-E``, ``-SL``, ``-TP``,
   ``-X`` for an emergency close) before anything is sent. If that write fails, nothing is
   sent.
2. ENTRY: place the entry and wait for its fill. No filled quantity waits for the rest:
   once part of the entry has filled, the rest is cancelled at most
   `partial_protect_after` seconds after that fill (the deadline is journaled with the
   intent, so a restart keeps it) and the protection is sized to what filled. An entry
   with no fill at all is cancelled at `entry_timeout`.
3. PROTECT: record the position with its stop-loss and take-profit orders in one
   transaction, then place the stop-loss (reduce-only), retried with backoff on transient
   errors. If it cannot be placed: CLOSE the position at once with a reduce-only market
   order, raise a CRITICAL alert, and report failure with `partial_fill=True`.
4. TAKE_PROFIT: place the take-profit; a failure is a warning and a later retry.

Every order is journaled UNKNOWN ("sent, outcome not known") before its venue call and
with the venue's answer after it. An unknown outcome (a timeout after sending) is resolved
by querying the client order id, never by sending again; still unseen, the order stays
UNKNOWN with a HIGH alert, for the reconciler. An accepted order that a confirming query
does not find is UNKNOWN too. A store write that fails after something was done on the
venue goes to `PendingWrites` and the trade goes on (protection before bookkeeping).
Rate-limited calls wait (at least the venue's retry-after) and retry; the result reports
the wait.

Why a partly filled entry is cut short rather than protected as it grows: growing the
stop-loss with every fill means replacing a live reduce-only order again and again (a new
client order id each time, the old one cancelled only once the new one is live), with a
crash possible between any two of those calls and the reconciler looking at the
intermediate states. Cancelling the rest leaves one stop-loss, placed once, for a quantity
that no longer changes: the same PROTECT stage as a full fill, with the same recovery.
The price is a smaller position when the book is thin; a strategy that wants the size
places the rest again as a new trade.

The manager keeps no trade state of its own between calls: `recover()` (at startup, and
as a supervised loop) resumes every unfinished intent from the store, querying in-flight
orders by client order id. Abandoning a manager object mid-call is therefore the same as a
process crash. `monitor_protection()` (a loop) books venue fills and cancels the live
protective orders of every symbol left flat (OCO), whoever booked the closing fill.

docs/concepts/execution.md describes every policy for traders.
"""

from __future__ import annotations

import dataclasses
import enum
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

import structlog

from legato.kernel.bus import MessageBus
from legato.kernel.clock import Clock, RealClock
from legato.kernel.errors import (
    ErrorKind,
    LegatoError,
    PermanentError,
    TransientError,
    UnknownOutcomeError,
    ValidationError,
)
from legato.kernel.retry import Jitter, Retrier, RetryEvent, RetryExhausted, RetryPolicy
from legato.kernel.supervisor import Supervisor
from legato.store.errors import StoreUnavailableError
from legato.trading.alerts import Alert, AlertCode, Alerter, AlertLevel
from legato.trading.errors import DuplicateClientOrderId, OrderNotFound, OrderRejected
from legato.trading.fills import Fill
from legato.trading.instruments import Instrument
from legato.trading.ledger import (
    ExecutionIntent,
    IntentStage,
    LedgerTransaction,
    OrderRole,
    PendingWrites,
    TradingLedger,
)
from legato.trading.orders import Order, OrderStatus, OrderType
from legato.trading.positions import PositionSide
from legato.trading.proposals import EntryType, TradeProposal
from legato.trading.tracker import PositionTracker
from legato.trading.venue import Venue

__all__ = [
    "ExecutionConfig",
    "ExecutionResult",
    "ExecutionStatus",
    "OrderExecutionManager",
    "bracket_order_ids",
]

_log = structlog.get_logger(__name__)
_T = TypeVar("_T")
_ZERO = Decimal(0)
_NOT_PLACED_PREFIX = "not placed"


class ExecutionStatus(enum.Enum):
    """Where a trade stands when `execute_trade` (or a recovery pass) returns."""

    BRACKETED = "bracketed"  # entry filled, stop-loss and take-profit (if asked) live
    PROTECTED = "protected"  # entry filled, stop-loss live, take-profit to be retried
    UNKNOWN = "unknown"  # an order's outcome is unknown; HIGH alert, reconciler resolves
    CLOSING = "closing"  # stop-loss failed; the closing order has not filled yet
    CLOSED = "closed"  # stop-loss failed; the position was closed
    FAILED = "failed"  # nothing filled (entry rejected, not filled, or never sent)
    IN_PROGRESS = "in_progress"  # another call is carrying this intent right now


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    """What became of one trade.

    `success` is True when the position is open and protected by a live stop-loss.
    `partial_fill` is True when part of the trade happened but not all of it: the entry
    filled less than asked, or it filled and its protection failed (the position closed).
    `alert_level` is the most urgent alert raised for it; `retry_count` counts retried venue
    calls; `rate_limit_wait` the seconds spent waiting on rate-limit answers; `latency_ms`
    the time from the call (or, for a recovered intent, from its recording) to the return.
    """

    intent_id: str
    success: bool
    status: ExecutionStatus
    partial_fill: bool = False
    alert_level: AlertLevel | None = None
    error_message: str | None = None
    retry_count: int = 0
    warnings: tuple[str, ...] = ()
    latency_ms: float = 0.0
    orders: tuple[Order, ...] = ()
    filled_quantity: Decimal = _ZERO
    rate_limit_wait: float = 0.0

    def order(self, role: str) -> Order | None:
        """The latest order whose client id ends with `role` ("E", "SL", "TP", "X"), if any.

        A renewed order ("-SL2" after "-SL") is later than the one it replaced.
        """
        found: Order | None = None
        for order in self.orders:
            if order.client_order_id.rsplit("-", 1)[-1].rstrip("0123456789") == role:
                found = order
        return found


def bracket_order_ids(prefix: str, intent_id: str) -> tuple[str, str, str, str]:
    """The client order ids of one intent: entry, stop-loss, take-profit, emergency close."""
    base = f"{prefix}{intent_id}"
    return f"{base}-E", f"{base}-SL", f"{base}-TP", f"{base}-X"


def _next_attempt_id(client_order_id: str) -> str:
    # "-SL" -> "-SL2" -> "-SL3": a protective order that was never placed gets a fresh id, so
    # no client order id is ever sent twice as a new order.
    head, _, tail = client_order_id.rpartition("-")
    letters = tail.rstrip("0123456789")
    number = int(tail[len(letters) :] or "1")
    return f"{head}-{letters}{number + 1}"


@dataclass(frozen=True, slots=True)
class ExecutionConfig:
    """How the execution manager places, waits and retries.

    `client_id_prefix` starts every client order id (the reconciler adopts venue orders by
    it). `stop_loss_retry` governs stop-loss placement; `order_retry` every other venue call.
    `entry_timeout`: seconds from the intent's recording after which a working entry is
    cancelled (one with no fill; a partly filled one goes sooner, see below).
    `partial_protect_after`: the longest, in seconds, a filled part of the entry may wait
    for the rest: once part of the entry has filled, the rest is cancelled at most this long
    after that fill and the filled quantity protected, whatever `entry_timeout` says.
    `fill_poll_interval`: seconds between fill polls (a working entry is polled at least
    every `partial_protect_after` seconds, so no fill goes unseen for longer).
    `confirm_queries` and `confirm_interval`: how many queries, how far apart, resolve an
    unknown outcome before the order is left UNKNOWN. `close_timeout`: how long the
    emergency close is awaited.
    `take_profit_attempts`: placement rounds before the take-profit is given up,
    `take_profit_retry_delay` seconds apart.
    `confirm_placements`: query each protective order once after placing it.
    """

    client_id_prefix: str = "lg-"
    stop_loss_retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(
            max_attempts=4, initial_delay=0.25, max_delay=2.0, jitter=Jitter.EQUAL
        )
    )
    order_retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(
            max_attempts=5, initial_delay=0.25, max_delay=5.0, jitter=Jitter.EQUAL
        )
    )
    entry_timeout: float = 300.0
    partial_protect_after: float = 2.0
    fill_poll_interval: float = 1.0
    confirm_queries: int = 3
    confirm_interval: float = 1.0
    close_timeout: float = 120.0
    take_profit_attempts: int = 3
    take_profit_retry_delay: float = 30.0
    confirm_placements: bool = True

    def __post_init__(self) -> None:
        prefix = self.client_id_prefix
        if not isinstance(prefix, str) or not 1 <= len(prefix) <= 8:
            raise ValidationError("client_id_prefix", prefix, "1 to 8 characters")
        if not all(char.isalnum() or char in "-_." for char in prefix):
            raise ValidationError("client_id_prefix", prefix, "letters, digits, '-', '_', '.'")
        for name in (
            "entry_timeout",
            "partial_protect_after",
            "fill_poll_interval",
            "confirm_interval",
            "close_timeout",
            "take_profit_retry_delay",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValidationError(name, value, "seconds > 0")
        for name in ("confirm_queries", "take_profit_attempts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValidationError(name, value, "an integer >= 1")


class _NotPlaced(Exception):
    """The venue definitely does not have the order (refused, or every attempt failed)."""

    def __init__(self, order: Order, reason: str) -> None:
        super().__init__(reason)
        self.order = order
        self.reason = reason


@dataclass(slots=True)
class _Run:
    # The working copy of one intent while a call carries it; every change is journaled.
    intent: ExecutionIntent
    orders: dict[str, Order]
    started: float
    warnings: list[str] = field(default_factory=list)
    levels: list[AlertLevel] = field(default_factory=list)
    retries: int = 0
    rate_limit_wait: float = 0.0
    error: str | None = None
    # The client id recorded as "being sent" by this very call and not sent yet; after a
    # restart nothing is known to be unsent, so every UNKNOWN order is queried instead.
    unsent: str | None = None
    # The intent moved on in memory without a journal write of its own: the next write
    # (made before any venue call) carries it. See `_move(defer=True)`.
    unsaved: bool = False
    # Venue answers not journaled yet, by client id: the next journal write of this run
    # carries them (see `_defer_record`).
    deferred: dict[str, tuple[Order, OrderRole]] = field(default_factory=dict)

    @classmethod
    def of(cls, intent: ExecutionIntent, orders: dict[str, Order], started: float) -> _Run:
        outcome = intent.outcome
        return cls(
            intent=intent,
            orders=orders,
            started=started,
            warnings=list(outcome.get("warnings", [])),
            levels=[AlertLevel(level) for level in outcome.get("levels", [])],
            retries=int(outcome.get("retry_count", 0)),
            rate_limit_wait=float(outcome.get("rate_limit_wait", 0.0)),
            error=outcome.get("error"),
        )

    def outcome(self) -> dict[str, Any]:
        return {
            **self.intent.outcome,
            "warnings": self.warnings,
            "levels": sorted({level.value for level in self.levels}),
            "retry_count": self.retries,
            "rate_limit_wait": self.rate_limit_wait,
            "error": self.error,
        }

    def warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)


class OrderExecutionManager:
    """Carries trade proposals to protected positions, durably, through one venue.

    `venue` is the exchange (its calls pass its rate limits); `ledger` the store. `tracker`
    books positions (default: a `PositionTracker` on the ledger). `alerter` stores and
    publishes alerts (default: one on the ledger and `bus`). `rng` seeds intent ids and retry
    jitter. `pending` is the pending-writes queue (default: a new one on the ledger).
    """

    def __init__(
        self,
        venue: Venue,
        ledger: TradingLedger,
        *,
        rng: random.Random,
        clock: Clock | None = None,
        config: ExecutionConfig | None = None,
        tracker: PositionTracker | None = None,
        alerter: Alerter | None = None,
        bus: MessageBus | None = None,
        pending: PendingWrites | None = None,
    ) -> None:
        if not isinstance(rng, random.Random):
            raise ValidationError("rng", rng, "a seeded random.Random")
        self._venue = venue
        self._ledger = ledger
        self._rng = rng
        self._clock: Clock = clock if clock is not None else RealClock()
        self._config = config if config is not None else ExecutionConfig()
        self._tracker = tracker if tracker is not None else PositionTracker(ledger, clock=clock)
        self._alerter = (
            alerter
            if alerter is not None
            else Alerter(ledger.record_alert, bus=bus, source="execution")
        )
        self._pending = pending if pending is not None else PendingWrites(ledger, clock=clock)
        # Which intents a call of this object is carrying now: a guard against two calls
        # advancing one intent at once, not trade state (it dies with the object, correctly).
        self._active: dict[str, _Run] = {}
        # How many of the venue's fills the protection monitor has booked, and the id of the
        # last of them: an in-memory shortcut only (see `monitor_protection`).
        self._fills_booked: tuple[int, str | None] = (0, None)

    @property
    def config(self) -> ExecutionConfig:
        """The manager's settings."""
        return self._config

    @property
    def pending(self) -> PendingWrites:
        """The queue of store writes waiting for the store to come back."""
        return self._pending

    @property
    def alerter(self) -> Alerter:
        """Where alerts go."""
        return self._alerter

    @property
    def tracker(self) -> PositionTracker:
        """The position tracker the manager books fills with."""
        return self._tracker

    def orders_in_progress(self) -> frozenset[str]:
        """Client ids of the orders of every intent a call of this manager is carrying now.

        The reconciler leaves these to the manager: an order marked UNKNOWN "being sent" by
        a live call is not lost, it is on its way, and the call records the venue's answer.
        """
        return frozenset(
            cid for run in self._active.values() for cid in (*run.orders, *run.intent.order_ids)
        )

    # ------------------------------------------------------------------ public API

    async def execute_trade(
        self, proposal: TradeProposal, *, intent_id: str | None = None
    ) -> ExecutionResult:
        """Carry out `proposal`: entry, stop-loss, take-profit; return what became of it.

        `intent_id` makes the call idempotent: an intent already recorded under that id is
        resumed instead of started again. Raises ValidationError for a proposal the desk
        cannot execute (unknown or spot symbol, off-grid price or size, reduce-only).
        """
        started = self._clock.monotonic()
        instrument = self._check(proposal)
        if intent_id is not None:
            existing = await self._ledger.get_intent(intent_id)
            if existing is not None:
                return await self._resume(existing, started)
        else:
            intent_id = self._new_intent_id()
        entry_id, stop_id, take_id, close_id = bracket_order_ids(
            self._config.client_id_prefix, intent_id
        )
        for cid in (entry_id, stop_id, take_id, close_id):
            if len(_next_attempt_id(_next_attempt_id(cid))) > 36:
                raise ValidationError("intent_id", intent_id, "an id short enough for 36-char ids")
        now = self._clock.now()
        entry = Order(
            client_order_id=entry_id,
            symbol=proposal.symbol,
            side=proposal.side,
            type=OrderType.LIMIT if proposal.entry_type is EntryType.LIMIT else OrderType.MARKET,
            quantity=proposal.quantity,
            price=proposal.entry_price if proposal.entry_type is EntryType.LIMIT else None,
            leverage=proposal.leverage if instrument.is_perpetual else None,
            bracket_id=intent_id,
            created_at=now,
            updated_at=now,
        )
        intent = ExecutionIntent(
            intent_id=intent_id,
            proposal=proposal,
            stage=IntentStage.ENTRY,
            entry_order_id=entry_id,
            stop_loss_order_id=stop_id,
            take_profit_order_id=take_id if proposal.take_profit is not None else None,
            close_order_id=close_id,
            created_at=now,
            updated_at=now,
        )

        # The entry is recorded as UNKNOWN ("sent, outcome not known") in the same
        # transaction as the intent: if the process dies before the call, recovery asks the
        # venue instead of sending, and the reconciler settles it as not placed.
        sending = entry.transition(OrderStatus.UNKNOWN, at=now)

        async def record(tx: LedgerTransaction) -> None:
            await tx.insert_intent(intent)
            await tx.put_order(sending, OrderRole.ENTRY, intent_id)

        run = _Run(intent, {entry_id: sending}, started, unsent=entry_id)
        if intent_id in self._active:
            return self._result(self._active[intent_id], ExecutionStatus.IN_PROGRESS)
        # Claimed before the write: the intent is visible to a recovery pass as soon as it
        # commits, while this call may still be waiting for the store's answer. The pass must
        # find it being carried, or it would resume it (query, mark UNKNOWN, even send).
        self._active[intent_id] = run
        try:
            try:
                await self._ledger.write(record)
            except TransientError as error:
                # Rule 1: an intent the store does not hold is never sent.
                return ExecutionResult(
                    intent_id=intent_id,
                    success=False,
                    status=ExecutionStatus.FAILED,
                    error_message=(
                        f"the store could not record the trade ({error}); nothing was sent"
                    ),
                    latency_ms=(self._clock.monotonic() - started) * 1000,
                )
            return await self._advance(run)
        finally:
            self._active.pop(intent_id, None)

    async def recover(self) -> list[ExecutionResult]:
        """Resume every unfinished intent from the store; return what became of each.

        Run it at startup and as a supervised loop: intents waiting on the reconciler (an
        UNKNOWN order) or on a take-profit retry are picked up again once they can move.
        """
        await self._flush_quietly()
        results = []
        now = self._clock.timestamp()
        for intent in await self._ledger.intents(unfinished_only=True):
            if intent.intent_id in self._active:
                continue
            retry_at = intent.outcome.get("retry_at")
            if retry_at is not None and float(retry_at) > now:
                continue
            results.append(await self._resume(intent, self._clock.monotonic()))
        return results

    async def resume(self, intent_id: str) -> ExecutionResult:
        """Resume one recorded intent now; raise ValidationError if there is none by that id."""
        intent = await self._ledger.get_intent(intent_id)
        if intent is None:
            raise ValidationError("intent_id", intent_id, "the id of a recorded intent")
        return await self._resume(intent, self._clock.monotonic())

    async def flush_pending(self) -> int:
        """Land queued store writes and alerts (a loop function); return how many landed."""
        landed = await self._pending.flush()
        return landed + await self._alerter.flush()

    def supervise(
        self,
        supervisor: Supervisor,
        *,
        recover_every: float = 30.0,
        monitor_every: float = 2.0,
        flush_every: float = 2.0,
    ) -> None:
        """Register the manager's loops on `supervisor`, named ``execution.recover``,
        ``execution.protection`` and ``execution.pending-writes``."""
        supervisor.add_loop("execution.recover", self.recover, interval=recover_every)
        supervisor.add_loop("execution.protection", self.monitor_protection, interval=monitor_every)
        supervisor.add_loop("execution.pending-writes", self.flush_pending, interval=flush_every)

    async def monitor_protection(self) -> int:
        """Book new venue fills and cancel the other protective order of closed positions.

        One iteration of the protection monitor loop: fetches the venue's fills, books the
        new ones (orders, positions, balances), then cancels the live protective orders
        (stop-loss, take-profit, re-protection) of every symbol left without an open
        position, whoever booked the fill that closed it. Returns how many it cancelled.

        Only the fills listed after those an earlier pass booked are handed to the tracker
        (the venue lists fills oldest first). That cursor lives in memory and starts at
        zero: after a restart the first pass offers every fill again and the ledger, which
        holds the booked fill ids durably, skips the ones booked before.
        """
        # The venue's list is read as it is now (not copied again): the cursor is taken
        # before the booking awaits, and the fills booked are a slice of it.
        fills = await self._venue.fills()
        seen = (len(fills), fills[-1].fill_id if fills else None)
        await self._tracker.apply_fills(self._fills_after_booked(fills))
        self._fills_booked = seen
        return await self._cancel_orphaned_protection()

    def _fills_after_booked(self, fills: Sequence[Fill]) -> Sequence[Fill]:
        """The part of the venue's fill list that the last monitor pass had not seen.

        The whole list when it no longer starts as it did then (shorter, or another fill
        where the last booked one stood: the venue's list was rebuilt or reordered).
        """
        count, last_id = self._fills_booked
        if 0 < count <= len(fills) and fills[count - 1].fill_id == last_id:
            return fills[count:]
        return fills

    # ------------------------------------------------------------------ the state machine

    async def _resume(self, intent: ExecutionIntent, started: float) -> ExecutionResult:
        intent_id = intent.intent_id
        active = self._active.get(intent_id)
        if active is not None:
            return self._result(active, ExecutionStatus.IN_PROGRESS)
        # Claimed before the store is read, then read again: `intent` may be a snapshot taken
        # before another call carried it further (recover() lists every unfinished intent,
        # then resumes them one after the other). Resuming a stale stage redoes it: a placed
        # stop-loss re-recorded as new and its id sent again, or a position already closed
        # "opened" again (a ValidationError on every recovery pass).
        self._active[intent_id] = _Run.of(intent, {}, started)
        try:
            current = await self._ledger.get_intent(intent_id) or intent
            records = await self._ledger.orders(intent_id=intent_id)
            orders = {record.order.client_order_id: record.order for record in records}
            run = _Run.of(current, orders, started)
            # A recovered intent's latency counts from when it was recorded.
            run.started -= max(0.0, self._clock.timestamp() - current.created_at.timestamp())
            self._active[intent_id] = run
            return await self._advance(run)
        finally:
            self._active.pop(intent_id, None)

    async def _advance(self, run: _Run) -> ExecutionResult:
        # Each stage function returns a result when the call should end there, or None when
        # the intent moved on to the next stage.
        stages: dict[IntentStage, Callable[[_Run], Awaitable[ExecutionResult | None]]] = {
            IntentStage.ENTRY: self._stage_entry,
            IntentStage.PROTECT: self._stage_protect,
            IntentStage.TAKE_PROFIT: self._stage_take_profit,
            IntentStage.CLOSE: self._stage_close,
        }
        try:
            while not run.intent.stage.is_final:
                result = await stages[run.intent.stage](run)
                if result is not None:
                    if run.unsaved:  # pragma: no cover - every stage writes before it returns
                        await self._save(run, f"journal {run.intent.intent_id}")
                    return result
        except Exception:
            # Venue answers held for the next write are not dropped with the call.
            if run.unsaved:
                await self._save(run, f"journal {run.intent.intent_id}")
            raise
        return self._final_result(run)

    async def _stage_entry(self, run: _Run) -> ExecutionResult | None:
        intent = run.intent
        entry = run.orders[intent.entry_order_id]
        # The last moment the entry is known to have had no fill (None: not known here).
        unfilled_at: float | None = None
        if run.unsent == entry.client_order_id:
            run.unsent = None
            unfilled_at = self._clock.timestamp()
            try:
                entry = await self._send(run, entry, OrderRole.ENTRY, self._config.order_retry)
            except _NotPlaced as refused:
                run.error = f"entry {_NOT_PLACED_PREFIX}: {refused.reason}"
                await self._move(run, IntentStage.FAILED)
                return None
        elif entry.status in (OrderStatus.NEW, OrderStatus.UNKNOWN):
            entry = await self._resolve(run, entry, OrderRole.ENTRY)
        if entry.status is OrderStatus.UNKNOWN:
            return self._result(run, ExecutionStatus.UNKNOWN)
        if not entry.is_terminal:
            entry = await self._await_entry(run, entry, unfilled_at=unfilled_at)
            if entry.status is OrderStatus.UNKNOWN:
                return self._result(run, ExecutionStatus.UNKNOWN)
        if entry.filled_quantity == 0:
            if not run.error:
                run.error = f"the entry was {entry.status.value} without any fill" + (
                    f": {entry.reason}" if entry.reason else ""
                )
            await self._move(run, IntentStage.FAILED)
            return None
        await self._record_position(run, entry)
        return None

    async def _record_position(self, run: _Run, entry: Order) -> None:
        intent = run.intent
        proposal = intent.proposal
        filled = entry.filled_quantity
        if filled < proposal.quantity:
            run.warn(
                f"the entry filled {filled} of {proposal.quantity}; the stop-loss and "
                "take-profit are sized to what filled"
            )
        fills = await self._entry_fills(entry)
        if await self._closed_before_protected(run, entry, fills):
            return
        now = self._clock.now()
        closing = proposal.side.opposite
        stop_loss = Order(
            client_order_id=intent.stop_loss_order_id,
            symbol=proposal.symbol,
            side=closing,
            type=OrderType.STOP,
            quantity=filled,
            stop_price=proposal.stop_loss,
            reduce_only=True,
            leverage=entry.leverage,
            parent_order_id=entry.client_order_id,
            bracket_id=intent.intent_id,
            created_at=now,
            updated_at=now,
        )
        take_profit: Order | None = None
        if intent.take_profit_order_id is not None and proposal.take_profit is not None:
            take_profit = stop_loss.replace(
                client_order_id=intent.take_profit_order_id,
                type=OrderType.TAKE_PROFIT,
                stop_price=proposal.take_profit,
            )
        # The stop-loss is recorded as being sent, with its position: placing it is the very
        # next step, with no venue call in between (the entry is recorded with its intent the
        # same way). A crash before the call leaves it UNKNOWN: queried, never sent again.
        stop_loss = stop_loss.transition(OrderStatus.UNKNOWN, at=now)
        run.unsent = stop_loss.client_order_id
        run.orders[stop_loss.client_order_id] = stop_loss
        if take_profit is not None:
            run.orders[take_profit.client_order_id] = take_profit
        run.intent = intent.advance(IntentStage.PROTECT, now, filled_quantity=filled)
        # The opening writes record the entry as it is now: a fill held for the next write
        # (see `_await_entry`) lands with them.
        run.deferred.pop(entry.client_order_id, None)
        opening = self._tracker.opening_writes(
            entry, fills, stop_loss=stop_loss, take_profit=take_profit, intent_id=intent.intent_id
        )
        snapshot = run.intent.with_outcome(now, **run.outcome())

        async def write(tx: LedgerTransaction) -> None:
            await opening(tx)
            await tx.put_intent(snapshot)

        if await self._journal(
            run, "record the position with its stop-loss and take-profit", write
        ):
            self._tracker.note_booked(fills)

    async def _closed_before_protected(
        self, run: _Run, entry: Order, fills: Sequence[Fill]
    ) -> bool:
        """Settle the intent as CLOSED when its entry's position is gone before protection.

        The protection monitor books every venue fill, the entry's too, while the call that
        carries the intent may be gone (a stopped desk, a failed pipeline run): the guards
        then close the bare position, and there is nothing left to protect. Recording the
        position again would fail on every recovery pass.
        """
        known = await self._ledger.known_fill_ids(fill.fill_id for fill in fills)
        if len(known) < len(fills):
            return False
        position = await self._ledger.position(entry.symbol)
        if position is not None and position.side is PositionSide.opened_by(entry.side):
            return False
        text = (
            f"the entry {entry.client_order_id} filled {entry.filled_quantity}, and its position "
            "was closed before its stop-loss could be placed; nothing is left to protect"
        )
        _log.warning("execution_position_closed_before_protection", intent=run.intent.intent_id)
        run.warn(text)
        run.error = text
        run.intent = run.intent.advance(
            IntentStage.CLOSED, self._clock.now(), filled_quantity=entry.filled_quantity
        )
        await self._save(run, f"settle {run.intent.intent_id}: closed before protection")
        return True

    async def _stage_protect(self, run: _Run) -> ExecutionResult | None:
        intent = run.intent
        stop = run.orders.get(intent.stop_loss_order_id)
        if stop is None:
            # Recorded before this version kept it, or lost with a pending write: rebuild.
            entry = run.orders[intent.entry_order_id]
            await self._record_position(run, entry)
            if run.intent.stage.is_final:
                return None
            stop = run.orders[run.intent.stop_loss_order_id]
        if stop.status is OrderStatus.REJECTED and (stop.reason or "").startswith("reconciliation"):
            # The reconciler found it was never placed: try again under a fresh id.
            stop = await self._renew(run, stop, OrderRole.STOP_LOSS)
        unsent = run.unsent == stop.client_order_id
        if stop.status is OrderStatus.NEW or unsent:
            retries_before = run.retries
            run.unsent = None
            # Recorded as being sent with its position: send it; a NEW one is marked first.
            send = self._send if unsent else self._place
            try:
                stop = await send(
                    run,
                    stop,
                    OrderRole.STOP_LOSS,
                    self._config.stop_loss_retry,
                    confirm=True,
                    defer_record=True,
                )
            except _NotPlaced as refused:
                run.error = (
                    f"stop-loss failed: {refused.reason}; the position was closed with a "
                    "reduce-only market order"
                )
                await self._move(run, IntentStage.CLOSE)
                return None
            if run.retries > retries_before and stop.status is not OrderStatus.UNKNOWN:
                text = f"the stop-loss was placed after {run.retries - retries_before} retries"
                run.warn(text)
                await self._alert(run, AlertLevel.WARNING, AlertCode.STOP_LOSS_RETRIED, text, stop)
        elif stop.status is OrderStatus.UNKNOWN:
            stop = await self._resolve(run, stop, OrderRole.STOP_LOSS)
        if stop.status is OrderStatus.UNKNOWN:
            return self._result(run, ExecutionStatus.UNKNOWN)
        if stop.status in (OrderStatus.REJECTED,):
            run.error = f"stop-loss failed: {stop.reason or 'rejected'}"
            await self._move(run, IntentStage.CLOSE)
            return None
        if stop.status in (OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.EXPIRED):
            # Already triggered (or removed by hand): the position is settled from fills;
            # the protection monitor cancels the rest of the bracket.
            await self._move(run, IntentStage.BRACKETED)
            return None
        # Journaled with the take-profit's "being sent" mark (or the move to BRACKETED),
        # the next write, which comes before any venue call: one transaction instead of two.
        # A crash before it leaves PROTECT with a live stop-loss, which resumes here.
        await self._move(run, IntentStage.TAKE_PROFIT, defer=True)
        return None

    async def _stage_take_profit(self, run: _Run) -> ExecutionResult | None:
        intent = run.intent
        cid = intent.take_profit_order_id
        take = run.orders.get(cid) if cid is not None else None
        if run.unsaved and take is not None and take.status is not OrderStatus.NEW:
            # Only a NEW take-profit is sure to be journaled before its next venue call.
            await self._save(run, f"move {intent.intent_id} to {intent.stage.value}")
        if take is None:
            await self._move(run, IntentStage.BRACKETED)
            return None
        if take.status in (OrderStatus.NEW, OrderStatus.REJECTED) and await self._flat(run):
            return await self._take_profit_moot(run)
        if take.status is OrderStatus.REJECTED:
            take = await self._renew(run, take, OrderRole.TAKE_PROFIT)
        if take.status is OrderStatus.NEW:
            try:
                take = await self._place(
                    run,
                    take,
                    OrderRole.TAKE_PROFIT,
                    self._config.order_retry,
                    confirm=True,
                    defer_record=True,
                )
            except _NotPlaced as refused:
                return await self._take_profit_failed(run, refused.order, refused.reason)
        elif take.status is OrderStatus.UNKNOWN:
            take = await self._resolve(run, take, OrderRole.TAKE_PROFIT)
        if take.status is OrderStatus.UNKNOWN:
            return self._result(run, ExecutionStatus.UNKNOWN)
        await self._move(run, IntentStage.BRACKETED)
        return None

    async def _flat(self, run: _Run, *, ask_venue: bool = False) -> bool:
        """True when the intent's position is certainly gone (the store, or the venue, says so).

        A position closed by its stop-loss (at a high replay speed, often within a bar or two
        of the entry) has nothing for a take-profit to take: placing one is refused as "would
        not reduce", and retrying that only keeps the symbol busy.
        """
        symbol, side = run.intent.symbol, PositionSide.opened_by(run.intent.proposal.side)
        # With writes still queued the store is behind the venue: only the venue can tell.
        if not self._pending:
            try:
                position = await self._ledger.position(symbol)
            except (TransientError, StoreUnavailableError):
                pass
            else:
                if position is None or position.side is not side:
                    return True
        if not ask_venue:
            return False
        retrier = Retrier(self._config.order_retry, self._clock, self._rng)
        try:
            held = await retrier.call(self._venue.positions)
        except LegatoError:
            return False  # cannot tell: the take-profit is retried as before
        return not any(p.symbol == symbol and p.side is side and p.quantity > 0 for p in held)

    async def _take_profit_moot(self, run: _Run) -> ExecutionResult | None:
        run.warn("take-profit not placed: the position was already closed")
        await self._move(run, IntentStage.BRACKETED)
        return None

    async def _take_profit_failed(
        self, run: _Run, take: Order, reason: str
    ) -> ExecutionResult | None:
        if await self._flat(run, ask_venue=True):
            return await self._take_profit_moot(run)
        attempts = int(run.intent.outcome.get("take_profit_attempts", 0)) + 1
        text = f"take-profit not placed ({reason}); attempt {attempts}"
        now = self._clock.now()
        if attempts >= self._config.take_profit_attempts:
            run.warn(f"{text}; given up: the position keeps its stop-loss only")
            await self._alert(run, AlertLevel.WARNING, AlertCode.TAKE_PROFIT_FAILED, text, take)
            run.intent = run.intent.with_outcome(now, take_profit_attempts=attempts)
            await self._move(run, IntentStage.BRACKETED)
            return None
        retry_at = self._clock.timestamp() + self._config.take_profit_retry_delay
        run.warn(f"{text}; retried in {self._config.take_profit_retry_delay:g}s")
        await self._alert(run, AlertLevel.WARNING, AlertCode.TAKE_PROFIT_FAILED, text, take)
        run.intent = run.intent.with_outcome(now, take_profit_attempts=attempts, retry_at=retry_at)
        await self._save(run, "schedule the take-profit retry")
        return self._result(run, ExecutionStatus.PROTECTED)

    async def _stage_close(self, run: _Run) -> ExecutionResult | None:
        intent = run.intent
        cid = intent.close_order_id
        assert cid is not None
        close = run.orders.get(cid)
        if close is None:
            position = await self._ledger.position(intent.symbol)
            quantity = intent.filled_quantity
            if position is not None:
                quantity = min(quantity, position.quantity)
            if position is None or quantity <= 0:
                await self._move(run, IntentStage.CLOSED)
                return None
            now = self._clock.now()
            close = Order(
                client_order_id=cid,
                symbol=intent.symbol,
                side=intent.proposal.side.opposite,
                type=OrderType.MARKET,
                quantity=quantity,
                reduce_only=True,
                leverage=run.orders[intent.entry_order_id].leverage,
                parent_order_id=intent.entry_order_id,
                bracket_id=intent.intent_id,
                created_at=now,
                updated_at=now,
            )
            run.orders[cid] = close
            await self._save(run, "record the closing order", orders=[(close, OrderRole.CLOSE)])
        if close.status is OrderStatus.REJECTED and (close.reason or "").startswith(
            "reconciliation"
        ):
            # The reconciler found it was never placed: the position is still open, so close
            # it under a fresh id (the old one is never sent again).
            fresh_id = _next_attempt_id(cid)
            run.orders.pop(cid, None)
            run.error = (
                f"stop-loss failed; the closing order {cid} was never placed and is sent "
                f"again as {fresh_id}"
            )
            run.intent = dataclasses.replace(run.intent, close_order_id=fresh_id)
            await self._save(run, "renew the closing order id")
            return None
        if close.status is OrderStatus.NEW:
            try:
                close = await self._place(run, close, OrderRole.CLOSE, self._config.order_retry)
            except _NotPlaced as refused:
                text = (
                    f"the position {intent.symbol} has no stop-loss and the closing order "
                    f"failed too ({refused.reason}); it will be retried — act now"
                )
                await self._alert(run, AlertLevel.CRITICAL, AlertCode.CLOSE_FAILED, text, close)
                run.orders.pop(cid, None)
                # A fresh id for the next attempt: the refused one is never sent again.
                run.intent = dataclasses.replace(run.intent, close_order_id=_next_attempt_id(cid))
                await self._save(run, "renew the closing order id")
                return self._result(run, ExecutionStatus.CLOSING)
        elif close.status is OrderStatus.UNKNOWN:
            close = await self._resolve(run, close, OrderRole.CLOSE)
        if close.status is OrderStatus.UNKNOWN:
            return self._result(run, ExecutionStatus.UNKNOWN)
        if not close.is_terminal:
            close = await self._await_fill(run, close, OrderRole.CLOSE, self._config.close_timeout)
        if not close.is_terminal:
            return self._result(run, ExecutionStatus.CLOSING)
        if close.filled_quantity > 0:
            await self._tracker.apply_fills(await self._order_fills(close))
        if run.intent.outcome.get("close_alerted") is None:
            text = (
                f"{run.error or 'stop-loss failed'}; {intent.symbol} "
                f"{close.filled_quantity} closed at {close.average_price}"
            )
            await self._alert(run, AlertLevel.CRITICAL, AlertCode.STOP_LOSS_FAILED, text, close)
            run.intent = run.intent.with_outcome(self._clock.now(), close_alerted=True)
        await self._move(run, IntentStage.CLOSED)
        return None

    # ------------------------------------------------------------------ venue calls

    async def _place(
        self,
        run: _Run,
        order: Order,
        role: OrderRole,
        policy: RetryPolicy,
        *,
        confirm: bool = False,
        defer_record: bool = False,
    ) -> Order:
        """Send `order` once (retrying only what had no effect); return its known state.

        Raises _NotPlaced when the venue certainly does not have it. Returns an UNKNOWN
        order when the outcome could not be learnt. `defer_record`: see `_send`.
        """
        sending = order.transition(OrderStatus.UNKNOWN, at=self._clock.now())
        run.orders[order.client_order_id] = sending
        # Journal "sent, outcome unknown" first: a crash during the call then leaves an
        # UNKNOWN order that recovery queries instead of sending again. If the store is down
        # the mark is queued and the order sent anyway: protection before bookkeeping.
        await self._save(
            run, f"mark {order.client_order_id} as being sent", orders=[(sending, role)]
        )
        return await self._send(
            run, sending, role, policy, confirm=confirm, defer_record=defer_record
        )

    async def _send(
        self,
        run: _Run,
        sending: Order,
        role: OrderRole,
        policy: RetryPolicy,
        *,
        confirm: bool = False,
        defer_record: bool = False,
    ) -> Order:
        """Make the venue call for an order already journaled as being sent.

        `defer_record`: the venue's acceptance is journaled by the run's next write instead
        of one of its own; the caller makes that write before its next order call (placing,
        cancelling). Only reads (the confirming query, a store read) come in between.
        """
        retrier = Retrier(policy, self._clock, self._rng, on_retry=self._on_retry(run, role))
        try:
            answer = await retrier.run(self._venue.place_order, sending)
        except DuplicateClientOrderId:
            return await self._resolve(run, sending, role)
        except UnknownOutcomeError:
            return await self._resolve(run, sending, role)
        except RetryExhausted as exhausted:
            run.retries += exhausted.attempts - 1
            return await self._refused(run, sending, role, str(exhausted.last_error))
        except (PermanentError, ValidationError) as refused:
            reason = refused.reason if isinstance(refused, OrderRejected) else str(refused)
            return await self._refused(run, sending, role, reason)
        run.retries += answer.retry_count
        placed = self._merge(sending, answer.value)
        run.orders[placed.client_order_id] = placed
        if defer_record:
            self._defer_record(run, placed, role)
        else:
            await self._save(
                run, f"record {placed.client_order_id} as placed", orders=[(placed, role)]
            )
        if confirm and self._config.confirm_placements and not placed.is_terminal:
            placed = await self._confirm(run, placed, role)
        return placed

    async def _refused(self, run: _Run, order: Order, role: OrderRole, reason: str) -> Order:
        rejected = order.transition(
            OrderStatus.REJECTED, at=self._clock.now(), reason=f"{_NOT_PLACED_PREFIX}: {reason}"
        )
        run.orders[order.client_order_id] = rejected
        await self._save(
            run, f"record {order.client_order_id} as refused", orders=[(rejected, role)]
        )
        raise _NotPlaced(rejected, reason)

    async def _confirm(self, run: _Run, placed: Order, role: OrderRole) -> Order:
        """Query a just-accepted order; "accepted but not found" makes it UNKNOWN."""
        try:
            seen = await self._query(run, placed.client_order_id, role)
        except OrderNotFound:
            unknown = placed.transition(OrderStatus.UNKNOWN, at=self._clock.now())
            run.orders[placed.client_order_id] = unknown
            await self._save(
                run, f"mark {placed.client_order_id} unknown", orders=[(unknown, role)]
            )
            return await self._unknown(run, unknown, role, "accepted, then not found by a query")
        except LegatoError:
            return placed  # the query failed; the placement answer stands
        return await self._update(run, placed, seen, role)

    async def _resolve(self, run: _Run, order: Order, role: OrderRole) -> Order:
        """Learn an order's fate by client id (a few queries); still unseen: UNKNOWN + HIGH."""
        for attempt in range(self._config.confirm_queries):
            if attempt:
                await self._clock.sleep(self._config.confirm_interval)
            try:
                seen = await self._query(run, order.client_order_id, role)
            except OrderNotFound:
                continue
            except LegatoError:
                continue
            return await self._update(run, order, seen, role)
        if order.status is not OrderStatus.UNKNOWN:
            order = order.transition(OrderStatus.UNKNOWN, at=self._clock.now())
            run.orders[order.client_order_id] = order
        await self._save(run, f"mark {order.client_order_id} unknown", orders=[(order, role)])
        return await self._unknown(run, order, role, "sent, but not found by client order id")

    async def _unknown(self, run: _Run, order: Order, role: OrderRole, why: str) -> Order:
        alerted = list(run.intent.outcome.get("unknown_alerted", []))
        text = (
            f"{role.value} {order.client_order_id} is UNKNOWN: {why}; it is never sent again, "
            "the reconciler resolves it by client order id"
        )
        run.warn(text)
        run.error = text
        if order.client_order_id not in alerted:
            await self._alert(run, AlertLevel.HIGH, AlertCode.ORDER_UNKNOWN, text, order)
            alerted.append(order.client_order_id)
            run.intent = run.intent.with_outcome(self._clock.now(), unknown_alerted=alerted)
            await self._save(run, "note the unknown-order alert")
        run.levels.append(AlertLevel.HIGH)
        return order

    async def _query(self, run: _Run, client_order_id: str, role: OrderRole) -> Order:
        retrier = Retrier(
            self._config.order_retry, self._clock, self._rng, on_retry=self._on_retry(run, role)
        )
        result = await retrier.run(self._venue.get_order, client_order_id=client_order_id)
        run.retries += result.retry_count
        return result.value

    async def _await_entry(self, run: _Run, entry: Order, *, unfilled_at: float | None) -> Order:
        """Poll the entry until it is final; cancel its rest when it may not wait longer.

        The rest is cancelled `entry_timeout` seconds after the intent was recorded, or
        `partial_protect_after` seconds after the entry's first fill, whichever comes first.
        No poll happens more than `partial_protect_after` apart, so the first fill is seen
        in time; it happened after the last moment the entry was known unfilled
        (`unfilled_at`, a timestamp, None when not known in this call), so the rest is
        cancelled at that moment plus `partial_protect_after`. That deadline is journaled
        with the intent, and a restarted process keeps it; a fill first seen with no such
        moment known (after a restart) has the rest cancelled at once.
        """
        config = self._config
        give_up_at = run.intent.created_at.timestamp() + config.entry_timeout
        gap = min(config.fill_poll_interval, config.partial_protect_after)
        cancelled = False
        while not entry.is_terminal:
            polled_at = self._clock.timestamp()
            try:
                seen = await self._query(run, entry.client_order_id, OrderRole.ENTRY)
            except OrderNotFound:
                unknown = entry.transition(OrderStatus.UNKNOWN, at=self._clock.now())
                run.orders[entry.client_order_id] = unknown
                await self._save(
                    run,
                    f"mark {entry.client_order_id} unknown",
                    orders=[(unknown, OrderRole.ENTRY)],
                )
                return await self._unknown(
                    run, unknown, OrderRole.ENTRY, "accepted, then not found"
                )
            except (RetryExhausted, TransientError):
                seen = None
            entry = await self._update_entry(run, entry, seen, unfilled_at)
            if seen is not None and entry.filled_quantity == 0:
                unfilled_at = polled_at
            if entry.is_terminal:
                break
            now = self._clock.timestamp()
            cancel_at, why = give_up_at, "after the entry timeout"
            protect_at = run.intent.outcome.get("partial_cancel_at")
            if protect_at is not None and float(protect_at) < cancel_at:
                cancel_at = float(protect_at)
                why = (
                    f"within {config.partial_protect_after:g}s of the first fill, to protect "
                    "what filled"
                )
            if now >= cancel_at:
                if cancelled:
                    # The cancel did not go through: protect what filled now, not later.
                    break
                cancelled = True
                entry = await self._cancel_rest(run, entry, OrderRole.ENTRY, why)
                continue
            await self._clock.sleep(min(gap, cancel_at - now))
        return entry

    async def _update_entry(
        self, run: _Run, ours: Order, seen: Order | None, unfilled_at: float | None
    ) -> Order:
        """`_update` for the entry (`seen` None: the query failed); its first fill seen also
        journals when its rest is cancelled, in the same write."""
        merged = ours if seen is None else self._merge(ours, seen)
        if (
            merged.filled_quantity == 0
            or merged.is_terminal
            or run.intent.outcome.get("partial_cancel_at") is not None
        ):
            if seen is None:
                return ours
            # A final entry with a fill is recorded with its position, the next write
            # (`_record_position`: the venue's fills are read in between, nothing is sent).
            done = merged.is_terminal and merged.filled_quantity > 0
            return await self._update(run, ours, seen, OrderRole.ENTRY, defer=done)
        # The fill came after `unfilled_at`; not knowing when, the rest goes at once.
        now = self._clock.timestamp()
        cancel_at = now if unfilled_at is None else unfilled_at + self._config.partial_protect_after
        run.orders[merged.client_order_id] = merged
        run.intent = run.intent.with_outcome(self._clock.now(), partial_cancel_at=cancel_at)
        _log.info(
            "execution_entry_partly_filled",
            intent=run.intent.intent_id,
            filled=str(merged.filled_quantity),
            cancel_in=max(cancel_at - now, 0.0),
        )
        await self._save(
            run,
            f"record {merged.client_order_id} partly filled; its rest goes by {cancel_at:.3f}",
            orders=[(merged, OrderRole.ENTRY)],
        )
        return merged

    async def _await_fill(self, run: _Run, order: Order, role: OrderRole, patience: float) -> Order:
        """Poll the order until it is final; after `patience` seconds, cancel what is left."""
        deadline = self._clock.monotonic() + patience
        cancelled = False
        while not order.is_terminal:
            try:
                seen = await self._query(run, order.client_order_id, role)
            except OrderNotFound:
                unknown = order.transition(OrderStatus.UNKNOWN, at=self._clock.now())
                run.orders[order.client_order_id] = unknown
                await self._save(
                    run, f"mark {order.client_order_id} unknown", orders=[(unknown, role)]
                )
                return await self._unknown(run, unknown, role, "accepted, then not found")
            except (RetryExhausted, TransientError):
                seen = order
            order = await self._update(run, order, seen, role)
            if order.is_terminal:
                break
            if self._clock.monotonic() >= deadline:
                if cancelled or role is OrderRole.CLOSE:
                    break
                cancelled = True
                order = await self._cancel_rest(run, order, role)
                continue
            await self._clock.sleep(self._config.fill_poll_interval)
        return order

    async def _cancel_rest(
        self, run: _Run, order: Order, role: OrderRole, why: str = "after the timeout"
    ) -> Order:
        retrier = Retrier(
            self._config.order_retry, self._clock, self._rng, on_retry=self._on_retry(run, role)
        )
        try:
            answer = await retrier.run(
                self._venue.cancel_order, client_order_id=order.client_order_id
            )
        except LegatoError:
            # Already final (filled meanwhile) or unreachable: the next poll tells.
            return order
        run.retries += answer.retry_count
        if order.filled_quantity < order.quantity and order.filled_quantity > 0:
            run.warn(
                f"{role.value} {order.client_order_id}: the unfilled "
                f"{order.quantity - order.filled_quantity} was cancelled {why}"
            )
        return await self._update(run, order, answer.value, role)

    async def _update(
        self, run: _Run, ours: Order, seen: Order, role: OrderRole, *, defer: bool = False
    ) -> Order:
        merged = self._merge(ours, seen)
        if merged != ours:
            run.orders[merged.client_order_id] = merged
            if defer:
                self._defer_record(run, merged, role)
                return merged
            await self._save(
                run,
                f"record {merged.client_order_id} {merged.status.value}",
                orders=[(merged, role)],
            )
        return merged

    def _merge(self, ours: Order, seen: Order) -> Order:
        """The venue's status and fills on our record (which keeps our links and times)."""
        if ours.is_terminal:
            return ours
        # Only the values that are not the very ones we hold are copied in (and checked):
        # the others were checked when our record was built. None of them (a poll of an
        # order that has not moved): the copy would be field for field this record.
        changes: dict[str, Any] = {}
        if seen.status is not ours.status:
            changes["status"] = seen.status
        if (venue_order_id := seen.venue_order_id or ours.venue_order_id) is not (
            ours.venue_order_id
        ):
            changes["venue_order_id"] = venue_order_id
        if seen.filled_quantity is not ours.filled_quantity:
            changes["filled_quantity"] = seen.filled_quantity
        if seen.average_price is not ours.average_price:
            changes["average_price"] = seen.average_price
        if (leverage := seen.leverage or ours.leverage) is not ours.leverage:
            changes["leverage"] = leverage
        if (triggered_at := seen.triggered_at or ours.triggered_at) is not ours.triggered_at:
            changes["triggered_at"] = triggered_at
        if (reason := seen.reason or ours.reason) is not ours.reason:
            changes["reason"] = reason
        if (updated_at := seen.updated_at or self._clock.now()) is not ours.updated_at:
            changes["updated_at"] = updated_at
        if not changes:
            return ours
        return ours.replace(**changes)

    async def _entry_fills(self, entry: Order) -> list[Fill]:
        fills = await self._order_fills(entry)
        if sum((fill.quantity for fill in fills), _ZERO) != entry.filled_quantity:
            raise TransientError(
                "the venue's fills do not add up to the entry's filled quantity yet",
                client_order_id=entry.client_order_id,
            )
        return fills

    async def _order_fills(self, order: Order) -> list[Fill]:
        retrier = Retrier(self._config.order_retry, self._clock, self._rng)
        fills = await retrier.call(self._venue.fills, order.symbol)
        return [fill for fill in fills if fill.client_order_id == order.client_order_id]

    def _on_retry(self, run: _Run, role: OrderRole) -> Callable[[RetryEvent], None]:
        def note(event: RetryEvent) -> None:
            if event.kind is ErrorKind.RATE_LIMITED:
                run.rate_limit_wait += event.delay
                run.warn(f"rate-limited by the venue during the {role.value}; waited and retried")
            _log.info(
                "execution_retry",
                role=role.value,
                attempt=event.attempt,
                error=str(event.error),
                delay=event.delay,
            )

        return note

    # ------------------------------------------------------------------ journal and results

    async def _renew(self, run: _Run, order: Order, role: OrderRole) -> Order:
        fresh_id = _next_attempt_id(order.client_order_id)
        now = self._clock.now()
        fresh = dataclasses.replace(
            order,
            client_order_id=fresh_id,
            status=OrderStatus.NEW,
            venue_order_id=None,
            filled_quantity=_ZERO,
            average_price=None,
            triggered_at=None,
            reason=None,
            created_at=now,
            updated_at=now,
        )
        run.orders[fresh_id] = fresh
        if role is OrderRole.STOP_LOSS:
            run.intent = dataclasses.replace(run.intent, stop_loss_order_id=fresh_id)
        else:
            run.intent = dataclasses.replace(run.intent, take_profit_order_id=fresh_id)
        await self._save(run, f"prepare {fresh_id}", orders=[(fresh, role)])
        position = await self._ledger.position(run.intent.symbol)
        if position is not None:
            await self._tracker.set_protection(
                run.intent.symbol, run.intent.stop_loss_order_id, run.intent.take_profit_order_id
            )
        return fresh

    def _defer_record(self, run: _Run, order: Order, role: OrderRole) -> None:
        """Hold the venue's answer about `order` for the run's next journal write.

        For an answer that records what the venue already did (an order accepted, a fill
        seen) when the run writes again before its next order call (placing, cancelling) and
        before any wait of its own (a poll interval): one transaction instead of two; only
        reads (a confirming query, the venue's fills, the store) and their retries come in
        between. Until then the store shows the order as it was last
        journaled ("being sent": a crash in between is resolved by a query, as any crash
        after a send is); a stage that ends the call first writes it (see `_advance`).
        """
        run.deferred[order.client_order_id] = (order, role)
        run.unsaved = True

    async def _move(self, run: _Run, stage: IntentStage, *, defer: bool = False) -> None:
        """Move the intent to `stage` and journal it; `defer`: leave the write to the next
        journal write of this run, which the caller makes before any venue call."""
        now = self._clock.now()
        run.intent = run.intent.advance(stage, now)
        if defer:
            run.unsaved = True
            return
        await self._save(run, f"move {run.intent.intent_id} to {stage.value}")

    async def _save(
        self,
        run: _Run,
        description: str,
        *,
        orders: Sequence[tuple[Order, OrderRole]] = (),
    ) -> None:
        """Journal the intent (and `orders`); a write the store refuses is queued."""
        snapshot = run.intent.with_outcome(self._clock.now(), **run.outcome())
        run.intent = snapshot
        intent_id = snapshot.intent_id
        for order, _ in orders:
            # Written here in a newer state: the held answer is superseded.
            run.deferred.pop(order.client_order_id, None)

        async def write(tx: LedgerTransaction) -> None:
            for order, role in orders:
                await tx.put_order(order, role, intent_id)
            await tx.put_intent(snapshot)

        await self._journal(run, description, write)

    async def _journal(
        self, run: _Run, description: str, write: Callable[[LedgerTransaction], Awaitable[None]]
    ) -> bool:
        """Make one journal write; return True when it landed now (False: queued)."""
        # Every journal write puts the run's current intent: it carries a deferred move too,
        # and the venue answers held for it (written first: the write's own records are newer).
        run.unsaved = False
        if run.deferred:
            held = list(run.deferred.values())
            run.deferred = {}
            intent_id = run.intent.intent_id
            own = write

            async def write(tx: LedgerTransaction) -> None:
                for order, role in held:
                    await tx.put_order(order, role, intent_id)
                await own(tx)

        if await self._pending.write(description, write):
            return True
        text = (
            f"store write failed ({description}); it is queued in pending writes and retried "
            "until it lands"
        )
        if text not in run.warnings:
            run.warn(text)
            await self._alert(run, AlertLevel.WARNING, AlertCode.STORE_WRITE_DEFERRED, text, None)
        return False

    async def _alert(
        self,
        run: _Run,
        level: AlertLevel,
        code: AlertCode,
        text: str,
        order: Order | None,
    ) -> None:
        run.levels.append(level)
        await self._alerter.send(
            Alert(
                level=level,
                code=code,
                message=text,
                at=self._clock.now(),
                symbol=run.intent.symbol,
                client_order_id=None if order is None else order.client_order_id,
                intent_id=run.intent.intent_id,
            )
        )

    def _final_result(self, run: _Run) -> ExecutionResult:
        stage = run.intent.stage
        if stage is IntentStage.BRACKETED:
            return self._result(run, ExecutionStatus.BRACKETED)
        if stage is IntentStage.CLOSED:
            return self._result(run, ExecutionStatus.CLOSED)
        return self._result(run, ExecutionStatus.FAILED)

    def _result(self, run: _Run, status: ExecutionStatus) -> ExecutionResult:
        intent = run.intent
        filled = intent.filled_quantity
        protected = status in (ExecutionStatus.BRACKETED, ExecutionStatus.PROTECTED)
        take = intent.take_profit_order_id
        if status is ExecutionStatus.BRACKETED and take is not None:
            order = run.orders.get(take)
            if order is None or order.status in (OrderStatus.REJECTED, OrderStatus.NEW):
                status = ExecutionStatus.PROTECTED
        partial = (0 < filled < intent.proposal.quantity) or (
            filled > 0 and status in (ExecutionStatus.CLOSED, ExecutionStatus.CLOSING)
        )
        ordered = [run.orders[cid] for cid in sorted(run.orders) if cid in run.orders]
        return ExecutionResult(
            intent_id=intent.intent_id,
            success=protected,
            status=status,
            partial_fill=partial,
            alert_level=AlertLevel.highest(run.levels),
            error_message=None if protected else run.error,
            retry_count=run.retries,
            warnings=tuple(run.warnings),
            latency_ms=(self._clock.monotonic() - run.started) * 1000,
            orders=tuple(ordered),
            filled_quantity=filled,
            rate_limit_wait=run.rate_limit_wait,
        )

    # ------------------------------------------------------------------ helpers

    def _check(self, proposal: TradeProposal) -> Instrument:
        if not isinstance(proposal, TradeProposal):
            raise ValidationError("proposal", proposal, "a TradeProposal")
        if proposal.reduce_only:
            raise ValidationError(
                "reduce_only", True, "False: execute_trade opens protected positions"
            )
        instrument = self._venue.instrument(proposal.symbol)
        if not instrument.is_perpetual:
            raise ValidationError(
                "symbol",
                proposal.symbol,
                "a perpetual instrument (brackets protect with reduce-only orders)",
            )
        instrument.validate_quantity(proposal.quantity)
        if proposal.entry_type is EntryType.LIMIT:
            instrument.validate_price(proposal.entry_price, "entry_price")
        assert proposal.stop_loss is not None  # a non-reduce-only proposal always has one
        instrument.validate_price(proposal.stop_loss, "stop_loss")
        if proposal.take_profit is not None:
            instrument.validate_price(proposal.take_profit, "take_profit")
        instrument.validate_leverage(proposal.leverage)
        return instrument

    def _new_intent_id(self) -> str:
        # Time first (ids sort by creation, and a restarted process with the same seed does
        # not repeat them), then random bits against collisions within one millisecond.
        return f"{int(self._clock.timestamp() * 1000):x}{self._rng.getrandbits(24):06x}"

    async def _flush_quietly(self) -> None:
        try:
            await self.flush_pending()
        except (TransientError, StoreUnavailableError) as error:
            _log.warning("pending_writes_still_failing", error=str(error))

    async def _cancel_orphaned_protection(self) -> int:
        """Cancel the live protective orders of every symbol the store shows flat.

        Decided from the state, not from which fills this call booked: the fill that left a
        symbol flat may have been booked by the reconciler, by a closing order's own
        bookkeeping, or by an earlier pass whose cancel failed. A protective order left on a
        flat symbol is not harmless: a reduce-only stop from a finished bracket would close
        the next position opened in that direction. A partly closed position keeps all its
        protection (the venue caps reduce-only fills at the position).
        """
        # The orders and the positions are read by one statement, at one instant: a
        # protective order is only placed after its position is recorded, so one listed with
        # its symbol flat really is left over, not the protection of a position being opened
        # right now.
        orphaned = await self._ledger.orphaned_protection()
        if not orphaned:
            return 0
        # The venue's answers are journaled together, after the last cancel: they record what
        # already happened on the venue (no venue call waits on them), and a crash before the
        # write leaves orders that the next pass cancels again (already final: it asks) and
        # records then.
        answers: list[tuple[Order, OrderRole, str | None]] = []
        try:
            for record in orphaned:
                final = await self._cancel_protective(record.order, record.role, record.intent_id)
                if final is not None:
                    answers.append((final, record.role, record.intent_id))
        except Exception:
            # A failure later in the pass does not lose the answers already in hand.
            if answers:
                await self._record_answers(answers)
            raise
        if answers:
            await self._record_answers(answers)
        return sum(1 for final, _, _ in answers if final.status is OrderStatus.CANCELLED)

    async def _record_answers(self, answers: Sequence[tuple[Order, OrderRole, str | None]]) -> None:
        async def write(tx: LedgerTransaction) -> None:
            for order, role, intent_id in answers:
                await tx.put_order(order, role, intent_id)

        description = ", ".join(
            f"record {order.client_order_id} {order.status.value}" for order, _, _ in answers
        )
        await self._pending.write(description, write)

    async def _cancel_protective(
        self, order: Order, role: OrderRole, intent_id: str | None
    ) -> Order | None:
        """Cancel one protective order; return the venue's answer merged on our record, or
        None when it is not known (the caller journals the answers)."""
        retrier = Retrier(self._config.order_retry, self._clock, self._rng)
        try:
            final = await retrier.call(
                self._venue.cancel_order, client_order_id=order.client_order_id
            )
        except (OrderRejected, OrderNotFound):
            # Already final on the venue (a reduce-only order expires with its position).
            try:
                final = await retrier.call(
                    self._venue.get_order, client_order_id=order.client_order_id
                )
            except LegatoError as error:
                _log.warning("oco_cancel_unresolved", order=order.client_order_id, error=str(error))
                return None
        except LegatoError as error:
            await self._alerter.send(
                Alert(
                    level=AlertLevel.WARNING,
                    code=AlertCode.OCO_CANCEL_FAILED,
                    message=(
                        f"{order.client_order_id} could not be cancelled after its bracket's "
                        f"other order filled ({error}); the next pass tries again"
                    ),
                    at=self._clock.now(),
                    symbol=order.symbol,
                    client_order_id=order.client_order_id,
                    intent_id=intent_id,
                )
            )
            return None
        return self._merge(order, final)
