"""Trade proposals: what a strategy asks the desk to do, before any risk check or order.

A `TradeProposal` is a frozen value: a side and size on one symbol, how to enter (market or
limit), where the stop-loss and take-profit go, and at what leverage. Building one checks its
shape only (positive numbers, the stop below a long's entry and above a short's, the
take-profit the other way, leverage in range); whether the desk may take the trade is the
risk engine's question (`legato.trading.risk`), and whether the prices fit a venue's tick grid
is the instrument's.

A reduce-only proposal shrinks or closes an open position: it needs no stop-loss (it removes
risk, it adds none) and it is the only kind the desk accepts while trading is REDUCING.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TypeVar

from legato.kernel.errors import ValidationError
from legato.trading.orders import OrderSide
from legato.trading.positions import PositionSide

__all__ = ["MAX_PROPOSAL_LEVERAGE", "EntryType", "TradeProposal"]

# No venue we know of offers more than 125x; anything above is a typo, not a strategy.
MAX_PROPOSAL_LEVERAGE = Decimal(125)
_E = TypeVar("_E", bound=enum.Enum)


class EntryType(enum.Enum):
    """How the entry is placed: at once at the market, or resting at a limit price."""

    MARKET = "market"
    LIMIT = "limit"


def _finite_positive(field: str, value: object) -> Decimal:
    if not isinstance(value, Decimal) or not value.is_finite() or value <= 0:
        raise ValidationError(field, value, "a finite Decimal > 0")
    return value


def _text(field: str, value: object, *, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(field, value, "a non-empty string" + (" or None" if optional else ""))


@dataclass(frozen=True, slots=True)
class TradeProposal:
    """One trade a strategy wants: side, size, entry, stop-loss, take-profit and leverage.

    `entry_price` is the limit price of a LIMIT entry, and for a MARKET entry the price the
    decision was made at (the last price): the risk engine needs a price to size the trade
    either way. `stop_loss` and `take_profit` are trigger prices. `strategy_id` names who
    proposed it and `correlation_id` ties it to the decision (and the bus messages) behind it.
    """

    symbol: str
    side: OrderSide
    quantity: Decimal
    entry_price: Decimal
    stop_loss: Decimal | None
    take_profit: Decimal | None = None
    entry_type: EntryType = EntryType.MARKET
    leverage: Decimal = Decimal(1)
    reduce_only: bool = False
    strategy_id: str = "manual"
    correlation_id: str | None = None

    def __post_init__(self) -> None:
        _text("symbol", self.symbol, optional=False)
        if not isinstance(self.side, OrderSide):
            raise ValidationError("side", self.side, "OrderSide.BUY or OrderSide.SELL")
        if not isinstance(self.entry_type, EntryType):
            raise ValidationError("entry_type", self.entry_type, "EntryType.MARKET or LIMIT")
        if not isinstance(self.reduce_only, bool):
            raise ValidationError("reduce_only", self.reduce_only, "True or False")
        _finite_positive("quantity", self.quantity)
        _finite_positive("entry_price", self.entry_price)
        if (
            not isinstance(self.leverage, Decimal)
            or not self.leverage.is_finite()
            or not Decimal(1) <= self.leverage <= MAX_PROPOSAL_LEVERAGE
        ):
            raise ValidationError(
                "leverage", self.leverage, f"a Decimal from 1 to {MAX_PROPOSAL_LEVERAGE}"
            )
        _text("strategy_id", self.strategy_id, optional=False)
        _text("correlation_id", self.correlation_id, optional=True)
        self._check_stop_loss()
        self._check_take_profit()

    def _check_stop_loss(self) -> None:
        if self.stop_loss is None:
            if not self.reduce_only:
                raise ValidationError(
                    "stop_loss", None, "a stop-loss price (only reduce-only proposals may omit it)"
                )
            return
        _finite_positive("stop_loss", self.stop_loss)
        if self.side is OrderSide.BUY and self.stop_loss >= self.entry_price:
            raise ValidationError(
                "stop_loss", self.stop_loss, f"below the entry price {self.entry_price} for a buy"
            )
        if self.side is OrderSide.SELL and self.stop_loss <= self.entry_price:
            raise ValidationError(
                "stop_loss", self.stop_loss, f"above the entry price {self.entry_price} for a sell"
            )

    def _check_take_profit(self) -> None:
        if self.take_profit is None:
            return
        _finite_positive("take_profit", self.take_profit)
        if self.side is OrderSide.BUY and self.take_profit <= self.entry_price:
            raise ValidationError(
                "take_profit",
                self.take_profit,
                f"above the entry price {self.entry_price} for a buy",
            )
        if self.side is OrderSide.SELL and self.take_profit >= self.entry_price:
            raise ValidationError(
                "take_profit",
                self.take_profit,
                f"below the entry price {self.entry_price} for a sell",
            )

    @property
    def position_side(self) -> PositionSide:
        """The side of the position this proposal opens (or, reduce-only, the one it reduces).

        A reduce-only buy reduces a SHORT; any other buy opens or grows a LONG.
        """
        opened = PositionSide.opened_by(self.side)
        if not self.reduce_only:
            return opened
        return PositionSide.SHORT if opened is PositionSide.LONG else PositionSide.LONG

    @property
    def notional(self) -> Decimal:
        """quantity × entry price, in the quote asset."""
        return self.quantity * self.entry_price

    @property
    def stop_distance(self) -> Decimal | None:
        """How far the stop-loss is from the entry, in price (None without a stop-loss)."""
        if self.stop_loss is None:
            return None
        return abs(self.entry_price - self.stop_loss)

    @property
    def risk_amount(self) -> Decimal | None:
        """What hitting the stop-loss loses, quantity × stop distance (fees not included)."""
        distance = self.stop_distance
        return None if distance is None else distance * self.quantity

    @property
    def reward_to_risk(self) -> Decimal | None:
        """Distance to the take-profit over distance to the stop (None if either is missing)."""
        distance = self.stop_distance
        if distance is None or self.take_profit is None:
            return None
        return abs(self.take_profit - self.entry_price) / distance

    def with_quantity(self, quantity: Decimal) -> TradeProposal:
        """Return the same proposal for `quantity` (validated like a new one)."""
        return dataclasses.replace(self, quantity=quantity)

    def as_dict(self) -> dict[str, str | bool | None]:
        """Return the proposal as JSON-ready text fields (Decimals as exact strings).

        This is the form a durable workflow journals; `from_dict` reads it back unchanged.
        """
        return {
            "symbol": self.symbol,
            "side": self.side.value,
            "quantity": str(self.quantity),
            "entry_price": str(self.entry_price),
            "stop_loss": None if self.stop_loss is None else str(self.stop_loss),
            "take_profit": None if self.take_profit is None else str(self.take_profit),
            "entry_type": self.entry_type.value,
            "leverage": str(self.leverage),
            "reduce_only": self.reduce_only,
            "strategy_id": self.strategy_id,
            "correlation_id": self.correlation_id,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> TradeProposal:
        """Build a proposal from `as_dict` output; raise ValidationError on any bad field."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValidationError("proposal", unknown, f"only the fields {sorted(known)}")
        return cls(
            symbol=_required_text(data, "symbol"),
            side=_enum(OrderSide, data, "side"),
            quantity=_decimal(data, "quantity"),
            entry_price=_decimal(data, "entry_price"),
            stop_loss=_optional_decimal(data, "stop_loss"),
            take_profit=_optional_decimal(data, "take_profit"),
            entry_type=_enum(EntryType, data, "entry_type", EntryType.MARKET),
            leverage=_decimal(data, "leverage", Decimal(1)),
            reduce_only=_bool(data, "reduce_only"),
            strategy_id=_required_text(data, "strategy_id", "manual"),
            correlation_id=_optional_text(data, "correlation_id"),
        )


