"""The `Venue` protocol: what the desk needs from any exchange, paper or live.

Every method is a remote call and fails with the kernel's error taxonomy (see
`legato.trading.errors` for the trading-specific classes):

- `OrderRejected` (PermanentError): the venue refused; sending the same again fails again.
  `DuplicateClientOrderId` is the special case "that client id already exists": an earlier
  send did arrive.
- `RateLimitedError` with `retry_after`: nothing happened; wait that long. `VenueBanned` is a
  longer enforced pause after repeated over-budget calls.
- `TransientError`: nothing happened; retrying is safe.
- `UnknownOutcomeError` (from `place_order` and `cancel_order`): the request may have taken
  effect. Never resend: query with `get_order(client_order_id=...)`.
- `OrderNotFound`: the venue does not show the order (perhaps not yet).

Implementations pass every call, queries included, through their rate-limit group, so a
caller cannot exceed the venue's budget by polling.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

from legato.trading.balances import Balance
from legato.trading.fills import Fill
from legato.trading.instruments import Instrument
from legato.trading.market_data import Bar
from legato.trading.orders import Order
from legato.trading.positions import Position

__all__ = ["Venue"]


@runtime_checkable
class Venue(Protocol):
    """An exchange account: orders, fills, positions, balances and market data."""

    @property
    def name(self) -> str:
        """A short name for logs and metrics ("paper", "binance")."""
        ...

    def instrument(self, symbol: str) -> Instrument:
        """Return the instrument traded as `symbol`; raise ValidationError if unknown."""
        ...

    async def place_order(self, order: Order) -> Order:
        """Send a NEW (or UNKNOWN) order; return the venue's view of it (ACCEPTED or later)."""
        ...

    async def cancel_order(
        self, *, client_order_id: str | None = None, venue_order_id: str | None = None
    ) -> Order:
        """Cancel an open order by either id; return it as CANCELLED."""
        ...

    async def get_order(
        self, *, client_order_id: str | None = None, venue_order_id: str | None = None
    ) -> Order:
        """Return the venue's current view of one order; raise OrderNotFound if unseen."""
        ...

    async def open_orders(self, symbol: str | None = None) -> Sequence[Order]:
        """Return the open orders, of one symbol or all, oldest first."""
        ...

    async def fills(self, symbol: str | None = None) -> Sequence[Fill]:
        """Return the account's fills, of one symbol or all, oldest first."""
        ...

    async def positions(self) -> Sequence[Position]:
        """Return the open positions (perpetual instruments), one per symbol."""
        ...

    async def balances(self) -> Mapping[str, Balance]:
        """Return the account's balances by asset."""
        ...

    def subscribe(self, symbol: str | None = None) -> AsyncIterator[Bar]:
        """Stream market data bars (of one symbol or all) as the venue sees them."""
        ...
