"""The matching rules of the paper venue: where inside a bar an order fills, at what price.

Pure functions on values, so every rule can be tested alone and property-tested:

- `intrabar_path` decides the order in which a bar's prices were touched. A bar only says
  open, high, low and close; the path fixes it to open → one extreme → the other → close.
  `IntrabarPath.ADVERSE_FIRST` (the default) assumes the price first went against the open
  position (a long sees the low first, a short the high first), so when a bar touches both a
  stop-loss and a take-profit the stop-loss fills: the conservative reading. With no position
  (and always under `BAR_DIRECTION`), an up bar goes open → low → high → close and a down bar
  open → high → low → close.
- `match_order` walks one order along that path and returns an `Execution`: when on the path
  it happened (so several orders can be applied in the order the market reached them), the
  fill price and quantity, the liquidity, whether a stop triggered, and whether the rest of
  the order expires (IOC, FOK).

docs/concepts/paper-venue.md states every rule for traders.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal

from legato.kernel.errors import ValidationError
from legato.trading.fees import FeeSchedule
from legato.trading.fills import Liquidity
from legato.trading.market_data import Bar
from legato.trading.orders import Order, OrderSide, OrderType, TimeInForce
from legato.trading.positions import PositionSide

__all__ = [
    "Execution",
    "IntrabarPath",
    "MatchingRules",
    "intrabar_path",
    "match_order",
    "slipped_price",
]

_BPS = Decimal(10_000)
_ZERO = Decimal(0)


class IntrabarPath(enum.Enum):
    """How the engine orders a bar's high and low (see the module docstring)."""

    ADVERSE_FIRST = "adverse_first"
    BAR_DIRECTION = "bar_direction"


@dataclass(frozen=True, slots=True)
class MatchingRules:
    """How the paper venue fills orders against bars.

    `slippage_bps`: market-type fills (market orders, triggered stops and take-profits) pay
    this many basis points beyond the reference price, never beyond the bar's range.
    `participation`: one order fills at most this share of a bar's volume; the rest waits for
    later bars (a partial fill). `fees`: maker and taker rates. `intrabar`: the path rule.
    """

    slippage_bps: Decimal = Decimal(5)
    participation: Decimal = Decimal("0.25")
    fees: FeeSchedule = field(default_factory=FeeSchedule)
    intrabar: IntrabarPath = IntrabarPath.ADVERSE_FIRST

    def __post_init__(self) -> None:
        if (
            not isinstance(self.slippage_bps, Decimal)
            or not self.slippage_bps.is_finite()
            or not 0 <= self.slippage_bps < _BPS
        ):
            raise ValidationError("slippage_bps", self.slippage_bps, "a Decimal in [0, 10000)")
        if (
            not isinstance(self.participation, Decimal)
            or not self.participation.is_finite()
            or not 0 < self.participation <= 1
        ):
            raise ValidationError("participation", self.participation, "a Decimal in (0, 1]")
        if not isinstance(self.intrabar, IntrabarPath):
            raise ValidationError("intrabar", self.intrabar, "an IntrabarPath")


@dataclass(frozen=True, slots=True)
class Execution:
    """What happens to one order in one bar.

    `at` is the position on the intrabar path (0 = the open, 3 = the close; fractions in
    between), for applying several orders in the order the market reached them. `quantity`
    may be 0 (a stop triggered but the bar had no volume to give, or a FOK that could not be
    filled whole). `triggered` is True when a stop or take-profit triggered in this bar.
    `expire_rest` is True when whatever is left after this fill expires (IOC, FOK).
    """

    at: Decimal
    price: Decimal
    quantity: Decimal
    liquidity: Liquidity
    triggered: bool = False
    expire_rest: bool = False


def intrabar_path(
    bar: Bar, rule: IntrabarPath, position: PositionSide | None = None
) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    """Return the four prices of `bar` in the order the engine assumes they were touched."""
    low_first = bar.is_up
    if rule is IntrabarPath.ADVERSE_FIRST and position is not None:
        low_first = position is PositionSide.LONG
    if low_first:
        return (bar.open, bar.low, bar.high, bar.close)
    return (bar.open, bar.high, bar.low, bar.close)


def slipped_price(reference: Decimal, side: OrderSide, bar: Bar, slippage_bps: Decimal) -> Decimal:
    """Return a market-type fill price: `reference` moved against the taker, kept in the bar."""
    if side is OrderSide.BUY:
        return min(reference * (1 + slippage_bps / _BPS), bar.high)
    return max(reference * (1 - slippage_bps / _BPS), bar.low)


