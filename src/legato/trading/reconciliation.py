"""Reconciliation's pure half: compare what the store believes with what the venue shows.

`diff(store, venue, client_id_prefix=..., now=..., grace_seconds=...)` takes a
`LedgerSnapshot` (the store's orders, positions and balances) and a `VenueSnapshot` (the
venue's open orders, positions and balances, plus the answers of earlier targeted queries)
and returns a `ReconciliationPlan`: what to write, what to ask, what to fix and what to
report. It does no I/O and reads no clock; the reconciler loop fetches, diffs, then acts.

The rules, in short (docs/concepts/reconciliation.md explains each):

- The venue wins for an order's status and fills (UPDATE_STATUS, RESOLVE_UNKNOWN), unless
  the change is impossible (a filled order cannot reopen): then it is reported.
- An order of ours (client id prefix) the store lacks is adopted; anyone else's is reported.
- An order the store has open but the venue does not list is asked about by a targeted query
  (QUERY). "Not found" is not final at once: a just-placed order may not be visible yet. Only
  a second not-found answer, at least `grace_seconds` after both the first one and the
  order's last change, marks it NOT PLACED (it was UNKNOWN or NEW) or GONE (it was working).
- At most `max_queries` targeted queries per cycle; the rest are deferred and listed.
- An open position without live stop-losses covering it is re-protected; a venue position the
  store does not know is closed out when nothing protects it, else reported. Position size
  mismatches and balance mismatches are reported, not fixed.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from types import MappingProxyType
from typing import TypeVar

from legato.kernel.errors import ValidationError
from legato.trading.balances import Balance
from legato.trading.orders import Order, OrderSide, OrderStatus, OrderType
from legato.trading.positions import Position

__all__ = [
    "ActionKind",
    "LedgerSnapshot",
    "OrderLookup",
    "ReconciliationAction",
    "ReconciliationPlan",
    "VenueSnapshot",
    "diff",
]

_ZERO = Decimal(0)
_PENDING = frozenset({OrderStatus.NEW, OrderStatus.UNKNOWN})
_LIVE = frozenset({OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED})
_STOP_TYPES = frozenset({OrderType.STOP, OrderType.STOP_LIMIT})
_V = TypeVar("_V")
_GIVEN_UP_REASON = "reconciliation: "


class ActionKind(enum.Enum):
    """What the reconciler should do about one difference, in the order it should do it."""

    CLOSE_OUT = "close_out"  # close an unknown, unprotected venue position (reduce-only)
    REPROTECT = "reprotect"  # place a stop-loss for the uncovered quantity of a position
    RESOLVE_UNKNOWN = "resolve_unknown"  # an UNKNOWN/NEW order the venue has: take its status
    UPDATE_STATUS = "update_status"  # store and venue disagree: write the venue's status/fills
    ADOPT = "adopt"  # an order of ours (by client id prefix) the store lacks: record it
    MARK_NOT_PLACED = "mark_not_placed"  # UNKNOWN/NEW, not found after grace: REJECTED
    MARK_GONE = "mark_gone"  # working order not found after grace: CANCELLED
    QUERY = "query"  # ask the venue about this order by client id (a targeted query)
    AWAIT_GRACE = "await_grace"  # not found once; ask again when the grace period is over
    REPORT = "report"  # a difference the reconciler will not fix by itself
    BALANCE_MISMATCH = "balance_mismatch"  # store and venue totals differ for an asset


_RANK = {kind: rank for rank, kind in enumerate(ActionKind)}
# Kinds whose `order` is the store's new version of that order.
_WRITES = frozenset(
    {
        ActionKind.ADOPT,
        ActionKind.RESOLVE_UNKNOWN,
        ActionKind.UPDATE_STATUS,
        ActionKind.MARK_NOT_PLACED,
        ActionKind.MARK_GONE,
    }
)


def _aware(field_name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ValidationError(
            field_name, value, "an aware UTC datetime" + (" or None" if optional else "")
        )


def _keyed(field_name: str, values: Mapping[str, _V], kind: type, key: str) -> Mapping[str, _V]:
    # Snapshots are keyed by the values' own ids; a mismatch is a bug in whoever built it.
    copied = dict(values)
    for name, value in copied.items():
        if not isinstance(value, kind) or getattr(value, key) != name:
            raise ValidationError(field_name, name, f"{kind.__name__} values keyed by their {key}")
    return MappingProxyType(copied)


@dataclass(frozen=True, slots=True)
class LedgerSnapshot:
    """What the store believes: orders by client id, positions by symbol, balances by asset.

    Every order that may still be working (NEW, UNKNOWN, ACCEPTED, PARTIALLY_FILLED) needs
    `updated_at` or `created_at`: the grace period is measured from it. Closed positions are
    ignored.
    """

    orders: Mapping[str, Order] = field(default_factory=dict)
    positions: Mapping[str, Position] = field(default_factory=dict)
    balances: Mapping[str, Balance] = field(default_factory=dict)

    def __post_init__(self) -> None:
        orders = _keyed("orders", self.orders, Order, "client_order_id")
        for order in orders.values():
            if (order.status in _PENDING or order.status in _LIVE) and _last_change(order) is None:
                raise ValidationError(
                    "orders",
                    order.client_order_id,
                    "an updated_at or created_at time on every order that may be working",
                )
        object.__setattr__(self, "orders", orders)
        object.__setattr__(
            self, "positions", _keyed("positions", self.positions, Position, "symbol")
        )
        object.__setattr__(self, "balances", _keyed("balances", self.balances, Balance, "asset"))

    @classmethod
    def of(
        cls,
        orders: Iterable[Order] = (),
        positions: Iterable[Position] = (),
        balances: Iterable[Balance] = (),
    ) -> LedgerSnapshot:
        """Build a snapshot from plain sequences, keying each value by its own id."""
        return cls(
            {order.client_order_id: order for order in orders},
            {position.symbol: position for position in positions},
            {balance.asset: balance for balance in balances},
        )


@dataclass(frozen=True, slots=True)
class OrderLookup:
    """The answer to one targeted query (`get_order(client_order_id=...)`), kept between cycles.

    `order` is the venue's view, or None for "not found". `missing_since` is when the first
    of the current run of not-found answers came; build lookups with `OrderLookup.record` so
    it carries over from one cycle to the next.
    """

    client_order_id: str
    checked_at: datetime
    order: Order | None
    missing_since: datetime | None = None

    def __post_init__(self) -> None:
        _aware("checked_at", self.checked_at)
        _aware("missing_since", self.missing_since, optional=True)
        if self.order is not None:
            if not isinstance(self.order, Order) or (
                self.order.client_order_id != self.client_order_id
            ):
                raise ValidationError(
                    "order", self.order, f"the venue's Order {self.client_order_id!r}, or None"
                )
            if self.missing_since is not None:
                raise ValidationError("missing_since", self.missing_since, "None when found")
        elif self.missing_since is None or self.missing_since > self.checked_at:
            raise ValidationError(
                "missing_since",
                self.missing_since,
                f"the first not-found time, at or before checked_at {self.checked_at}",
            )

    @property
    def found(self) -> bool:
        """True when the venue returned the order."""
        return self.order is not None

    @classmethod
    def record(
        cls,
        previous: OrderLookup | None,
        client_order_id: str,
        checked_at: datetime,
        order: Order | None,
    ) -> OrderLookup:
        """Return the lookup for a new answer, keeping `missing_since` across not-founds."""
        missing_since: datetime | None = None
        if order is None:
            missing_since = checked_at
            if previous is not None and previous.missing_since is not None:
                missing_since = min(previous.missing_since, checked_at)
        return cls(client_order_id, checked_at, order, missing_since)


@dataclass(frozen=True, slots=True)
class VenueSnapshot:
    """What the venue shows: open orders by client id, positions by symbol, balances by asset.

    `lookups` holds the latest targeted-query answer per client id (from earlier cycles).
    """

    orders: Mapping[str, Order] = field(default_factory=dict)
    positions: Mapping[str, Position] = field(default_factory=dict)
    balances: Mapping[str, Balance] = field(default_factory=dict)
    lookups: Mapping[str, OrderLookup] = field(default_factory=dict)

    def __post_init__(self) -> None:
        orders = _keyed("orders", self.orders, Order, "client_order_id")
        for order in orders.values():
            if order.status in _PENDING:
                raise ValidationError(
                    "orders",
                    order.client_order_id,
                    "venue orders in a status the venue reports (not NEW or UNKNOWN)",
                )
        object.__setattr__(self, "orders", orders)
        object.__setattr__(
            self, "positions", _keyed("positions", self.positions, Position, "symbol")
        )
        object.__setattr__(self, "balances", _keyed("balances", self.balances, Balance, "asset"))
        object.__setattr__(
            self, "lookups", _keyed("lookups", self.lookups, OrderLookup, "client_order_id")
        )

    @classmethod
    def of(
        cls,
        orders: Iterable[Order] = (),
        positions: Iterable[Position] = (),
        balances: Iterable[Balance] = (),
        lookups: Iterable[OrderLookup] = (),
    ) -> VenueSnapshot:
        """Build a snapshot from plain sequences, keying each value by its own id."""
        return cls(
            {order.client_order_id: order for order in orders},
            {position.symbol: position for position in positions},
            {balance.asset: balance for balance in balances},
            {lookup.client_order_id: lookup for lookup in lookups},
        )


@dataclass(frozen=True, slots=True)
class ReconciliationAction:
    """One thing to do (or tell someone) about one difference.

    Order actions carry `client_order_id`; for ADOPT, RESOLVE_UNKNOWN, UPDATE_STATUS,
    MARK_NOT_PLACED and MARK_GONE, `order` is the order to write to the store (for QUERY,
    AWAIT_GRACE and REPORT, the store's or venue's current view). REPROTECT and CLOSE_OUT carry
    `symbol`, the `side` and `quantity` of the order to send, and for REPROTECT the
    `stop_price` of the position's last recorded stop-loss (None if none was ever recorded).
    AWAIT_GRACE carries `retry_at`, when the confirming query is due. BALANCE_MISMATCH carries
    `asset` and both totals.
    """

    kind: ActionKind
    reason: str
    client_order_id: str | None = None
    symbol: str | None = None
    order: Order | None = None
    side: OrderSide | None = None
    quantity: Decimal | None = None
    stop_price: Decimal | None = None
    retry_at: datetime | None = None
    asset: str | None = None
    store_total: Decimal | None = None
    venue_total: Decimal | None = None

    @property
    def writes_order(self) -> bool:
        """True when `order` is the store's new version of the order."""
        return self.kind in _WRITES