def _required_text(data: Mapping[str, object], field: str, default: str | None = None) -> str:
    value = data.get(field, default)
    if not isinstance(value, str):
        raise ValidationError(field, value, "a string")
    return value


def _optional_text(data: Mapping[str, object], field: str) -> str | None:
    value = data.get(field)
    if value is not None and not isinstance(value, str):
        raise ValidationError(field, value, "a string or None")
    return value


def _bool(data: Mapping[str, object], field: str) -> bool:
    value = data.get(field, False)
    if not isinstance(value, bool):
        raise ValidationError(field, value, "true or false")
    return value


def _decimal(data: Mapping[str, object], field: str, default: Decimal | None = None) -> Decimal:
    if field not in data and default is not None:
        return default
    value = data.get(field)
    # Floats are refused on purpose: 0.1 as a float is not 0.1, and money must be exact.
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ValidationError(field, value, "a decimal number as a string, e.g. '0.015'")
    try:
        return Decimal(value)
    except InvalidOperation:
        raise ValidationError(field, value, "a decimal number as a string") from None


def _optional_decimal(data: Mapping[str, object], field: str) -> Decimal | None:
    if data.get(field) is None:
        return None
    return _decimal(data, field)


def _enum(kind: type[_E], data: Mapping[str, object], field: str, default: _E | None = None) -> _E:
    if field not in data and default is not None:
        return default
    value = data.get(field)
    try:
        return kind(value)
    except ValueError:
        accepted = ", ".join(repr(member.value) for member in kind)
        raise ValidationError(field, value, f"one of {accepted}") from None
