"""The reconciler: makes the store agree with the venue, and repairs what that reveals.

`Reconciler.reconcile()` is one cycle; run it once at startup and then as a supervised loop.
Each cycle:

1. Books the venue's new fills, reads the store, then reads the venue (open orders,
   positions, balances) and lists its fills again: the venue, read last, can only be ahead
   of the store. If fills arrived meanwhile (a bar was matched), it books them and reads
   again; if the venue keeps moving, this cycle acts on orders only, not on positions and
   balances, so fills in flight are never reported as differences.
2. Runs the pure `legato.trading.reconciliation.diff` on both, with the targeted-query
   answers it kept from earlier cycles (`lookups`). Listed orders the store knows as
   finished are part of the store's side: an order the store knows is never adopted.
3. Makes the plan's targeted queries (at most `max_queries`: the cap keeps a cycle inside
   the venue's rate limits) and diffs again with their answers, without more venue calls.
4. Writes the venue's view of every order the plan says to (adopt, resolve UNKNOWN, update
   status, mark not placed or gone after the grace period), with an INFO alert for adoptions
   and resolutions. A ghost (an order given up as not placed that turns up working on the
   venue after all: a request that landed late) is cancelled first and written as
   the venue's answer to the cancel, with a WARNING alert: its intent has moved on (a
   renewed stop-loss, a failed entry), so left live it would be a second stop or an entry
   nobody protects. Each write is a compare-and-set against the store record the plan was
   made from, and orders a live execution call is carrying (`in_progress`) are left alone.
5. If it wrote any order, lets the execution manager resume the intents that were waiting
   on those orders (`on_resolved`, normally `OrderExecutionManager.recover`), and leaves the
   positions of those symbols to the next cycle: the manager may be protecting them now.
6. Re-protects open positions that have no live stop-loss (HIGH alert) and closes venue
   positions the store does not know and nothing protects (CRITICAL alert).
7. Reports everything else (foreign orders, size mismatches, balance mismatches) as WARNING
   alerts, once per distinct finding.

Every venue call goes through the venue, so its rate-limit group applies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from decimal import Decimal

import structlog

from legato.kernel.bus import MessageBus
from legato.kernel.clock import Clock, RealClock
from legato.kernel.errors import LegatoError, ValidationError
from legato.kernel.retry import Jitter, Retrier, RetryPolicy
from legato.kernel.supervisor import Supervisor
from legato.trading.alerts import Alert, AlertCode, Alerter, AlertLevel
from legato.trading.balances import Balance
from legato.trading.errors import OrderNotFound, OrderRejected
from legato.trading.instruments import PriceRounding
from legato.trading.ledger import LedgerTransaction, OrderRole, TradingLedger
from legato.trading.orders import Order, OrderSide, OrderStatus, OrderType
from legato.trading.positions import Position
from legato.trading.reconciliation import (
    ActionKind,
    LedgerSnapshot,
    OrderLookup,
    ReconciliationAction,
    ReconciliationPlan,
    VenueSnapshot,
    diff,
)
from legato.trading.tracker import PositionTracker
from legato.trading.venue import Venue

__all__ = ["Reconciler", "ReconcilerConfig", "ReconciliationReport"]

_log = structlog.get_logger(__name__)
_ONE = Decimal(1)
# How many times a cycle reads the venue again when fills arrived while it was being read.
_READ_ATTEMPTS = 3
# Queries are not retried in a cycle: a failed one is asked again next cycle, and retrying
# here would spend the query budget the cap protects.
_CALL_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.5, max_delay=5.0, jitter=Jitter.NONE)


@dataclass(frozen=True, slots=True)
class ReconcilerConfig:
    """How the reconciler judges and acts.

    `client_id_prefix` marks our orders (adopted when the store lacks them). `grace_seconds`
    is how long "not found" must last before an order is given up. `max_queries` caps the
    targeted queries per cycle. `reprotect_distance` places a re-protecting stop-loss this
    fraction away from the mark price when no stop price was ever recorded.
    `balance_tolerance` is the largest total difference per asset that is not reported.
    """

    client_id_prefix: str = "lg-"
    grace_seconds: float = 30.0
    max_queries: int = 10
    reprotect_distance: Decimal = Decimal("0.02")
    balance_tolerance: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        if not isinstance(self.client_id_prefix, str) or not 1 <= len(self.client_id_prefix) <= 8:
            raise ValidationError("client_id_prefix", self.client_id_prefix, "1 to 8 characters")
        if isinstance(self.grace_seconds, bool) or self.grace_seconds < 0:
            raise ValidationError("grace_seconds", self.grace_seconds, "seconds >= 0")
        if isinstance(self.max_queries, bool) or self.max_queries < 0:
            raise ValidationError("max_queries", self.max_queries, "an integer >= 0")
        if not isinstance(self.reprotect_distance, Decimal) or not (
            0 < self.reprotect_distance < 1
        ):
            raise ValidationError(
                "reprotect_distance", self.reprotect_distance, "a Decimal between 0 and 1"
            )


@dataclass(frozen=True, slots=True)
class ReconciliationReport:
    """What one cycle found and did.

    `plan` is the diff acted on (after this cycle's queries). `queried` the client ids asked
    about, `written` the orders written to the store, `placed` the orders sent (re-protecting
    stop-losses and close-outs), `deferred_symbols` the symbols whose position actions wait
    for the next cycle, `reported` the findings left to a person, `deferred_queries` the
    targeted queries the per-cycle cap pushed to a later cycle.
    """

    plan: ReconciliationPlan
    queried: tuple[str, ...] = ()
    written: tuple[str, ...] = ()
    placed: tuple[str, ...] = ()
    deferred_symbols: tuple[str, ...] = ()
    reported: tuple[str, ...] = ()
    deferred_queries: tuple[str, ...] = ()

    @property
    def in_agreement(self) -> bool:
        """True when the store and the venue agreed: nothing to do, nothing deferred."""
        return self.plan.is_empty


@dataclass(frozen=True, slots=True)
class _Read:
    # One cycle's view of both sides; `consistent` when no fill arrived while it was taken.
    store: LedgerSnapshot
    listed: list[Order]
    positions: list[Position]
    balances: dict[str, Balance]
    consistent: bool


class Reconciler:
    """Diffs the store against the venue every cycle and carries out the plan.

    `on_resolved` is awaited after a cycle wrote orders (the execution manager's `recover`),
    so intents waiting on an UNKNOWN order move on as soon as it is resolved. `in_progress`
    (the manager's `orders_in_progress`) names the orders a live execution call owns right
    now: the reconciler writes none of them. The lookups
    (answers of targeted queries) are kept between cycles, as the diff requires.
    """

    def __init__(
        self,
        venue: Venue,
        ledger: TradingLedger,
        *,
        clock: Clock | None = None,
        config: ReconcilerConfig | None = None,
        tracker: PositionTracker | None = None,
        alerter: Alerter | None = None,
        bus: MessageBus | None = None,
        on_resolved: Callable[[], Awaitable[object]] | None = None,
        in_progress: Callable[[], Collection[str]] | None = None,
    ) -> None:
        self._venue = venue
        self._ledger = ledger
        self._clock: Clock = clock if clock is not None else RealClock()
        self._config = config if config is not None else ReconcilerConfig()
        self._tracker = tracker if tracker is not None else PositionTracker(ledger, clock=clock)
        self._alerter = (
            alerter
            if alerter is not None
            else Alerter(ledger.record_alert, bus=bus, source="reconciler")
        )
        self._on_resolved = on_resolved
        self._in_progress = in_progress
        self._lookups: dict[str, OrderLookup] = {}
        self._reported: set[str] = set()
        self._sequence = 0

    @property
    def lookups(self) -> dict[str, OrderLookup]:
        """The latest targeted-query answer per client id (a copy)."""
        return dict(self._lookups)

    def supervise(self, supervisor: Supervisor, *, every: float = 30.0) -> None:
        """Register `reconcile` on `supervisor` as the loop ``reconciler``."""
        supervisor.add_loop("reconciler", self.reconcile, interval=every)

    async def reconcile(self) -> ReconciliationReport:
        """Run one reconciliation cycle (the loop function); return what it found and did."""
        retrier = Retrier(_CALL_RETRY, self._clock)
        read = await self._consistent_read(retrier)
        store, listed, positions = read.store, read.listed, read.positions
        # Balances are compared only when the store tracks them (PositionTracker.set_balances).
        venue_balances = [
            balance for asset, balance in read.balances.items() if asset in store.balances
        ]

        def plan_now() -> ReconciliationPlan:
            venue = VenueSnapshot.of(
                orders=[order for order in listed if order.client_order_id],
                positions=positions,
                balances=venue_balances,
                lookups=self._lookups.values(),
            )
            return diff(
                store,
                venue,
                client_id_prefix=self._config.client_id_prefix,
                now=self._clock.now(),
                grace_seconds=self._config.grace_seconds,
                max_queries=self._config.max_queries,
                balance_tolerance=self._config.balance_tolerance,
            )

        plan = plan_now()
        deferred_queries = plan.deferred_queries
        queried = []
        for action in plan.queries:
            assert action.client_order_id is not None
            if await self._query(action.client_order_id):
                queried.append(action.client_order_id)
        if queried:
            plan = plan_now()
        if not read.consistent:
            # The venue moved while it was read: its positions and balances may be from
            # before or after fills the store has not seen. Order actions stay (each write
            # is checked against the store below); position and balance findings wait.
            plan = dataclasses.replace(
                plan,
                actions=tuple(
                    action
                    for action in plan.actions
                    if action.client_order_id is not None or action.kind is ActionKind.QUERY
                ),
            )
        busy = frozenset(self._in_progress()) if self._in_progress is not None else frozenset()
        if busy:
            # An order a live execution call is placing or awaiting is the manager's: it
            # records the venue's answer itself, so the reconciler neither adopts it nor
            # gives it up while the call runs.
            plan = dataclasses.replace(
                plan,
                actions=tuple(
                    action
                    for action in plan.actions
                    if not (action.writes_order and action.client_order_id in busy)
                ),
            )
        plan = await self._cancel_ghosts(plan, store)
        written = await self._write_orders(plan, store)
        deferred: set[str] = set()
        if not read.consistent:
            deferred = {symbol for symbol in store.positions} | {p.symbol for p in positions}
        if written:
            deferred |= {
                action.symbol
                for action in plan.actions
                if action.client_order_id in written and action.symbol
            }
            if self._on_resolved is not None:
                await self._on_resolved()
        placed: list[str] = []
        for action in plan.actions:
            if action.kind not in (ActionKind.REPROTECT, ActionKind.CLOSE_OUT):
                continue
            if action.symbol in deferred:
                continue
            cid = await self._protect(action, positions)
            if cid is not None:
                placed.append(cid)
        reported = await self._report(plan)
        return ReconciliationReport(
            plan=plan,
            queried=tuple(queried),
            written=tuple(written),
            placed=tuple(placed),
            deferred_symbols=tuple(sorted(deferred)),
            reported=tuple(reported),
            deferred_queries=deferred_queries,
        )

    async def _consistent_read(self, retrier: Retrier) -> _Read:
        """Book the venue's fills, then read the store and the venue as of the same fills.

        The store is read first and the venue after it, so the venue can only be ahead of
        the store (its answer wins) and never behind it. The venue's fills are listed again
        at the end: if new ones arrived while it was read (a bar was matched), its positions
        and balances may not match the store's, so the read is repeated, up to
        `_READ_ATTEMPTS` times; still moving, the read is marked inconsistent.
        """
        read: _Read | None = None
        for _ in range(_READ_ATTEMPTS):
            fills = await retrier.call(self._venue.fills)
            await self._tracker.apply_fills(fills)
            store = await self._ledger.snapshot()
            listed = list(await retrier.call(self._venue.open_orders))
            positions = list(await retrier.call(self._venue.positions))
            balances = dict(await retrier.call(self._venue.balances))
            store = await self._with_known(store, listed)
            after = await retrier.call(self._venue.fills)
            consistent = [fill.fill_id for fill in after] == [fill.fill_id for fill in fills]
            read = _Read(store, listed, positions, balances, consistent)
            if consistent:
                return read
            # Book what arrived meanwhile before reading again.
            await self._tracker.apply_fills(after)
        assert read is not None
        _log.info("reconciler_venue_moving", attempts=_READ_ATTEMPTS)
        return read

    async def _with_known(self, store: LedgerSnapshot, listed: Sequence[Order]) -> LedgerSnapshot:
        # The store snapshot holds working orders only; a listed order the store knows as
        # finished is compared with the store's record, never adopted as a stranger.
        extra: list[Order] = []
        for order in listed:
            cid = order.client_order_id
            if cid and cid not in store.orders:
                record = await self._ledger.get_order(cid)
                if record is not None:
                    extra.append(record.order)
        if not extra:
            return store
        return LedgerSnapshot.of(
            orders=[*store.orders.values(), *extra],
            positions=store.positions.values(),
            balances=store.balances.values(),
        )

    async def _query(self, client_order_id: str) -> bool:
        try:
            order: Order | None = await self._venue.get_order(client_order_id=client_order_id)
        except OrderNotFound:
            order = None
        except LegatoError as error:
            _log.warning("reconciler_query_failed", order=client_order_id, error=str(error))
            return False
        self._lookups[client_order_id] = OrderLookup.record(
            self._lookups.get(client_order_id), client_order_id, self._clock.now(), order
        )
        return True

    async def _cancel_ghosts(
        self, plan: ReconciliationPlan, store: LedgerSnapshot
    ) -> ReconciliationPlan:
        """Cancel every ghost of the plan on the venue, and write that instead of taking it back.

        A ghost: the store holds the order REJECTED because reconciliation gave it up as not
        placed (its intent moved on: a renewed order, a failed entry), the venue shows it
        working. One given up as gone (CANCELLED) is taken back instead: it was a known live
        order, and keeping it errs on the side of protection. The cancel comes before any
        write, so a crash in between leaves the store as it was and the next cycle finds the
        ghost again; a cancel that fails turns the action into a report, and the next cycle
        tries again.
        """
        actions: list[ReconciliationAction] = []
        for action in plan.actions:
            cid = action.client_order_id
            before = None if cid is None else store.orders.get(cid)
            if (
                action.kind is not ActionKind.UPDATE_STATUS
                or action.order is None
                or action.order.is_terminal
                or before is None
                or before.status is not OrderStatus.REJECTED
            ):
                actions.append(action)
                continue
            final = await self._cancel(action.order)
            if final is None:
                actions.append(
                    dataclasses.replace(
                        action,
                        kind=ActionKind.REPORT,
                        reason=f"{action.reason}; cancelling it failed, retried next cycle",
                    )
                )
                continue
            reason = (
                f"{cid} was given up by reconciliation ({before.status.value}) but turned up "
                f"{action.order.status.value} on the venue (it landed late): its intent has "
                f"moved on, so it was cancelled ({final.status.value}, "
                f"{final.filled_quantity} filled)"
            )
            actions.append(dataclasses.replace(action, reason=reason, order=final))
            await self._alert(AlertLevel.WARNING, AlertCode.RECONCILIATION_REPORT, actions[-1])
        return dataclasses.replace(plan, actions=tuple(actions))

    async def _cancel(self, order: Order) -> Order | None:
        """Cancel `order` on the venue; its record with the venue's final answer, or None."""
        cid = order.client_order_id
        retrier = Retrier(_CALL_RETRY, self._clock)
        try:
            final = await retrier.call(self._venue.cancel_order, client_order_id=cid)
        except (OrderRejected, OrderNotFound):
            # Final on the venue meanwhile (filled, or expired with its position): ask.
            try:
                final = await retrier.call(self._venue.get_order, client_order_id=cid)
            except LegatoError as error:
                _log.warning("reconciler_ghost_unresolved", order=cid, error=str(error))
                return None
        except LegatoError as error:
            _log.warning("reconciler_ghost_cancel_failed", order=cid, error=str(error))
            return None
        if not final.is_terminal:
            return None
        return dataclasses.replace(
            order,
            status=final.status,
            filled_quantity=final.filled_quantity,
            average_price=final.average_price,
            venue_order_id=final.venue_order_id or order.venue_order_id,
            reason="turned up after reconciliation gave it up; cancelled",
            updated_at=final.updated_at or self._clock.now(),
        )

    async def _write_orders(self, plan: ReconciliationPlan, store: LedgerSnapshot) -> list[str]:
        """Write the plan's orders; return the client ids written.

        Each write is a compare-and-set against the snapshot the plan was made from: an
        order the store changed since (the execution manager recorded it, or booked its
        fills) is left alone this cycle, and an order to adopt that the store knows by now
        is not adopted. The next cycle diffs again with fresh reads.
        """
        actions = [action for action in plan.actions if action.writes_order]
        if not actions:
            return []

        async def write(tx: LedgerTransaction) -> list[ReconciliationAction]:
            done: list[ReconciliationAction] = []
            for action in actions:
                assert action.order is not None
                assert action.client_order_id is not None
                current = await tx.get_order(action.client_order_id)
                expected = store.orders.get(action.client_order_id)
                if (current is None) != (expected is None) or (
                    current is not None and current.order != expected
                ):
                    _log.info(
                        "reconciler_write_skipped",
                        order=action.client_order_id,
                        action=action.kind.value,
                        why="the store changed it since the snapshot",
                    )
                    continue
                await tx.update_order(action.order)
                done.append(action)
            return done

        done = await self._ledger.write(write)
        written = []
        for action in done:
            assert action.client_order_id is not None
            cid = action.client_order_id
            written.append(cid)
            # The store now holds the venue's answer; an old lookup must not outlive it.
            self._lookups.pop(cid, None)
            if action.kind is ActionKind.ADOPT:
                await self._alert(AlertLevel.INFO, AlertCode.ORDER_ADOPTED, action)
            elif action.kind in (ActionKind.RESOLVE_UNKNOWN, ActionKind.MARK_NOT_PLACED):
                await self._alert(AlertLevel.INFO, AlertCode.ORDER_RESOLVED, action)
        return written

    async def _protect(
        self, action: ReconciliationAction, positions: Sequence[Position]
    ) -> str | None:
        assert action.symbol is not None
        assert action.side is not None
        assert action.quantity is not None
        instrument = self._venue.instrument(action.symbol)
        self._sequence += 1
        stamp = f"{int(self._clock.timestamp() * 1000):x}{self._sequence % 4096:03x}"
        now = self._clock.now()
        if action.kind is ActionKind.CLOSE_OUT:
            role, level, code = OrderRole.CLOSE, AlertLevel.CRITICAL, AlertCode.POSITION_CLOSED_OUT
            order = Order(
                client_order_id=f"{self._config.client_id_prefix}co{stamp}",
                symbol=action.symbol,
                side=action.side,
                type=OrderType.MARKET,
                quantity=action.quantity,
                reduce_only=True,
                created_at=now,
                updated_at=now,
            )
        else:
            role, level, code = OrderRole.REPROTECT, AlertLevel.HIGH, AlertCode.POSITION_REPROTECTED
            stop_price = action.stop_price or self._derived_stop(action, positions)
            if stop_price is None:
                await self._alert(AlertLevel.CRITICAL, AlertCode.RECONCILIATION_REPORT, action)
                return None
            order = Order(
                client_order_id=f"{self._config.client_id_prefix}rp{stamp}",
                symbol=action.symbol,
                side=action.side,
                type=OrderType.STOP,
                quantity=instrument.round_quantity(action.quantity) or action.quantity,
                stop_price=instrument.round_price(
                    stop_price,
                    PriceRounding.DOWN if action.side is OrderSide.SELL else PriceRounding.UP,
                ),
                reduce_only=True,
                created_at=now,
                updated_at=now,
            )
        sending = order.transition(OrderStatus.UNKNOWN, at=now)
        await self._ledger.write(lambda tx: tx.put_order(sending, role))
        try:
            placed = await Retrier(_CALL_RETRY, self._clock).call(self._venue.place_order, sending)
        except LegatoError as error:
            # Left UNKNOWN in the store: the next cycle queries it by client id.
            _log.warning("reconciler_order_failed", order=order.client_order_id, error=str(error))
            await self._alerter.send(
                Alert(
                    level=AlertLevel.CRITICAL,
                    code=code,
                    message=f"{action.reason}; sending {order.client_order_id} failed: {error}",
                    at=self._clock.now(),
                    symbol=action.symbol,
                    client_order_id=order.client_order_id,
                )
            )
            return None
        merged = dataclasses.replace(
            sending,
            status=placed.status,
            venue_order_id=placed.venue_order_id,
            leverage=placed.leverage,
            filled_quantity=placed.filled_quantity,
            average_price=placed.average_price,
            updated_at=placed.updated_at or now,
        )
        await self._ledger.write(lambda tx: tx.put_order(merged, role))
        if role is OrderRole.REPROTECT:
            position = await self._ledger.position(action.symbol)
            take = None if position is None else position.take_profit_order_id
            await self._tracker.set_protection(action.symbol, order.client_order_id, take)
        await self._alerter.send(
            Alert(
                level=level,
                code=code,
                message=f"{action.reason}: sent {order.client_order_id}",
                at=self._clock.now(),
                symbol=action.symbol,
                client_order_id=order.client_order_id,
            )
        )
        return order.client_order_id

    def _derived_stop(
        self, action: ReconciliationAction, positions: Sequence[Position]
    ) -> Decimal | None:
        for position in positions:
            if position.symbol == action.symbol:
                reference: Decimal = position.mark_price or position.entry_price
                distance = self._config.reprotect_distance
                if action.side is OrderSide.SELL:
                    return reference * (_ONE - distance)
                return reference * (_ONE + distance)
        return None

    async def _report(self, plan: ReconciliationPlan) -> list[str]:
        reported = []
        for action in plan.actions:
            if action.kind not in (ActionKind.REPORT, ActionKind.BALANCE_MISMATCH):
                continue
            reported.append(action.reason)
            if action.reason in self._reported:
                continue
            self._reported.add(action.reason)
            await self._alert(AlertLevel.WARNING, AlertCode.RECONCILIATION_REPORT, action)
        return reported

    async def _alert(
        self, level: AlertLevel, code: AlertCode, action: ReconciliationAction
    ) -> None:
        await self._alerter.send(
            Alert(
                level=level,
                code=code,
                message=action.reason,
                at=self._clock.now(),
                symbol=action.symbol,
                client_order_id=action.client_order_id,
            )
        )