@dataclass(frozen=True, slots=True)
class ReconciliationPlan:
    """Everything one diff found: the actions, the orders that agree, the deferred queries.

    Every client id in the store or on the venue appears exactly once: in `matched_orders`,
    in one order action, or in `deferred_queries` (a QUERY the per-cycle cap pushed to a
    later cycle).
    """

    actions: tuple[ReconciliationAction, ...] = ()
    matched_orders: tuple[str, ...] = ()
    deferred_queries: tuple[str, ...] = ()

    @property
    def is_empty(self) -> bool:
        """True when the store and the venue agree: nothing to do, nothing deferred."""
        return not self.actions and not self.deferred_queries

    @property
    def queries(self) -> tuple[ReconciliationAction, ...]:
        """The targeted queries to make this cycle."""
        return self.of_kind(ActionKind.QUERY)

    def of_kind(self, kind: ActionKind) -> tuple[ReconciliationAction, ...]:
        """The actions of one kind, in plan order."""
        return tuple(action for action in self.actions if action.kind is kind)


def _last_change(order: Order) -> datetime | None:
    return order.updated_at or order.created_at


def _same_terms(store: Order, venue: Order) -> bool:
    return (
        store.symbol == venue.symbol
        and store.side is venue.side
        and store.type is venue.type
        and store.quantity == venue.quantity
    )


