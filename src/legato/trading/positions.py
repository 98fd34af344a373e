"""Positions: a net holding in a perpetual instrument, with its protection and its PnL.

A `Position` is a frozen value; `increase`, `reduce` and `mark` return the next value. PnL is
computed from prices only (fees are tracked beside it in `fees_paid`), so a trader can check
`realized_pnl` against the fills: for a long, (exit - entry) × quantity closed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from legato.kernel.errors import ValidationError
from legato.trading.copies import RecordCopier
from legato.trading.orders import OrderSide

__all__ = ["Position", "PositionSide", "PositionStatus"]


class PositionSide(enum.Enum):
    """LONG gains when the price rises; SHORT gains when it falls."""

    LONG = "long"
    SHORT = "short"

    @property
    def sign(self) -> int:
        """+1 for long, -1 for short."""
        return 1 if self is PositionSide.LONG else -1

    @property
    def opening_side(self) -> OrderSide:
        """The order side that opens or adds to a position on this side."""
        return OrderSide.BUY if self is PositionSide.LONG else OrderSide.SELL

    @property
    def closing_side(self) -> OrderSide:
        """The order side that reduces or closes a position on this side."""
        return self.opening_side.opposite

    @classmethod
    def opened_by(cls, side: OrderSide) -> PositionSide:
        """The position side an order on `side` opens."""
        return cls.LONG if side is OrderSide.BUY else cls.SHORT


class PositionStatus(enum.Enum):
    """OPEN while quantity > 0; CLOSED once it has all been reduced away."""

    OPEN = "open"
    CLOSED = "closed"


def _decimal(field: str, value: object, minimum: Decimal, symbol: str) -> None:
    if not isinstance(value, Decimal) or not value.is_finite() or value < minimum:
        raise ValidationError(field, value, f"a finite Decimal >= {minimum}", symbol=symbol)


@dataclass(frozen=True, slots=True)
class Position:
    """A net position: side, quantity, average entry price, leverage, protection and PnL.

    `stop_loss_order_id` and `take_profit_order_id` are the client order ids of the orders
    protecting it. `unrealized_pnl` is at `mark_price` (the entry price until marked).
    """

    symbol: str
    side: PositionSide
    quantity: Decimal
    entry_price: Decimal
    leverage: Decimal = Decimal(1)
    status: PositionStatus = PositionStatus.OPEN
    mark_price: Decimal | None = None
    realized_pnl: Decimal = Decimal(0)
    fees_paid: Decimal = Decimal(0)
    stop_loss_order_id: str | None = None
    take_profit_order_id: str | None = None
    opened_at: datetime | None = None
    closed_at: datetime | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.side, PositionSide):
            raise ValidationError("side", self.side, "PositionSide.LONG or SHORT")
        _decimal("quantity", self.quantity, Decimal(0), self.symbol)
        _decimal("entry_price", self.entry_price, Decimal(0), self.symbol)
        _decimal("leverage", self.leverage, Decimal(1), self.symbol)
        if self.mark_price is not None:
            _decimal("mark_price", self.mark_price, Decimal(0), self.symbol)
        if (self.status is PositionStatus.OPEN) != (self.quantity > 0):
            raise ValidationError(
                "status", self.status, "OPEN exactly when quantity > 0", symbol=self.symbol
            )

    @property
    def is_open(self) -> bool:
        """True while the position holds any quantity."""
        return self.status is PositionStatus.OPEN

    @property
    def notional(self) -> Decimal:
        """quantity × mark price (entry price until marked), in the quote asset."""
        return self.quantity * (self.mark_price or self.entry_price)

    @property
    def margin(self) -> Decimal:
        """Initial margin held: quantity × entry price / leverage."""
        return self.quantity * self.entry_price / self.leverage

    @property
    def unrealized_pnl(self) -> Decimal:
        """(mark - entry) × quantity for a long, the opposite for a short."""
        if self.mark_price is None:
            return Decimal(0)
        return (self.mark_price - self.entry_price) * self.quantity * self.side.sign

    @classmethod
    def open(
        cls,
        symbol: str,
        side: PositionSide,
        quantity: Decimal,
        price: Decimal,
        leverage: Decimal = Decimal(1),
        at: datetime | None = None,
        fee: Decimal = Decimal(0),
    ) -> Position:
        """Return a new open position of `quantity` entered at `price`."""
        if not isinstance(quantity, Decimal) or quantity <= 0:
            raise ValidationError("quantity", quantity, "a Decimal > 0", symbol=symbol)
        return cls(
            symbol=symbol,
            side=side,
            quantity=quantity,
            entry_price=price,
            leverage=leverage,
            mark_price=price,
            fees_paid=fee,
            opened_at=at,
        )

    def increase(self, quantity: Decimal, price: Decimal, fee: Decimal = Decimal(0)) -> Position:
        """Return the position after adding `quantity` at `price` (entry price re-averaged)."""
        self._check_open("increase")
        _decimal("quantity", quantity, Decimal(0), self.symbol)
        total = self.quantity + quantity
        entry = (self.entry_price * self.quantity + price * quantity) / total
        return self.replace(quantity=total, entry_price=entry, fees_paid=self.fees_paid + fee)

    def reduce(
        self,
        quantity: Decimal,
        price: Decimal,
        fee: Decimal = Decimal(0),
        at: datetime | None = None,
    ) -> Position:
        """Return the position after closing `quantity` at `price`, realizing its PnL.

        `quantity` may not exceed the position: a fill larger than the position is split by
        the caller into a close and a new position on the other side.
        """
        self._check_open("reduce")
        if not isinstance(quantity, Decimal) or not Decimal(0) < quantity <= self.quantity:
            raise ValidationError(
                "quantity", quantity, f"a Decimal in (0, {self.quantity}]", symbol=self.symbol
            )
        pnl = (price - self.entry_price) * quantity * self.side.sign
        remaining = self.quantity - quantity
        closed = remaining == 0
        return self.replace(
            quantity=remaining,
            realized_pnl=self.realized_pnl + pnl,
            fees_paid=self.fees_paid + fee,
            status=PositionStatus.CLOSED if closed else PositionStatus.OPEN,
            mark_price=price,
            closed_at=at if closed else None,
        )

    def mark(self, price: Decimal) -> Position:
        """Return the position valued at mark price `price`."""
        _decimal("mark_price", price, Decimal(0), self.symbol)
        # Called for every open position on every bar: only the mark changes, and it was
        # just checked, so the copy skips the whole-position validation (and, written out
        # field by field, the generic copy's loop; tests/trading/test_positions.py checks
        # that it copies every field).
        copy = object.__new__(type(self))
        put = object.__setattr__
        put(copy, "symbol", self.symbol)
        put(copy, "side", self.side)
        put(copy, "quantity", self.quantity)
        put(copy, "entry_price", self.entry_price)
        put(copy, "leverage", self.leverage)
        put(copy, "status", self.status)
        put(copy, "mark_price", price)
        put(copy, "realized_pnl", self.realized_pnl)
        put(copy, "fees_paid", self.fees_paid)
        put(copy, "stop_loss_order_id", self.stop_loss_order_id)
        put(copy, "take_profit_order_id", self.take_profit_order_id)
        put(copy, "opened_at", self.opened_at)
        put(copy, "closed_at", self.closed_at)
        return copy

    def with_protection(
        self, stop_loss_order_id: str | None, take_profit_order_id: str | None
    ) -> Position:
        """Return the position with its stop-loss and take-profit order references set."""
        return self.replace(
            stop_loss_order_id=stop_loss_order_id, take_profit_order_id=take_profit_order_id
        )

    def replace(self, **changes: Any) -> Position:
        """Return a copy with `changes` applied, checked as a new position is.

        `dataclasses.replace` at a fraction of its cost. Raises TypeError for a name that is
        not a field, ValidationError (and builds nothing) for a value a position refuses.
        """
        _POSITION_COPIER.check(changes)
        copy = _POSITION_COPIER.copy(self, changes)
        copy.__post_init__()
        return copy

    __replace__ = replace  # copy.replace (Python 3.13+)

    def _check_open(self, action: str) -> None:
        if not self.is_open:
            raise ValidationError(
                "status", self.status.value, f"an open position to {action}", symbol=self.symbol
            )


_POSITION_COPIER = RecordCopier(Position)
