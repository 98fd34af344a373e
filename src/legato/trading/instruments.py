"""Instruments: what can be traded, and the price and quantity grids a venue accepts.

A venue rejects a price that is not a whole number of ticks, a quantity that is not a whole
number of lots, and an order whose notional (price × quantity) is below its minimum. An
`Instrument` carries those rules and applies them, so an order is checked before it is sent.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

from legato.kernel.errors import ValidationError

__all__ = ["Instrument", "InstrumentKind", "PriceRounding"]


class InstrumentKind(enum.Enum):
    """Spot (you own the asset) or perpetual future (a leveraged position, no expiry)."""

    SPOT = "spot"
    PERPETUAL = "perpetual"


class PriceRounding(enum.Enum):
    """Which way `Instrument.round_price` moves a price that is off the tick grid."""

    NEAREST = "nearest"
    DOWN = "down"
    UP = "up"


_ROUNDING_MODES = {
    PriceRounding.NEAREST: ROUND_HALF_EVEN,
    PriceRounding.DOWN: ROUND_FLOOR,
    PriceRounding.UP: ROUND_CEILING,
}


def _positive_decimal(field: str, value: object) -> Decimal:
    if not isinstance(value, Decimal) or not value.is_finite() or value <= 0:
        raise ValidationError(field, value, "a finite Decimal > 0")
    return value


@dataclass(frozen=True, slots=True)
class Instrument:
    """A tradable market with its tick size, lot size, minimum notional and leverage cap.

    `symbol` is the venue's name for it ("BTC/USDT", "BTC/USDT:PERP"); prices are in
    `quote_asset` per one unit of `base_asset`; quantities are in `base_asset`.
    """

    symbol: str
    base_asset: str
    quote_asset: str
    tick_size: Decimal
    lot_size: Decimal
    min_notional: Decimal = Decimal(0)
    kind: InstrumentKind = InstrumentKind.SPOT
    max_leverage: Decimal = Decimal(1)

    def __post_init__(self) -> None:
        for field in ("symbol", "base_asset", "quote_asset"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value.strip():
                raise ValidationError(field, value, "a non-empty string")
        if self.base_asset == self.quote_asset:
            raise ValidationError(
                "quote_asset", self.quote_asset, f"an asset other than base {self.base_asset!r}"
            )
        _positive_decimal("tick_size", self.tick_size)
        _positive_decimal("lot_size", self.lot_size)
        if (
            not isinstance(self.min_notional, Decimal)
            or not self.min_notional.is_finite()
            or self.min_notional < 0
        ):
            raise ValidationError("min_notional", self.min_notional, "a finite Decimal >= 0")
        if not isinstance(self.kind, InstrumentKind):
            raise ValidationError("kind", self.kind, "an InstrumentKind (spot or perpetual)")
        if (
            not isinstance(self.max_leverage, Decimal)
            or not self.max_leverage.is_finite()
            or self.max_leverage < 1
        ):
            raise ValidationError("max_leverage", self.max_leverage, "a finite Decimal >= 1")
        if self.kind is InstrumentKind.SPOT and self.max_leverage != 1:
            raise ValidationError("max_leverage", self.max_leverage, "1 for a spot instrument")

    @property
    def is_perpetual(self) -> bool:
        """True for a perpetual future (positions, leverage, reduce-only)."""
        return self.kind is InstrumentKind.PERPETUAL

    def round_price(
        self, price: Decimal, rounding: PriceRounding = PriceRounding.NEAREST
    ) -> Decimal:
        """Return `price` moved onto the tick grid (nearest tick unless told otherwise)."""
        _positive_decimal("price", price)
        ticks = (price / self.tick_size).to_integral_value(rounding=_ROUNDING_MODES[rounding])
        rounded = ticks * self.tick_size
        if rounded <= 0:
            # A positive price never rounds to zero: the smallest valid price is one tick.
            return self.tick_size
        return rounded

    def round_quantity(self, quantity: Decimal) -> Decimal:
        """Return `quantity` rounded down to whole lots (never more than asked; may be 0)."""
        if not isinstance(quantity, Decimal) or not quantity.is_finite() or quantity < 0:
            raise ValidationError("quantity", quantity, "a finite Decimal >= 0")
        lots = (quantity / self.lot_size).to_integral_value(rounding=ROUND_FLOOR)
        return lots * self.lot_size

    def validate_price(self, price: Decimal, field: str = "price") -> Decimal:
        """Return `price` if it is positive and on the tick grid; else raise ValidationError."""
        _positive_decimal(field, price)
        if price % self.tick_size != 0:
            raise ValidationError(
                field,
                price,
                f"a multiple of tick_size {self.tick_size} for {self.symbol}",
                symbol=self.symbol,
            )
        return price

    def validate_quantity(self, quantity: Decimal, field: str = "quantity") -> Decimal:
        """Return `quantity` if it is positive and a whole number of lots; else raise."""
        _positive_decimal(field, quantity)
        if quantity % self.lot_size != 0:
            raise ValidationError(
                field,
                quantity,
                f"a multiple of lot_size {self.lot_size} for {self.symbol}",
                symbol=self.symbol,
            )
        return quantity

    def validate_notional(self, price: Decimal, quantity: Decimal) -> Decimal:
        """Return price × quantity if it reaches `min_notional`; else raise ValidationError."""
        notional = price * quantity
        if notional < self.min_notional:
            raise ValidationError(
                "notional",
                notional,
                f">= min_notional {self.min_notional} {self.quote_asset} for {self.symbol}",
                symbol=self.symbol,
                price=price,
                quantity=quantity,
            )
        return notional

    def validate_leverage(self, leverage: Decimal) -> Decimal:
        """Return `leverage` if it is within 1..max_leverage; else raise ValidationError."""
        if (
            not isinstance(leverage, Decimal)
            or not leverage.is_finite()
            or not Decimal(1) <= leverage <= self.max_leverage
        ):
            raise ValidationError(
                "leverage",
                leverage,
                f"a Decimal from 1 to max_leverage {self.max_leverage} for {self.symbol}",
                symbol=self.symbol,
            )
        return leverage