def _agrees(store: Order, venue: Order) -> bool:
    return (
        store.status is venue.status
        and store.filled_quantity == venue.filled_quantity
        and store.average_price == venue.average_price
        and (venue.venue_order_id is None or venue.venue_order_id == store.venue_order_id)
    )


def _given_up(order: Order) -> bool:
    # MARK_NOT_PLACED and MARK_GONE write this reason; nothing else does.
    return order.is_terminal and (order.reason or "").startswith(_GIVEN_UP_REASON)


def _merged(store: Order, venue: Order) -> Order:
    # The venue's status and fills on the store's record, which keeps our links (bracket,
    # parent) and creation time even when the venue's copy does not carry them.
    times = [time for time in (store.updated_at, venue.updated_at) if time is not None]
    return dataclasses.replace(
        store,
        status=venue.status,
        filled_quantity=venue.filled_quantity,
        average_price=venue.average_price,
        venue_order_id=venue.venue_order_id or store.venue_order_id,
        triggered_at=venue.triggered_at or store.triggered_at,
        reason=venue.reason or store.reason,
        updated_at=max(times) if times else None,
    )


@dataclass(slots=True)
class _Diff:
    # Working state of one diff call; only the frozen plan leaves `diff`.
    store: LedgerSnapshot
    venue: VenueSnapshot
    prefix: str
    now: datetime
    grace: timedelta
    actions: list[ReconciliationAction] = field(default_factory=list)
    matched: list[str] = field(default_factory=list)
    to_query: list[tuple[int, datetime, str]] = field(default_factory=list)
    # The best knowledge of each order after this plan: the venue's view where it has one.
    views: dict[str, Order] = field(default_factory=dict)

    def compare(self, store: Order, venue: Order, source: str) -> None:
        cid = store.client_order_id
        self.views[cid] = venue
        if not _same_terms(store, venue):
            self.report(
                cid,
                venue,
                f"the venue's order {cid} ({source}) is not the one the store recorded: "
                f"{venue.side.value} {venue.quantity} {venue.symbol} {venue.type.value} vs "
                f"{store.side.value} {store.quantity} {store.symbol} {store.type.value}",
            )
            return
        if _agrees(store, venue):
            self.matched.append(cid)
            return
        if venue.filled_quantity < store.filled_quantity:
            self.report(
                cid,
                venue,
                f"the venue shows {venue.filled_quantity} filled for {cid} ({source}) but the "
                f"store recorded {store.filled_quantity}: fills are never undone automatically",
            )
            return
        if _given_up(store) and venue.status is not store.status:
            # Only our own inference ("not found, so not placed / gone") made it final: the
            # venue showing the order is better evidence, so the venue wins.
            self.actions.append(
                ReconciliationAction(
                    ActionKind.UPDATE_STATUS,
                    f"{cid} was given up by reconciliation ({store.status.value}) but the venue "
                    f"has it {venue.status.value} ({source}): the venue wins",
                    cid,
                    store.symbol,
                    dataclasses.replace(_merged(store, venue), reason=venue.reason),
                )
            )
            return
        if store.status is not venue.status and not store.can_transition(venue.status):
            self.views[cid] = store
            self.report(
                cid,
                venue,
                f"the venue shows {cid} as {venue.status.value} ({source}) but the store has it "
                f"{store.status.value}, which cannot change to that",
            )
            return
        if store.status in _PENDING:
            kind = ActionKind.RESOLVE_UNKNOWN
            reason = (
                f"{cid} was {store.status.value} in the store; the venue has it "
                f"{venue.status.value} ({source}): its status is taken"
            )
        else:
            kind = ActionKind.UPDATE_STATUS
            reason = (
                f"{cid}: store {store.status.value} {store.filled_quantity} filled, venue "
                f"{venue.status.value} {venue.filled_quantity} filled ({source}): the venue wins"
            )
        self.actions.append(
            ReconciliationAction(kind, reason, cid, store.symbol, _merged(store, venue))
        )

    def report(self, cid: str, order: Order, reason: str) -> None:
        self.actions.append(
            ReconciliationAction(ActionKind.REPORT, reason, cid, order.symbol, order)
        )

    def order(self, cid: str) -> None:
        stored = self.store.orders.get(cid)
        listed = self.venue.orders.get(cid)
        if stored is None:
            assert listed is not None
            self.views[cid] = listed
            if cid.startswith(self.prefix):
                self.actions.append(
                    ReconciliationAction(
                        ActionKind.ADOPT,
                        f"{cid} is on the venue with our client id prefix {self.prefix!r} but "
                        "not in the store: adopted",
                        cid,
                        listed.symbol,
                        listed,
                    )
                )
            else:
                self.report(
                    cid,
                    listed,
                    f"{cid} is on the venue but is not ours (no prefix {self.prefix!r}): "
                    "left alone",
                )
            return
        if listed is not None:
            self.compare(stored, listed, "listed")
            return
        self.unlisted(stored)

    def unlisted(self, stored: Order) -> None:
        cid = stored.client_order_id
        self.views[cid] = stored
        if stored.is_terminal:
            # Venues list working orders only; a finished order is expected to be absent.
            self.matched.append(cid)
            return
        last_change = _last_change(stored)
        assert last_change is not None  # LedgerSnapshot guarantees it for working orders
        lookup = self.venue.lookups.get(cid)
        if lookup is None or lookup.checked_at < last_change:
            self.queue_query(stored, last_change)
            return
        if lookup.order is not None:
            self.compare(stored, lookup.order, "by targeted query")
            return
        assert lookup.missing_since is not None
        final_at = max(last_change, lookup.missing_since) + self.grace
        if lookup.checked_at >= final_at:
            self.give_up(stored, lookup)
        elif self.now >= final_at:
            self.queue_query(stored, last_change)
        else:
            self.actions.append(
                ReconciliationAction(
                    ActionKind.AWAIT_GRACE,
                    f"{cid} was not found at {lookup.missing_since.isoformat()}; a just-placed "
                    f"order may not be visible yet, so it is asked again at "
                    f"{final_at.isoformat()}",
                    cid,
                    stored.symbol,
                    stored,
                    retry_at=final_at,
                )
            )

    def give_up(self, stored: Order, lookup: OrderLookup) -> None:
        cid = stored.client_order_id
        assert lookup.missing_since is not None
        seconds = (lookup.checked_at - lookup.missing_since).total_seconds()
        if stored.status in _PENDING:
            kind, status = ActionKind.MARK_NOT_PLACED, OrderStatus.REJECTED
            why = "not placed: the venue did not find it"
        else:
            kind, status = ActionKind.MARK_GONE, OrderStatus.CANCELLED
            why = "gone: the venue no longer has it"
        closed = stored.transition(status, at=self.now, reason=f"{_GIVEN_UP_REASON}{why}")
        self.views[cid] = closed
        self.actions.append(
            ReconciliationAction(
                kind,
                f"{cid} ({stored.status.value}) was not found by targeted queries {seconds:g} s "
                f"apart, after a grace of {self.grace.total_seconds():g} s: {why}",
                cid,
                stored.symbol,
                closed,
            )
        )

    def queue_query(self, stored: Order, last_change: datetime) -> None:
        # UNKNOWN and NEW first: they may be live orders nobody tracks.
        priority = 0 if stored.status in _PENDING else 1
        self.to_query.append((priority, last_change, stored.client_order_id))

    def position(self, symbol: str) -> None:
        held = self.store.positions.get(symbol)
        if held is not None and not held.is_open:
            held = None
        shown = self.venue.positions.get(symbol)
        if shown is not None and not shown.is_open:
            shown = None
        if shown is None:
            if held is not None:
                self.actions.append(
                    ReconciliationAction(
                        ActionKind.REPORT,
                        f"the store has a {held.side.value} {held.quantity} {symbol} position "
                        "the venue does not: a protective order may have filled unseen; "
                        "settle it from the venue's fills",
                        symbol=symbol,
                    )
                )
            return
        covered, pending = self.protection(shown)
        if held is None:
            if covered >= shown.quantity:
                self.actions.append(
                    ReconciliationAction(
                        ActionKind.REPORT,
                        f"the venue has a {shown.side.value} {shown.quantity} {symbol} position "
                        "the store does not know; stop-losses cover it, so it is left open",
                        symbol=symbol,
                    )
                )
            else:
                self.actions.append(
                    ReconciliationAction(
                        ActionKind.CLOSE_OUT,
                        f"the venue has a {shown.side.value} {shown.quantity} {symbol} position "
                        "the store does not know and nothing protects it; with no stop price "
                        "on record it is closed",
                        symbol=symbol,
                        side=shown.side.closing_side,
                        quantity=shown.quantity,
                    )
                )
            return
        if held.side is not shown.side or held.quantity != shown.quantity:
            self.actions.append(
                ReconciliationAction(
                    ActionKind.REPORT,
                    f"{symbol}: the store has {held.side.value} {held.quantity}, the venue "
                    f"{shown.side.value} {shown.quantity}",
                    symbol=symbol,
                )
            )
        if covered >= shown.quantity or pending:
            return
        if held.opened_at is not None and self.now - held.opened_at < self.grace:
            # The execution manager is placing the stop-loss right now; do not race it.
            return
        recorded = (
            self.store.orders.get(held.stop_loss_order_id) if held.stop_loss_order_id else None
        )
        self.actions.append(
            ReconciliationAction(
                ActionKind.REPROTECT,
                f"{symbol} {shown.side.value} {shown.quantity} has live stop-losses for only "
                f"{covered}: a stop-loss for {shown.quantity - covered} is needed",
                symbol=symbol,
                side=shown.side.closing_side,
                quantity=shown.quantity - covered,
                stop_price=None if recorded is None else recorded.stop_price,
            )
        )

    def protection(self, position: Position) -> tuple[Decimal, bool]:
        # Live cover from this plan's best view of each order; a stop still NEW or UNKNOWN
        # may be live, so it makes the position "pending" rather than bare.
        covered = _ZERO
        pending = False
        for order in self.views.values():
            if (
                order.symbol != position.symbol
                or order.type not in _STOP_TYPES
                or order.side is not position.side.closing_side
            ):
                continue
            if order.status in _LIVE:
                covered += order.remaining_quantity
            elif order.status in _PENDING:
                pending = True
        return covered, pending

    def balance(self, asset: str, tolerance: Decimal) -> None:
        held = self.store.balances.get(asset)
        shown = self.venue.balances.get(asset)
        store_total = _ZERO if held is None else held.total
        venue_total = _ZERO if shown is None else shown.total
        if abs(store_total - venue_total) > tolerance:
            self.actions.append(
                ReconciliationAction(
                    ActionKind.BALANCE_MISMATCH,
                    f"{asset}: the store has {store_total}, the venue {venue_total} "
                    f"(difference {venue_total - store_total})",
                    asset=asset,
                    store_total=store_total,
                    venue_total=venue_total,
                )
            )


