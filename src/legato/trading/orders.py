"""Orders: what was asked of a venue, and where that request stands.

An `Order` is a frozen value. Every change of status goes through `Order.transition` (or
`Order.with_fill`), which checks it against `ORDER_TRANSITIONS`, the whole order lifecycle in
one table: a filled, cancelled, rejected or expired order never changes again, and an order
never goes back to NEW. UNKNOWN means "sent, outcome not known yet" (a timeout after the
request left); it is resolved by querying the venue with the client order id, never by
sending the order again. docs/concepts/orders.md draws the lifecycle.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from legato.kernel.errors import ValidationError
from legato.trading.copies import RecordCopier
from legato.trading.errors import InvalidOrderTransition

__all__ = [
    "ORDER_TRANSITIONS",
    "Order",
    "OrderSide",
    "OrderStatus",
    "OrderType",
    "TimeInForce",
]

# Venues cap client ids (Binance: 36 characters from this set); refusing longer or odder ids
# here keeps an order from being rejected only once it reaches the venue.
_CLIENT_ORDER_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,36}$")


class OrderSide(enum.Enum):
    """Buy or sell."""

    BUY = "buy"
    SELL = "sell"

    @property
    def opposite(self) -> OrderSide:
        """The other side (the side that closes a position opened by this one)."""
        return OrderSide.SELL if self is OrderSide.BUY else OrderSide.BUY

    @property
    def sign(self) -> int:
        """+1 for buy, -1 for sell: the direction this side moves a net position."""
        return 1 if self is OrderSide.BUY else -1


class OrderType(enum.Enum):
    """How and when an order executes.

    MARKET fills at once at the best available price. LIMIT fills at `price` or better.
    STOP becomes a market order once the price reaches `stop_price` against the position
    (a stop-loss); STOP_LIMIT becomes a limit order at `price` instead. TAKE_PROFIT becomes a
    market order once the price reaches `stop_price` in the position's favour.
    """

    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"
    STOP_LIMIT = "stop_limit"
    TAKE_PROFIT = "take_profit"

    @property
    def needs_price(self) -> bool:
        """True when the order carries a limit `price`."""
        return self in _NEEDS_PRICE

    @property
    def needs_stop_price(self) -> bool:
        """True when the order waits for a trigger at `stop_price`."""
        return self in _NEEDS_STOP_PRICE


_NEEDS_PRICE = frozenset({OrderType.LIMIT, OrderType.STOP_LIMIT})
_NEEDS_STOP_PRICE = frozenset({OrderType.STOP, OrderType.STOP_LIMIT, OrderType.TAKE_PROFIT})


class TimeInForce(enum.Enum):
    """How long an order may rest.

    GTC rests until filled or cancelled. IOC fills what it can at once and expires the rest.
    FOK fills completely at once or expires without any fill.
    """

    GTC = "gtc"
    IOC = "ioc"
    FOK = "fok"


class OrderStatus(enum.Enum):
    """Where an order stands. UNKNOWN: sent, but whether the venue has it is not known yet."""

    NEW = "new"
    UNKNOWN = "unknown"
    ACCEPTED = "accepted"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        """True when the order can never change again."""
        return not ORDER_TRANSITIONS[self]

    @property
    def is_open(self) -> bool:
        """True when the order is (or may be) working on the venue."""
        return self in (OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED, OrderStatus.UNKNOWN)


_S = OrderStatus
_RESOLVED_BY_VENUE = frozenset(
    {_S.ACCEPTED, _S.PARTIALLY_FILLED, _S.FILLED, _S.CANCELLED, _S.REJECTED, _S.EXPIRED}
)

ORDER_TRANSITIONS: Mapping[OrderStatus, frozenset[OrderStatus]] = {
    # Created here, not yet sent. A venue may answer with a fill straight away (a market order).
    _S.NEW: _RESOLVED_BY_VENUE | {_S.UNKNOWN},
    # Sent, outcome unknown: only a venue answer (a query by client id) resolves it. Staying
    # UNKNOWN is allowed so repeated unanswered queries are recorded without inventing a status.
    _S.UNKNOWN: _RESOLVED_BY_VENUE | {_S.UNKNOWN},
    # Working orders can be lost sight of ("accepted, then not found"): that is UNKNOWN too.
    _S.ACCEPTED: frozenset({_S.PARTIALLY_FILLED, _S.FILLED, _S.CANCELLED, _S.EXPIRED, _S.UNKNOWN}),
    _S.PARTIALLY_FILLED: frozenset(
        {_S.PARTIALLY_FILLED, _S.FILLED, _S.CANCELLED, _S.EXPIRED, _S.UNKNOWN}
    ),
    _S.FILLED: frozenset(),
    _S.CANCELLED: frozenset(),
    _S.REJECTED: frozenset(),
    _S.EXPIRED: frozenset(),
}


def _check_aware(field: str, value: datetime | None) -> None:
    if value is not None and (not isinstance(value, datetime) or value.utcoffset() is None):
        raise ValidationError(field, value, "an aware UTC datetime or None")


def _check_decimal(field: str, value: object, *, positive: bool, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValidationError(field, value, "a finite Decimal" + (" or None" if optional else ""))
    if positive and value <= 0:
        raise ValidationError(field, value, "a Decimal > 0")
    if not positive and value < 0:
        raise ValidationError(field, value, "a Decimal >= 0")


@dataclass(frozen=True, slots=True)
class Order:
    """An order: the request (ids, side, type, quantity, prices) and its current state.

    `price` is the limit price (LIMIT, STOP_LIMIT); `stop_price` is the trigger price (STOP,
    STOP_LIMIT, TAKE_PROFIT). `parent_order_id` is the client id of the order this one
    follows (a stop-loss's entry); `bracket_id` groups an entry with its stop-loss and
    take-profit. `leverage` applies to perpetual instruments only.
    """

    client_order_id: str
    symbol: str
    side: OrderSide
    type: OrderType
    quantity: Decimal
    price: Decimal | None = None
    stop_price: Decimal | None = None
    time_in_force: TimeInForce = TimeInForce.GTC
    reduce_only: bool = False
    leverage: Decimal | None = None
    status: OrderStatus = OrderStatus.NEW
    venue_order_id: str | None = None
    filled_quantity: Decimal = Decimal(0)
    average_price: Decimal | None = None
    parent_order_id: str | None = None
    bracket_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    triggered_at: datetime | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.client_order_id, str) or not _CLIENT_ORDER_ID.match(
            self.client_order_id
        ):
            raise ValidationError(
                "client_order_id",
                self.client_order_id,
                "1 to 36 characters from A-Z a-z 0-9 . _ : -",
            )
        if not isinstance(self.symbol, str) or not self.symbol:
            raise ValidationError("symbol", self.symbol, "a non-empty string")
        if not isinstance(self.side, OrderSide):
            raise ValidationError("side", self.side, "OrderSide.BUY or OrderSide.SELL")
        if not isinstance(self.type, OrderType):
            raise ValidationError("type", self.type, "an OrderType")
        if not isinstance(self.time_in_force, TimeInForce):
            raise ValidationError("time_in_force", self.time_in_force, "a TimeInForce")
        _check_decimal("quantity", self.quantity, positive=True, optional=False)
        _check_decimal("price", self.price, positive=True, optional=True)
        _check_decimal("stop_price", self.stop_price, positive=True, optional=True)
        needs_price = self.type in _NEEDS_PRICE
        if needs_price and self.price is None:
            raise ValidationError("price", None, f"a limit price for a {self.type.value} order")
        if not needs_price and self.price is not None:
            raise ValidationError("price", self.price, f"None for a {self.type.value} order")
        needs_stop_price = self.type in _NEEDS_STOP_PRICE
        if needs_stop_price and self.stop_price is None:
            raise ValidationError(
                "stop_price", None, f"a trigger price for a {self.type.value} order"
            )
        if not needs_stop_price and self.stop_price is not None:
            raise ValidationError(
                "stop_price", self.stop_price, f"None for a {self.type.value} order"
            )
        # The request is valid: then the state, every field of it.
        self._check_state(_STATE_FIELDS)

    def replace(self, **changes: Any) -> Order:
        """Return a copy with `changes` applied, checked as a new order is.

        What `dataclasses.replace` does, at a fraction of its cost (orders are copied on
        every status change and fill): the fields are copied slot by slot and the result
        validated once. Raises TypeError for a name that is not a field, ValidationError
        (and builds nothing) for a value the order does not accept.
        """
        _ORDER_COPIER.check(changes)
        copy = _ORDER_COPIER.copy(self, changes)
        if _STATE_FIELDS.issuperset(changes):
            # The request (ids, side, type, quantity, prices) is this order's, already
            # checked: only the checks that involve the changed state are left.
            copy._check_state(changes)
        else:
            copy.__post_init__()
        return copy

    def _check_state(self, changed: Collection[str]) -> None:
        # The checks that read a state field, for those in `changed`: all of them for a new
        # order (__post_init__), the changed ones for a copy of a valid order (`replace`).
        if "status" in changed and not isinstance(self.status, OrderStatus):
            raise ValidationError("status", self.status, "an OrderStatus")
        fills = "filled_quantity" in changed or "average_price" in changed
        if fills:
            _check_decimal("filled_quantity", self.filled_quantity, positive=False, optional=False)
            _check_decimal("average_price", self.average_price, positive=True, optional=True)
        if "leverage" in changed and self.leverage is not None:
            _check_decimal("leverage", self.leverage, positive=True, optional=False)
            if self.leverage < 1:
                raise ValidationError("leverage", self.leverage, "a Decimal >= 1 or None")
        if fills:
            if self.filled_quantity > self.quantity:
                raise ValidationError(
                    "filled_quantity", self.filled_quantity, f"<= quantity {self.quantity}"
                )
            if (self.filled_quantity > 0) != (self.average_price is not None):
                raise ValidationError(
                    "average_price", self.average_price, "set exactly when filled_quantity > 0"
                )
        if "created_at" in changed:
            _check_aware("created_at", self.created_at)
        if "updated_at" in changed:
            _check_aware("updated_at", self.updated_at)
        if "triggered_at" in changed:
            _check_aware("triggered_at", self.triggered_at)

    __replace__ = replace  # copy.replace (Python 3.13+)

    @property
    def remaining_quantity(self) -> Decimal:
        """Quantity not filled yet."""
        return self.quantity - self.filled_quantity

    @property
    def is_terminal(self) -> bool:
        """True when the order can never change again."""
        return self.status.is_terminal

    @property
    def is_open(self) -> bool:
        """True when the order is (or may be) working on the venue."""
        return self.status.is_open

    def can_transition(self, status: OrderStatus) -> bool:
        """Return True when the lifecycle allows moving from the current status to `status`."""
        return status in ORDER_TRANSITIONS[self.status]

    def transition(self, status: OrderStatus, at: datetime | None = None, **changes: Any) -> Order:
        """Return a copy in `status` (with `changes` applied); raise if the lifecycle forbids it.

        Raises InvalidOrderTransition (a ValidationError) and leaves this order unchanged when
        `status` is not reachable from the current status.
        """
        if not self.can_transition(status):
            allowed = sorted(s.value for s in ORDER_TRANSITIONS[self.status])
            raise InvalidOrderTransition(
                self.client_order_id,
                self.status.value,
                status.value,
                ", ".join(allowed) if allowed else "none (the order is final)",
            )
        if at is not None:
            changes["updated_at"] = at
        changes["status"] = status
        return self.replace(**changes)

    def with_fill(self, quantity: Decimal, price: Decimal, at: datetime | None = None) -> Order:
        """Return a copy with one more fill of `quantity` at `price` (status follows)."""
        _check_decimal("fill quantity", quantity, positive=True, optional=False)
        _check_decimal("fill price", price, positive=True, optional=False)
        if quantity > self.remaining_quantity:
            raise ValidationError(
                "fill quantity", quantity, f"<= remaining quantity {self.remaining_quantity}"
            )
        filled = self.filled_quantity + quantity
        previous_cost = (self.average_price or Decimal(0)) * self.filled_quantity
        average = (previous_cost + price * quantity) / filled
        status = OrderStatus.FILLED if filled == self.quantity else OrderStatus.PARTIALLY_FILLED
        return self.transition(status, at=at, filled_quantity=filled, average_price=average)


_ORDER_COPIER = RecordCopier(Order)
# What changes as an order lives (status, venue id, fills, leverage as the venue reports it,
# times, reason); `Order.replace`
# of these only re-checks what they take part in.
_STATE_FIELDS = frozenset(
    {
        "status",
        "venue_order_id",
        "filled_quantity",
        "average_price",
        "leverage",
        "parent_order_id",
        "bracket_id",
        "created_at",
        "updated_at",
        "triggered_at",
        "reason",
    }
)
