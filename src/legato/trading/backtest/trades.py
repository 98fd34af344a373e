"""The trade book: a backtest's fills folded into closed trades and an equity curve.

`TradeBook` replays fills the way a perpetual venue nets them (one signed position per
symbol, entry price re-averaged on increases, PnL realised on reductions) and keeps the cash
side: starting equity plus realised PnL minus fees. A round trip from flat back to flat is one
`ClosedTrade`; a fill that crosses zero closes the trade and opens the next one with the rest.
Marking the open position at a bar's close gives one `EquityPoint` per bar.

Everything is Decimal and exact, so a report's PnL can be recomputed from its fills to the
last digit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from legato.kernel.errors import ValidationError
from legato.trading.fills import Fill
from legato.trading.ledger import LedgerOrder, OrderRole
from legato.trading.orders import OrderSide
from legato.trading.positions import PositionSide

__all__ = [
    "ClosedTrade",
    "EntryFill",
    "EquityPoint",
    "Refusal",
    "TradeBook",
    "entry_fills",
    "exit_reason",
    "refusal_of",
]

_ZERO = Decimal(0)
# Client order id suffixes used by both the research executor and the desk's execution manager
# (`bracket_order_ids`): the role of the order that ended a trade.
_EXIT_REASONS = {"SL": "stop_loss", "TP": "take_profit", "X": "close"}


def exit_reason(client_order_id: str) -> str:
    """Name why a trade ended from its closing order's id: stop_loss, take_profit or close."""
    suffix = client_order_id.rsplit("-", 1)[-1].rstrip("0123456789")
    return _EXIT_REASONS.get(suffix, "exit")


@dataclass(frozen=True, slots=True)
class Refusal:
    """A proposal the risk engine refused: when, the rule that refused it, and its sentence.

    `code` is the rule's `ReasonCode` value (the first reason that rejects); `message` the
    sentence the engine gave the trader, with the figures of that moment.
    """

    at: datetime
    code: str
    message: str


def refusal_of(verdict: Mapping[str, Any], at: datetime) -> Refusal:
    """The refusal a risk verdict (`RiskDecision.as_dict()`, as the desk stores it) stands for.

    Its rule is the first reason that rejects (else the first reason given).
    """
    reasons = list(verdict.get("reasons") or ())
    rule = next((r for r in reasons if r.get("effect") == "reject"), None)
    if rule is None and reasons:
        rule = reasons[0]
    if rule is None:
        return Refusal(at, str(verdict.get("outcome", "rejected")), "refused without a reason")
    return Refusal(at, str(rule["code"]), str(rule["message"]))


@dataclass(frozen=True, slots=True)
class EntryFill:
    """An entry order the run placed: when, the quantity it asked for and the quantity filled.

    On a thin market the paper venue fills an order only up to its share of each bar's volume
    (`MatchingRules.participation`); the execution manager protects what filled and cancels
    the rest, so a position can be a sliver of the size the proposal asked for.
    """

    at: datetime
    asked: Decimal
    filled: Decimal


def entry_fills(records: Iterable[LedgerOrder]) -> tuple[EntryFill, ...]:
    """The entry orders among `records` (a ledger's orders), in the order they were placed."""
    placed = sorted(
        (order.created_at, order.client_order_id, order.quantity, order.filled_quantity)
        for record in records
        if record.role is OrderRole.ENTRY and (order := record.order).created_at is not None
    )
    return tuple(EntryFill(at, asked, filled) for at, _, asked, filled in placed)


@dataclass(frozen=True, slots=True)
class ClosedTrade:
    """One round trip: a position opened from flat and closed back to flat.

    `entry_price` and `exit_price` are the quantity-weighted averages of the opening and the
    closing fills. `pnl` is the price PnL, (exit - entry) × quantity for a long and the
    opposite for a short; `fees` are every fill's fees; `net_pnl` is `pnl - fees`.
    """

    symbol: str
    side: PositionSide
    quantity: Decimal
    entry_time: datetime
    entry_price: Decimal
    exit_time: datetime
    exit_price: Decimal
    fees: Decimal
    pnl: Decimal
    exit_reason: str

    @property
    def net_pnl(self) -> Decimal:
        """Price PnL minus fees, in the quote asset."""
        return self.pnl - self.fees

    @property
    def return_fraction(self) -> Decimal:
        """The price move captured, as a fraction of the entry (0.04 for +4%), before fees."""
        return self.pnl / (self.entry_price * self.quantity)


@dataclass(frozen=True, slots=True)
class EquityPoint:
    """Account equity at a bar: cash plus the open position marked at the bar's close.

    `timestamp` is the bar's own timestamp (its open); `position` is the signed quantity held
    after the bar (positive long, negative short, zero flat).
    """

    timestamp: datetime
    equity: Decimal
    position: Decimal


# `TradeBook.point` makes one point per bar: it sets the slots through their descriptors,
# without the frozen `__init__`'s `object.__setattr__` per field (a third of the point's cost).
_POINT_SLOTS: tuple[Callable[[EquityPoint, object], None], ...] = tuple(
    EquityPoint.__dict__[name].__set__ for name in ("timestamp", "equity", "position")
)