def diff(
    store: LedgerSnapshot,
    venue: VenueSnapshot,
    *,
    client_id_prefix: str,
    now: datetime,
    grace_seconds: float,
    max_queries: int = 10,
    balance_tolerance: Decimal = _ZERO,
) -> ReconciliationPlan:
    """Compare the store with the venue and return the plan that reconciles them; pure.

    `client_id_prefix` marks our orders (adopted when the store lacks them). An order not
    listed by the venue is only given up after targeted queries `grace_seconds` apart, past
    `grace_seconds` since its last change. At most `max_queries` QUERY actions are planned,
    UNKNOWN and NEW orders first, then the longest unchanged; the rest are deferred. Balances
    whose totals differ by more than `balance_tolerance` are reported.
    """
    if not isinstance(store, LedgerSnapshot):
        raise ValidationError("store", store, "a LedgerSnapshot")
    if not isinstance(venue, VenueSnapshot):
        raise ValidationError("venue", venue, "a VenueSnapshot")
    if not isinstance(client_id_prefix, str) or not client_id_prefix:
        raise ValidationError("client_id_prefix", client_id_prefix, "a non-empty string")
    _aware("now", now)
    if (
        isinstance(grace_seconds, bool)
        or not isinstance(grace_seconds, int | float)
        or not 0 <= grace_seconds < 1e9
    ):
        raise ValidationError("grace_seconds", grace_seconds, "seconds >= 0")
    if isinstance(max_queries, bool) or not isinstance(max_queries, int) or max_queries < 0:
        raise ValidationError("max_queries", max_queries, "an integer >= 0")
    if (
        not isinstance(balance_tolerance, Decimal)
        or not balance_tolerance.is_finite()
        or balance_tolerance < 0
    ):
        raise ValidationError("balance_tolerance", balance_tolerance, "a Decimal >= 0")

    work = _Diff(store, venue, client_id_prefix, now, timedelta(seconds=grace_seconds))
    for cid in sorted(set(store.orders) | set(venue.orders)):
        work.order(cid)
    work.to_query.sort()
    asked = work.to_query[:max_queries]
    deferred = tuple(cid for _, _, cid in work.to_query[max_queries:])
    for _, _, cid in asked:
        stored = store.orders[cid]
        work.actions.append(
            ReconciliationAction(
                ActionKind.QUERY,
                f"{cid} ({stored.status.value}) is not listed by the venue: ask for it by "
                "client order id",
                cid,
                stored.symbol,
                stored,
            )
        )
    for symbol in sorted(set(store.positions) | set(venue.positions)):
        work.position(symbol)
    for asset in sorted(set(store.balances) | set(venue.balances)):
        work.balance(asset, balance_tolerance)
    actions = sorted(work.actions, key=lambda action: _RANK[action.kind])
    return ReconciliationPlan(tuple(actions), tuple(work.matched), deferred)
