"""Fills: one execution of (part of) an order, with its fee and who provided the liquidity."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from legato.kernel.errors import ValidationError
from legato.trading.orders import OrderSide

__all__ = ["Fill", "Liquidity"]


class Liquidity(enum.Enum):
    """MAKER: the order rested on the book and was hit. TAKER: the order hit the book."""

    MAKER = "maker"
    TAKER = "taker"


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution: `quantity` of `symbol` at `price`, paying `fee` in `fee_asset`.

    `fee` is exact: price × quantity × the fee rate, as a Decimal, never rounded.
    """

    fill_id: str
    client_order_id: str
    venue_order_id: str
    symbol: str
    side: OrderSide
    quantity: Decimal
    price: Decimal
    fee: Decimal
    fee_asset: str
    liquidity: Liquidity
    timestamp: datetime

    def __post_init__(self) -> None:
        for field in ("quantity", "price"):
            value = getattr(self, field)
            if not isinstance(value, Decimal) or not value.is_finite() or value <= 0:
                raise ValidationError(field, value, "a finite Decimal > 0")
        if not isinstance(self.fee, Decimal) or not self.fee.is_finite():
            # A negative fee is a maker rebate, which some venues pay.
            raise ValidationError("fee", self.fee, "a finite Decimal (negative for a rebate)")
        if not isinstance(self.liquidity, Liquidity):
            raise ValidationError("liquidity", self.liquidity, "Liquidity.MAKER or TAKER")
        if not isinstance(self.timestamp, datetime) or self.timestamp.utcoffset() is None:
            raise ValidationError("timestamp", self.timestamp, "an aware UTC datetime")

    @property
    def notional(self) -> Decimal:
        """price × quantity, in the quote asset."""
        return self.price * self.quantity
