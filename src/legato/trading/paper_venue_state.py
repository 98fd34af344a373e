"""The paper venue's durable state: what a real exchange would still hold after our restart.

A real venue keeps its accounts, resting orders and positions while the desk is down; the
paper venue lives in memory, so without help a restarted desk meets an empty exchange.
`PaperVenueState` is everything the venue needs to carry on exactly where it stopped:
holdings, every order it knows (open ones in arrival order, with their reservations and how
many bars each has seen), open and closed positions, the fills, the last price per symbol,
and the id counters (so no venue order id or fill id is ever issued twice).

`PaperVenue.state()` takes it, `PaperVenue.restore(state)` puts it back;
`to_json()` / `from_json()` carry it through the store (`TradingLedger.save_paper_venue`
and `TradingLedger.paper_venue_state`). Rate-limit budgets, bans and injected faults are
not part of it: they are about this process's calls, not about the account.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from legato.kernel.errors import ValidationError
from legato.trading.fills import Fill
from legato.trading.orders import Order
from legato.trading.positions import Position
from legato.trading.venue_wire import from_wire, to_wire

__all__ = ["PaperVenueState"]

_FORMAT = 1


@dataclass(frozen=True, slots=True)
class PaperVenueState:
    """A snapshot of one paper venue's account and book, enough to resume it exactly.

    `orders` holds every order the venue knows (finished ones too: they can still be
    queried), `open_order_ids` the working ones in arrival order (the matching order of
    ties). `reservations` maps an open order to the asset and amount per unit it holds back;
    `bars_seen` how many bars each open order has been matched against (a limit order is a
    taker only on its first). `order_sequence` and `fill_sequence` are the last ids issued.
    `saved_at` is when the snapshot was taken (the venue's clock). `last_bars` holds the
    timestamp of the last bar matched per symbol: a desk replaying a recorded file resumes
    after it (a state saved before it was kept reads as none).
    """

    name: str
    saved_at: datetime
    holdings: Mapping[str, Decimal]
    orders: tuple[Order, ...]
    open_order_ids: tuple[str, ...]
    reservations: Mapping[str, tuple[str, Decimal]]
    bars_seen: Mapping[str, int]
    positions: tuple[Position, ...]
    closed_positions: tuple[Position, ...]
    fills: tuple[Fill, ...]
    last_prices: Mapping[str, Decimal]
    order_sequence: int
    fill_sequence: int
    last_bars: Mapping[str, datetime] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValidationError("name", self.name, "the venue's non-empty name")
        if not isinstance(self.saved_at, datetime) or self.saved_at.utcoffset() is None:
            raise ValidationError("saved_at", self.saved_at, "an aware UTC datetime")
        for symbol, at in self.last_bars.items():
            if not isinstance(at, datetime) or at.utcoffset() is None:
                raise ValidationError(f"last_bars[{symbol!r}]", at, "an aware UTC datetime")
        known = {order.client_order_id for order in self.orders}
        missing = [cid for cid in self.open_order_ids if cid not in known]
        if missing:
            raise ValidationError("open_order_ids", missing, "ids of orders in `orders`")
        for name in ("order_sequence", "fill_sequence"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValidationError(name, value, "an integer >= 0")

    def to_json(self) -> str:
        """The state as JSON text: Decimals as exact strings, times in ISO 8601."""
        return json.dumps(
            {
                "format": _FORMAT,
                "name": self.name,
                "saved_at": self.saved_at.isoformat(),
                "holdings": {asset: str(amount) for asset, amount in self.holdings.items()},
                "orders": [to_wire(order) for order in self.orders],
                "open_order_ids": list(self.open_order_ids),
                "reservations": {
                    cid: [asset, str(per_unit)]
                    for cid, (asset, per_unit) in self.reservations.items()
                },
                "bars_seen": dict(self.bars_seen),
                "positions": [to_wire(position) for position in self.positions],
                "closed_positions": [to_wire(position) for position in self.closed_positions],
                "fills": [to_wire(fill) for fill in self.fills],
                "last_prices": {symbol: str(price) for symbol, price in self.last_prices.items()},
                "order_sequence": self.order_sequence,
                "fill_sequence": self.fill_sequence,
                "last_bars": {symbol: at.isoformat() for symbol, at in self.last_bars.items()},
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> PaperVenueState:
        """Read a state written by `to_json`; raise ValidationError for anything else."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as error:
            raise ValidationError(
                "state", text[:80], f"JSON from PaperVenueState ({error})"
            ) from None
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValidationError("state", str(text)[:80], f"a PaperVenueState of format {_FORMAT}")
        try:
            return cls(
                name=data["name"],
                saved_at=datetime.fromisoformat(data["saved_at"]),
                holdings={asset: Decimal(amount) for asset, amount in data["holdings"].items()},
                orders=tuple(from_wire(Order, item) for item in data["orders"]),
                open_order_ids=tuple(data["open_order_ids"]),
                reservations={
                    cid: (asset, Decimal(per_unit))
                    for cid, (asset, per_unit) in data["reservations"].items()
                },
                bars_seen={cid: int(count) for cid, count in data["bars_seen"].items()},
                positions=tuple(from_wire(Position, item) for item in data["positions"]),
                closed_positions=tuple(
                    from_wire(Position, item) for item in data["closed_positions"]
                ),
                fills=tuple(from_wire(Fill, item) for item in data["fills"]),
                last_prices={
                    symbol: Decimal(price) for symbol, price in data["last_prices"].items()
                },
                order_sequence=data["order_sequence"],
                fill_sequence=data["fill_sequence"],
                last_bars={
                    symbol: datetime.fromisoformat(at)
                    for symbol, at in data.get("last_bars", {}).items()
                },
            )
        except (KeyError, TypeError, ValueError, ArithmeticError) as error:
            raise ValidationError(
                "state", str(text)[:80], f"a complete PaperVenueState ({error!r})"
            ) from None