def _first_reach(
    path: Sequence[Decimal],
    level: Decimal,
    rising: bool,
    start: Decimal = Decimal(0),
    start_price: Decimal | None = None,
) -> tuple[Decimal, Decimal] | None:
    """Where the path first reaches `level` (>= if `rising`, else <=) from `start`.

    Returns (position on the path, price there). If the price at `start` is already past the
    level (a gap), that is the answer, at the better-than-level price.
    """

    def reached(price: Decimal) -> bool:
        return price >= level if rising else price <= level

    segment = int(start)
    current = start_price if start_price is not None else path[segment]
    if reached(current):
        return start, current
    position = start
    for index in range(segment, len(path) - 1):
        begin = current if index == segment else path[index]
        end = path[index + 1]
        if reached(end) and begin != end:
            if index == segment:
                # Interpolate inside the remaining part of the starting segment.
                done = position - index
                fraction = done + (1 - done) * (level - begin) / (end - begin)
            else:
                fraction = (level - begin) / (end - begin)
            return Decimal(index) + fraction, level
    return None


def _trigger_rises(order: Order) -> bool:
    """True when the order triggers on a rise to `stop_price`, False on a fall."""
    if order.type is OrderType.TAKE_PROFIT:
        # A take-profit sell closes a long above the market; a buy closes a short below it.
        return order.side is OrderSide.SELL
    # A stop buy (closing a short, or breaking out) triggers on a rise; a stop sell on a fall.
    return order.side is OrderSide.BUY


def trigger_level(order: Order) -> tuple[Decimal, bool] | None:
    """The trigger of an order still waiting for one: (stop price, True if on a rise).

    None for an order that waits for no trigger (or was triggered already). A bar whose
    high stays below a rising trigger (or whose low stays above a falling one) does not
    reach it: `match_order` returns None for it, and a venue may skip the call.
    """
    if order.triggered_at is not None or not order.type.needs_stop_price:
        return None
    stop = order.stop_price
    assert stop is not None  # guaranteed by Order's own validation
    return stop, _trigger_rises(order)


def match_order(
    order: Order,
    bar: Bar,
    path: Sequence[Decimal],
    rules: MatchingRules,
    lot_size: Decimal,
    *,
    fresh: bool,
) -> Execution | None:
    """Return what `order` does in `bar`, walking `path`; None when nothing happens.

    `fresh` is True on the first bar after the order arrived: a limit order that is already
    marketable then fills at once as a taker; later bars fill it as a maker. A STOP,
    STOP_LIMIT or TAKE_PROFIT order whose `triggered_at` is None first waits for its trigger.
    Quantities are capped at `rules.participation` × the bar's volume, in whole lots.
    """
    start = _ZERO
    start_price: Decimal | None = None
    triggered_now = False
    first_chance = fresh
    if order.type.needs_stop_price and order.triggered_at is None:
        stop = order.stop_price
        assert stop is not None  # guaranteed by Order's own validation
        rising = _trigger_rises(order)
        # The path only visits the bar's prices: a trigger beyond the high (or below the low)
        # is not reached. Most bars of a working stop-loss or take-profit end here.
        if (bar.high < stop) if rising else (bar.low > stop):
            return None
        hit = _first_reach(path, stop, rising)
        if hit is None:
            return None
        start, start_price = hit
        triggered_now = True
        first_chance = True
    cap = (rules.participation * bar.volume / lot_size).to_integral_value(ROUND_FLOOR) * lot_size
    available = min(order.remaining_quantity, cap)

    if order.type in (OrderType.MARKET, OrderType.STOP, OrderType.TAKE_PROFIT):
        reference = start_price if start_price is not None else path[0]
        price = slipped_price(reference, order.side, bar, rules.slippage_bps)
        return _finish(order, start, price, available, Liquidity.TAKER, triggered_now, first_chance)

    assert order.price is not None  # LIMIT and STOP_LIMIT always carry a limit price
    hit = _first_reach(path, order.price, order.side is OrderSide.SELL, start, start_price)
    if hit is None:
        if first_chance and order.time_in_force is not TimeInForce.GTC:
            return Execution(
                start, order.price, Decimal(0), Liquidity.TAKER, triggered_now, expire_rest=True
            )
        if triggered_now:
            return Execution(start, order.price, Decimal(0), Liquidity.MAKER, triggered=True)
        return None
    at, reached_price = hit
    # Marketable on arrival (or on its trigger) means it took liquidity; else it rested.
    taker = first_chance and at == start
    liquidity = Liquidity.TAKER if taker else Liquidity.MAKER
    # Reached mid-bar, the price touched the limit: the fill is at the limit. Already past it
    # where the walk starts (a gap, or marketable on arrival), the fill is at that better
    # price, which keeps every fill inside the bar's range.
    price = reached_price if at == start else order.price
    return _finish(order, at, price, available, liquidity, triggered_now, first_chance)


def _finish(
    order: Order,
    at: Decimal,
    price: Decimal,
    available: Decimal,
    liquidity: Liquidity,
    triggered: bool,
    first_chance: bool,
) -> Execution:
    tif = order.time_in_force
    if first_chance and tif is TimeInForce.FOK and available < order.remaining_quantity:
        return Execution(at, price, Decimal(0), liquidity, triggered, expire_rest=True)
    expire = first_chance and tif is not TimeInForce.GTC
    return Execution(at, price, available, liquidity, triggered, expire_rest=expire)
