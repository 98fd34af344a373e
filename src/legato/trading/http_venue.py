"""`HttpVenue`: a `Venue` over HTTP, and the template for every live venue adapter.

It speaks the paper exchange's JSON API (`legato.trading.paper_exchange`, wire form in
`legato.trading.venue_wire`), so the desk can trade against a venue in another process, as
it would against a real exchange. An adapter for a real exchange keeps this shape and
changes only the request building and the answer parsing. What it must keep:

1. **Every call passes the client-side rate limits first.** One `RateLimitGroup` with the
   venue's pools ("orders" for placing and cancelling, "general" for everything; an order
   call counts in both), built from the budgets the venue publishes unless given. A 429 (or
   a ban) drains the pools for its Retry-After, so no caller can hammer a venue that said
   "slow down", polling included.
2. **Errors map onto the taxonomy, by what the caller may safely do next**:

       connection refused, connect or pool timeout   TransientError / DeadlineExceeded:
                                                      nothing was sent
       timeout or dropped connection after sending   UnknownOutcomeError for place_order and
                                                      cancel_order (query by client order
                                                      id, never resend); DeadlineExceeded or
                                                      TransientError for queries
       429 / 418 with Retry-After                    RateLimitedError / VenueBanned
       the venue's error kinds                       OrderRejected, DuplicateClientOrderId,
                                                      OrderNotFound, ValidationError, ...
       another 5xx                                   UnknownOutcomeError for place/cancel
                                                      (it may have acted), else Transient
       another 4xx                                   PermanentError
       an unreadable success answer                  UnknownOutcomeError for place/cancel

3. **Real I/O is marked** (`legato.kernel.simulation.real_io`), so the adapter also works
   under simulated time without the clock leaping over a round trip.
4. **`instrument()` answers from memory**: `open()` loads the venue's markets once (as a
   ccxt adapter's `load_markets()` would).

Use it as an async context manager::

    async with HttpVenue("http://127.0.0.1:8700", clock=clock) as venue:
        order = await venue.place_order(order)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import httpx

from legato.kernel.clock import Clock, RealClock
from legato.kernel.errors import (
    DeadlineExceeded,
    LegatoError,
    PermanentError,
    RateLimitedError,
    TransientError,
    UnknownOutcomeError,
    ValidationError,
)
from legato.kernel.ratelimit import Budget, RateLimitGroup
from legato.kernel.simulation import real_io
from legato.trading.balances import Balance
from legato.trading.errors import VenueBanned
from legato.trading.fills import Fill
from legato.trading.instruments import Instrument
from legato.trading.market_data import Bar
from legato.trading.orders import Order
from legato.trading.paper_venue import CALL_POOLS, GENERAL_POOL, ORDER_POOL
from legato.trading.positions import Position
from legato.trading.venue_wire import error_from_wire, from_wire, to_wire

__all__ = ["HttpVenue"]

# The paper venue's pools per call, plus opening the bar stream: an HTTP request here.
_POOLS: Mapping[str, tuple[str, ...]] = {**CALL_POOLS, "subscribe": (GENERAL_POOL,)}
# Calls that change something on the venue: after sending, their outcome can be unknown.
_EFFECTFUL = frozenset({"place_order", "cancel_order"})
_R = TypeVar("_R", Order, Fill, Position, Balance, Instrument, Bar)


class HttpVenue:
    """A venue account reached over HTTP: the paper exchange, or a real one's API shape.

    `base_url` is the exchange's address. `limits` is the client-side rate-limit group (default:
    built at `open()` from the budgets the venue publishes, on `clock`). `timeout` bounds one
    HTTP attempt in seconds (connect, send, wait and read). `instruments`, when given, are
    used instead of loading the venue's list. `transport` replaces httpx's network transport
    (for tests of the adapter itself).
    """

    def __init__(
        self,
        base_url: str,
        *,
        clock: Clock | None = None,
        limits: RateLimitGroup | None = None,
        timeout: float = 10.0,
        instruments: Iterable[Instrument] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        try:
            url = httpx.URL(base_url)
        except httpx.InvalidURL:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            raise ValidationError("base_url", base_url, "an http(s) URL such as http://host:port")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ValidationError("timeout", timeout, "seconds > 0")
        self._clock: Clock = clock if clock is not None else RealClock()
        self._limits = limits
        if limits is not None:
            for pool in (ORDER_POOL, GENERAL_POOL):
                if pool not in limits.names:
                    raise ValidationError("limits", limits.names, f"a group with a {pool!r} pool")
        self._timeout = float(timeout)
        self._instruments: dict[str, Instrument] = {}
        if instruments is not None:
            self._instruments = {instrument.symbol: instrument for instrument in instruments}
        self._name = "http"
        self._http = httpx.AsyncClient(
            base_url=base_url, timeout=httpx.Timeout(self._timeout), transport=transport
        )
        self._opened = False

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Load the venue's name, markets and budgets (one general-pool call); idempotent."""
        if self._opened:
            return
        # Without given limits the budgets are not known yet: this one call cannot wait on them.
        pools = (GENERAL_POOL,) if self._limits is not None else ()
        if self._limits is not None:
            await self._limits.acquire(*pools)
        info = await self._send("info", "GET", "/info", pools=pools)
        if not isinstance(info, Mapping):
            raise PermanentError("the venue's /info answer is not a JSON object", body=info)
        self._name = str(info.get("name", self._name))
        if not self._instruments:
            listed = info.get("instruments")
            if not isinstance(listed, list):
                raise PermanentError("the venue's /info lists no instruments", body=info)
            loaded = (from_wire(Instrument, item) for item in listed)
            self._instruments = {instrument.symbol: instrument for instrument in loaded}
        if self._limits is None:
            self._limits = RateLimitGroup(_budgets(info.get("budgets")), clock=self._clock)
        self._opened = True

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> HttpVenue:
        try:
            await self.open()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ the Venue API

    @property
    def name(self) -> str:
        """The venue's name, as it announces itself (after `open`)."""
        return self._name

    @property
    def limits(self) -> RateLimitGroup:
        """The client-side rate-limit group every call waits on (after `open`)."""
        return self._require_limits()

    def instrument(self, symbol: str) -> Instrument:
        """Return the instrument listed as `symbol`; raise ValidationError if unknown."""
        try:
            return self._instruments[symbol]
        except KeyError:
            listed = sorted(self._instruments) or "none loaded yet: call open() first"
            raise ValidationError("symbol", symbol, f"one of {listed}") from None

    async def place_order(self, order: Order) -> Order:
        """Send a NEW (or UNKNOWN) order; return the venue's view of it (ACCEPTED or later).

        A timeout or a dropped connection after sending raises UnknownOutcomeError: query
        the order by its client order id, never send it again.
        """
        if not isinstance(order, Order):
            raise ValidationError("order", order, "an Order")
        data = await self._call(
            "place_order", "POST", "/orders", json=to_wire(order), key=order.client_order_id
        )
        return self._record(Order, data, "place_order", order.client_order_id)

    async def cancel_order(
        self, *, client_order_id: str | None = None, venue_order_id: str | None = None
    ) -> Order:
        """Cancel an open order by either id; return it as CANCELLED."""
        params = _ids(client_order_id, venue_order_id)
        data = await self._call(
            "cancel_order", "DELETE", "/order", params=params, key=client_order_id
        )
        return self._record(Order, data, "cancel_order", client_order_id)

    async def get_order(
        self, *, client_order_id: str | None = None, venue_order_id: str | None = None
    ) -> Order:
        """Return the venue's current view of one order; raise OrderNotFound if unseen."""
        params = _ids(client_order_id, venue_order_id)
        data = await self._call("get_order", "GET", "/order", params=params, key=client_order_id)
        return self._record(Order, data, "get_order", client_order_id)

    async def open_orders(self, symbol: str | None = None) -> Sequence[Order]:
        """Return the open orders, of one symbol or all, oldest first."""
        data = await self._call("open_orders", "GET", "/orders/open", params=self._symbol(symbol))
        return self._records(Order, data, "open_orders")

    async def fills(self, symbol: str | None = None) -> Sequence[Fill]:
        """Return the account's fills, of one symbol or all, oldest first."""
        data = await self._call("fills", "GET", "/fills", params=self._symbol(symbol))
        return self._records(Fill, data, "fills")

    async def positions(self) -> Sequence[Position]:
        """Return the open positions (perpetual instruments), one per symbol."""
        data = await self._call("positions", "GET", "/positions")
        return self._records(Position, data, "positions")

    async def balances(self) -> Mapping[str, Balance]:
        """Return the account's balances by asset."""
        data = await self._call("balances", "GET", "/balances")
        if not isinstance(data, Mapping):
            raise PermanentError("the venue's balances answer is not a JSON object", body=data)
        return {
            str(asset): self._record(Balance, item, "balances", None)
            for asset, item in data.items()
        }

    def subscribe(self, symbol: str | None = None) -> AsyncIterator[Bar]:
        """Stream the bars the venue processes, from when the stream connects (first `anext`).

        The stream ends when the venue ends its feed; a dropped connection raises
        TransientError from the iterator (subscribe again).
        """
        return self._bar_stream(self._symbol(symbol))

    # ------------------------------------------------------------------ plumbing

    def _require_limits(self) -> RateLimitGroup:
        if self._limits is None:
            raise ValidationError("venue", "not opened", "an HttpVenue after open()")
        return self._limits

    def _symbol(self, symbol: str | None) -> dict[str, str]:
        if symbol is None:
            return {}
        self.instrument(symbol)
        return {"symbol": symbol}

    async def _call(
        self,
        method: str,
        http_method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: object = None,
        key: str | None = None,
    ) -> Any:
        pools = _POOLS[method]
        await self._require_limits().acquire(*pools)
        return await self._send(
            method, http_method, path, pools=pools, params=params, json=json, key=key
        )

    async def _send(
        self,
        method: str,
        http_method: str,
        path: str,
        *,
        pools: tuple[str, ...],
        params: Mapping[str, str] | None = None,
        json: object = None,
        key: str | None = None,
    ) -> Any:
        effectful = method in _EFFECTFUL
        try:
            async with real_io():
                response = await self._http.request(http_method, path, params=params, json=json)
        except (httpx.ConnectTimeout, httpx.PoolTimeout) as error:
            raise DeadlineExceeded(
                f"{method}: could not reach the venue within {self._timeout:g}s; nothing was sent",
                timeout=self._timeout,
            ) from error
        except httpx.ConnectError as error:
            raise TransientError(
                f"{method}: could not connect to the venue ({error}); nothing was sent",
                client_order_id=key,
            ) from error
        except httpx.TransportError as error:
            # The request may have reached the venue: a write that broke, a read that timed
            # out, or a connection closed before the answer.
            if effectful:
                raise UnknownOutcomeError(
                    f"{method}: no answer from the venue ({type(error).__name__}); the order "
                    "may or may not have been affected: query it with "
                    "get_order(client_order_id=...) before acting again",
                    idempotency_key=key,
                    method=method,
                ) from error
            if isinstance(error, httpx.TimeoutException):
                raise DeadlineExceeded(
                    f"{method}: no answer within {self._timeout:g}s", timeout=self._timeout
                ) from error
            raise TransientError(
                f"{method}: the connection failed ({type(error).__name__})"
            ) from error
        if response.status_code < 300:
            try:
                return response.json()
            except ValueError:
                raise self._unreadable(method, key, response.text) from None
        raise self._error(method, pools, key, response)

    def _error(
        self, method: str, pools: tuple[str, ...], key: str | None, response: httpx.Response
    ) -> LegatoError:
        status = response.status_code
        retry_after = _retry_after(response.headers.get("retry-after"))
        try:
            body = response.json()
        except ValueError:
            body = None
        error = (
            error_from_wire(body, retry_after=retry_after, key=key)
            if isinstance(body, Mapping)
            else None
        )
        if error is None:
            text = response.text[:200]
            if status == 429:
                error = RateLimitedError(
                    f"{method}: rate limited by the venue", retry_after=retry_after, status=status
                )
            elif status >= 500 and method in _EFFECTFUL:
                error = UnknownOutcomeError(
                    f"{method}: the venue failed ({status}) after receiving the request; query "
                    "the order by client order id before acting again",
                    idempotency_key=key,
                    status=status,
                    body=text,
                )
            elif status >= 500 or status == 408:
                error = TransientError(f"{method}: the venue failed", status=status, body=text)
            else:
                error = PermanentError(f"{method}: the venue refused", status=status, body=text)
        if isinstance(error, RateLimitedError) and error.retry_after and self._limits is not None:
            # Honour the venue's hint: nothing from these pools until it has passed.
            drained = None if isinstance(error, VenueBanned) else pools
            self._limits.penalize(error.retry_after, drained)
        return error

    def _unreadable(self, method: str, key: str | None, text: str) -> LegatoError:
        if method in _EFFECTFUL:
            return UnknownOutcomeError(
                f"{method}: the venue's answer could not be read; query the order",
                idempotency_key=key,
                body=text[:200],
            )
        return TransientError(f"{method}: the venue's answer is not JSON", body=text[:200])

    def _record(self, cls: type[_R], data: object, method: str, key: str | None) -> _R:
        try:
            return from_wire(cls, data)
        except ValidationError:
            raise self._unreadable(method, key, str(data)) from None

    def _records(self, cls: type[_R], data: object, method: str) -> list[_R]:
        if not isinstance(data, list):
            raise self._unreadable(method, None, str(data))
        return [self._record(cls, item, method, None) for item in data]

    async def _bar_stream(self, params: Mapping[str, str]) -> AsyncIterator[Bar]:
        await self._require_limits().acquire(*_POOLS["subscribe"])
        try:
            async with self._http.stream(
                "GET",
                "/bars/stream",
                params=params,
                timeout=httpx.Timeout(self._timeout, read=None),
            ) as response:
                if response.status_code >= 300:
                    await response.aread()
                    raise self._error("subscribe", _POOLS["subscribe"], None, response)
                async for line in response.aiter_lines():
                    if line.strip():
                        yield from_wire(Bar, json.loads(line))
        except httpx.TransportError as error:
            raise TransientError(
                f"the bar stream broke ({type(error).__name__}); subscribe again"
            ) from error


def _ids(client_order_id: str | None, venue_order_id: str | None) -> dict[str, str]:
    if (client_order_id is None) == (venue_order_id is None):
        raise ValidationError(
            "client_order_id/venue_order_id",
            (client_order_id, venue_order_id),
            "exactly one of the two ids",
        )
    if client_order_id is not None:
        return {"client_order_id": client_order_id}
    assert venue_order_id is not None
    return {"venue_order_id": venue_order_id}


def _retry_after(header: str | None) -> float | None:
    if header is None:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        return None


def _budgets(data: object) -> dict[str, Budget]:
    expected = "budgets for the 'orders' and 'general' pools, each {limit, per}"
    if not isinstance(data, Mapping):
        raise ValidationError("budgets", data, expected)
    budgets: dict[str, Budget] = {}
    for pool in (ORDER_POOL, GENERAL_POOL):
        spec = data.get(pool)
        if not isinstance(spec, Mapping):
            raise ValidationError(f"budgets[{pool!r}]", spec, expected)
        try:
            budgets[pool] = Budget(limit=int(spec["limit"]), per=float(spec["per"]))
        except (KeyError, TypeError, ValueError):
            raise ValidationError(f"budgets[{pool!r}]", spec, expected) from None
    return budgets