class TradeBook:
    """Folds fills of one symbol into closed trades, cash and a signed position."""

    __slots__ = (
        "_cash",
        "_closing_cost",
        "_closing_quantity",
        "_entry_price",
        "_entry_time",
        "_fees",
        "_pnl",
        "_position",
        "_symbol",
        "trades",
    )

    def __init__(self, symbol: str, initial_equity: Decimal) -> None:
        if not isinstance(initial_equity, Decimal) or not initial_equity.is_finite():
            raise ValidationError("initial_equity", initial_equity, "a finite Decimal")
        self._symbol = symbol
        self._cash = initial_equity
        self._position = _ZERO
        self._entry_price = _ZERO
        self._entry_time: datetime | None = None
        self._closing_quantity = _ZERO
        self._closing_cost = _ZERO
        self._fees = _ZERO
        self._pnl = _ZERO
        self.trades: list[ClosedTrade] = []

    @property
    def position(self) -> Decimal:
        """The signed quantity held: positive long, negative short, zero flat."""
        return self._position

    @property
    def entry_price(self) -> Decimal:
        """The average entry price of the open position (0 when flat)."""
        return self._entry_price

    @property
    def cash(self) -> Decimal:
        """Starting equity plus realised PnL minus fees paid."""
        return self._cash

    def equity(self, mark: Decimal) -> Decimal:
        """Cash plus the open position valued at `mark`."""
        if not self._position:
            return self._cash
        return self._cash + (mark - self._entry_price) * self._position

    def point(self, timestamp: datetime, mark: Decimal) -> EquityPoint:
        """The equity point of a bar at `timestamp` that closed at `mark` (its equity, position)."""
        position = self._position
        equity = self._cash + (mark - self._entry_price) * position if position else self._cash
        point: EquityPoint = object.__new__(EquityPoint)
        put_timestamp, put_equity, put_position = _POINT_SLOTS
        put_timestamp(point, timestamp)
        put_equity(point, equity)
        put_position(point, position)
        return point

    def apply(self, fill: Fill) -> ClosedTrade | None:
        """Book one fill; return the trade it closed, if it brought the position to flat."""
        if fill.symbol != self._symbol:
            raise ValidationError("fill.symbol", fill.symbol, f"{self._symbol!r}")
        signed = fill.quantity if fill.side is OrderSide.BUY else -fill.quantity
        self._cash -= fill.fee
        position = self._position
        if not position or (position > 0) == (signed > 0):
            self._open_or_add(fill, signed)
            return None
        closing = min(fill.quantity, abs(position))
        # The fee is split pro rata when one fill both closes a trade and opens the next.
        closing_fee = fill.fee * closing / fill.quantity
        pnl = (fill.price - self._entry_price) * closing * (1 if position > 0 else -1)
        self._cash += pnl
        self._pnl += pnl
        self._fees += closing_fee
        self._closing_quantity += closing
        self._closing_cost += fill.price * closing
        self._position = position + (closing if position < 0 else -closing)
        if self._position:
            return None
        trade = self._close(fill)
        rest = fill.quantity - closing
        if rest:
            opening = Fill(
                fill_id=fill.fill_id,
                client_order_id=fill.client_order_id,
                venue_order_id=fill.venue_order_id,
                symbol=fill.symbol,
                side=fill.side,
                quantity=rest,
                price=fill.price,
                fee=fill.fee - closing_fee,
                fee_asset=fill.fee_asset,
                liquidity=fill.liquidity,
                timestamp=fill.timestamp,
            )
            self._cash += opening.fee  # charged once above already
            self.apply(opening)
        return trade

    def _open_or_add(self, fill: Fill, signed: Decimal) -> None:
        if not self._position:
            self._entry_time = fill.timestamp
            self._fees = _ZERO
            self._pnl = _ZERO
            self._closing_quantity = _ZERO
            self._closing_cost = _ZERO
        total = abs(self._position) + fill.quantity
        self._entry_price = (
            self._entry_price * abs(self._position) + fill.price * fill.quantity
        ) / (total)
        self._fees += fill.fee
        self._position += signed

    def _close(self, fill: Fill) -> ClosedTrade:
        assert self._entry_time is not None  # set by the fill that opened the position
        side = PositionSide.LONG if fill.side is OrderSide.SELL else PositionSide.SHORT
        trade = ClosedTrade(
            symbol=self._symbol,
            side=side,
            quantity=self._closing_quantity,
            entry_time=self._entry_time,
            entry_price=self._entry_price,
            exit_time=fill.timestamp,
            exit_price=self._closing_cost / self._closing_quantity,
            fees=self._fees,
            pnl=self._pnl,
            exit_reason=exit_reason(fill.client_order_id),
        )
        self.trades.append(trade)
        self._entry_price = _ZERO
        self._entry_time = None
        return trade
