"""Fees: what a venue charges per fill, by who provided the liquidity."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from legato.kernel.errors import ValidationError
from legato.trading.fills import Liquidity

__all__ = ["FeeSchedule"]


@dataclass(frozen=True, slots=True)
class FeeSchedule:
    """Maker and taker fee rates, as fractions of the fill's notional (0.0004 = 4 bps).

    The fee on a fill is exactly price × quantity × rate, as a Decimal, never rounded; a
    negative maker rate is a rebate.
    """

    maker_rate: Decimal = Decimal("0.0002")
    taker_rate: Decimal = Decimal("0.0004")

    def __post_init__(self) -> None:
        for field in ("maker_rate", "taker_rate"):
            value = getattr(self, field)
            if not isinstance(value, Decimal) or not value.is_finite() or not -1 < value < 1:
                raise ValidationError(field, value, "a Decimal fraction in (-1, 1), e.g. 0.0004")
        if self.taker_rate < 0:
            raise ValidationError("taker_rate", self.taker_rate, "a Decimal >= 0")

    def rate(self, liquidity: Liquidity) -> Decimal:
        """The rate charged to a fill with this liquidity."""
        return self.maker_rate if liquidity is Liquidity.MAKER else self.taker_rate

    def fee(self, price: Decimal, quantity: Decimal, liquidity: Liquidity) -> Decimal:
        """The exact fee on a fill of `quantity` at `price`, in the quote asset."""
        return price * quantity * self.rate(liquidity)
