"""The paper exchange: one `PaperVenue` served over HTTP, as a program of its own.

A real exchange lives in another process and keeps what a killed client placed. Run the
paper venue the same way and the desk's crash behaviour can be proven with real kills::

    python -m legato.trading.paper_exchange --port 8700 --balance USDT=100000

`PaperExchange` wraps the venue; `PaperExchange.app()` is its Starlette application. The
venue's API, in the wire form of `legato.trading.venue_wire` (what `HttpVenue` speaks):

    GET    /info                    name, instruments, rate budgets
    POST   /orders                  place an order (body: the Order)
    GET    /order?client_order_id=  one order (or ?venue_order_id=)
    DELETE /order?client_order_id=  cancel one order (or ?venue_order_id=)
    GET    /orders/open?symbol=     open orders, oldest first
    GET    /fills?symbol=           fills, oldest first
    GET    /positions               open positions
    GET    /balances                balances by asset
    GET    /bars/stream?symbol=     the bars processed from now on, one JSON object a line

Errors answer with the status and body of their `WireErrorKind` (429 and 418 carry
Retry-After). The venue enforces its server-side budgets as in-process; its own client-side
limiter is left wide open, so a client over budget is answered 429, not queued.

Control endpoints, for tests and operators (not part of any real exchange):

    POST /control/bars              process bars now (body: {"bars": [...]}); returns fills
    POST /control/holds             arm a hold point (body: method, suffix, stage)
    GET  /control/holds/{id}?wait=  the hold, after waiting up to `wait` s for it to be reached
    POST /control/holds/{id}/release   let the held request go on (action "proceed") or
                                    drop it (before acceptance: never placed, answered 503;
                                    after acceptance: placed, the answer lost, 504)
    GET  /control/audit?wait_for=&wait=   every place request received, first or repeated
    GET  /control/state             the whole book (`PaperVenueState` JSON), finished orders too
    GET  /control/protection        open positions and whether live stops cover them
    POST /control/faults            arm a fault of the venue's fault plan (body: kind, method,
                                    times, on_call, probability, seconds, retry_after, reason;
                                    see `legato.trading.faults.Fault`); returns its fault_id
    DELETE /control/faults          disarm every fault
    POST /control/reset             a fresh venue: empty book, starting balances, no holds

A hold point stops the next place (or cancel) request whose client order id ends with
`suffix`, either before the venue sees it (stage "before") or after the venue accepted it,
with the answer held back (stage "after"). A test kills the client while it waits, at an
exact point of its workflow, without a single sleep.

The exchange runs on its own clock (a `RealClock` in the program); library code here reads
no time but through it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import enum
import itertools
import json
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from legato.kernel.clock import Clock, RealClock
from legato.kernel.errors import LegatoError, TransientError, UnknownOutcomeError, ValidationError
from legato.kernel.ratelimit import Budget, RateLimitGroup
from legato.trading.desk_config import default_instrument
from legato.trading.errors import DuplicateClientOrderId
from legato.trading.faults import Fault, FaultKind
from legato.trading.fees import FeeSchedule
from legato.trading.instruments import Instrument
from legato.trading.market_data import Bar, load_bars, replay
from legato.trading.matching import MatchingRules
from legato.trading.orders import Order, OrderType
from legato.trading.paper_venue import GENERAL_POOL, ORDER_POOL, PaperVenue, PaperVenueConfig
from legato.trading.venue_wire import error_to_wire, from_wire, to_wire

__all__ = [
    "HoldAction",
    "HoldStage",
    "PaperExchange",
    "PlacementRecord",
    "main",
]

_log = structlog.get_logger(__name__)
_BPS = Decimal(10_000)
# The exchange's own client-side limiter must never queue a request: budgets are the server's
# to enforce (with 429), as on a real exchange.
_WIDE_OPEN = Budget(limit=1_000_000_000, per=1.0)
# The longest a long-poll control request waits, so a forgotten test cannot pin a worker.
_MAX_WAIT = 120.0
_HOLD_METHODS = ("place_order", "cancel_order")
# What a fault armed over HTTP may say, besides its kind (the `Fault` fields, JSON-typed).
_FAULT_FIELDS: dict[str, tuple[type, ...]] = {
    "method": (str,),
    "times": (int,),
    "on_call": (int,),
    "probability": (int, float),
    "seconds": (int, float),
    "retry_after": (int, float),
    "reason": (str,),
}


class HoldStage(enum.Enum):
    """Where a hold point stops a request: before the venue sees it, or after it took effect."""

    BEFORE = "before"
    AFTER = "after"


class HoldAction(enum.Enum):
    """What a released hold does with its request."""

    PROCEED = "proceed"
    DROP = "drop"


@dataclass(slots=True)
class _Hold:
    hold_id: int
    method: str
    suffix: str
    stage: HoldStage
    client_order_id: str | None = None
    action: HoldAction | None = None
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def view(self) -> dict[str, object]:
        return {
            "hold_id": self.hold_id,
            "method": self.method,
            "suffix": self.suffix,
            "stage": self.stage.value,
            "reached": self.reached.is_set(),
            "client_order_id": self.client_order_id,
            "released": self.released.is_set(),
            "action": None if self.action is None else self.action.value,
        }

    def release(self, action: HoldAction) -> None:
        if not self.released.is_set():
            self.action = action
            self.released.set()


@dataclass(slots=True)
class PlacementRecord:
    """One place request the exchange received: its client id, and what became of it.

    `first` is False when a place request with the same client order id came before: the
    client sent that id twice as a new order. `outcome` is "pending" while the request is in
    the venue (or held), then "accepted", or the wire error kind it was answered with
    ("duplicate", "rejected", "rate_limited", ...), or "dropped" by a hold.
    """

    sequence: int
    client_order_id: str
    first: bool
    outcome: str
    received_at: str

    def view(self) -> dict[str, object]:
        return {
            "sequence": self.sequence,
            "client_order_id": self.client_order_id,
            "first": self.first,
            "outcome": self.outcome,
            "received_at": self.received_at,
        }


@dataclass(slots=True)
class _Protection:
    # Real seconds (the exchange's clock) a position has been without full stop cover.
    bare_since: float | None = None
    longest_bare: float = 0.0


def _venue_factory(
    instruments: Sequence[Instrument],
    balances: Mapping[str, Decimal],
    config: PaperVenueConfig,
    clock: Clock,
    name: str,
) -> Callable[[], PaperVenue]:
    # The exchange answers 429 with the time left; it never slows itself down.
    server_config = dataclasses.replace(config, honor_retry_after=False)

    def build() -> PaperVenue:
        return PaperVenue(
            instruments,
            balances=balances,
            config=server_config,
            clock=clock,
            limits=RateLimitGroup({ORDER_POOL: _WIDE_OPEN, GENERAL_POOL: _WIDE_OPEN}, clock=clock),
            name=name,
        )

    return build


class PaperExchange:
    """A paper venue as an exchange: its API over HTTP, hold points and a placement audit.

    `instruments`, `balances` and `config` are the venue's (see `PaperVenue`); `reset()`
    starts over from them. `clock` is the exchange's time (default: the real clock).
    """

    def __init__(
        self,
        instruments: Iterable[Instrument],
        *,
        balances: Mapping[str, Decimal] | None = None,
        config: PaperVenueConfig | None = None,
        clock: Clock | None = None,
        name: str = "paper",
    ) -> None:
        self._clock: Clock = clock if clock is not None else RealClock()
        self._config = config if config is not None else PaperVenueConfig()
        listed = tuple(instruments)
        self._listed = listed
        self._build = _venue_factory(listed, dict(balances or {}), self._config, self._clock, name)
        self._venue = self._build()
        self._holds: dict[int, _Hold] = {}
        self._hold_ids = itertools.count(1)
        self._placements: list[PlacementRecord] = []
        self._placed_ids: set[str] = set()
        self._audit_changed = asyncio.Condition()
        self._protection = _Protection()
        self._bar_streams = 0
        self._streams_changed = asyncio.Condition()

    @property
    def venue(self) -> PaperVenue:
        """The paper venue behind the API (a fresh one after each `reset`)."""
        return self._venue

    @property
    def placements(self) -> Sequence[PlacementRecord]:
        """Every place request received so far, oldest first."""
        return tuple(self._placements)

    @property
    def bar_streams(self) -> int:
        """How many `/bars/stream` clients are subscribed right now."""
        return self._bar_streams

    async def await_bar_streams(self, count: int, wait: float) -> bool:
        """Wait up to `wait` seconds until `count` bar streams are subscribed; say if so."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait), self._streams_changed:
                await self._streams_changed.wait_for(lambda: self._bar_streams >= count)
        return self._bar_streams >= count

    def sent_twice(self) -> list[str]:
        """Client order ids that reached the exchange in more than one place request."""
        return sorted({record.client_order_id for record in self._placements if not record.first})

    # ------------------------------------------------------------------ control

    def reset(self) -> None:
        """Start over: a fresh venue, no holds (pending ones are dropped), an empty audit."""
        self._venue.end_of_data()
        for hold in self._holds.values():
            hold.release(HoldAction.DROP)
        self._holds.clear()
        self._venue = self._build()
        self._placements.clear()
        self._placed_ids.clear()
        self._protection = _Protection()

    def process_bars(self, bars: Iterable[Bar]) -> list[dict[str, object]]:
        """Match the book against `bars`, in order; return the fills they made, as wire dicts."""
        bars = list(bars)
        for bar in bars:
            self._venue.instrument(bar.symbol)  # all or nothing: refuse before matching any
        fills: list[dict[str, object]] = []
        for bar in bars:
            fills.extend(to_wire(fill) for fill in self._venue.process_bar(bar))
        self._observe_protection()
        return fills

    def arm_hold(self, method: str, suffix: str, stage: HoldStage) -> dict[str, object]:
        """Hold the next `method` request whose client order id ends with `suffix`."""
        if method not in _HOLD_METHODS:
            raise ValidationError("method", method, f"one of {list(_HOLD_METHODS)}")
        if not suffix:
            raise ValidationError("suffix", suffix, "a non-empty end of a client order id")
        hold = _Hold(next(self._hold_ids), method, suffix, stage)
        self._holds[hold.hold_id] = hold
        return hold.view()

    async def await_hold(self, hold_id: int, wait: float) -> dict[str, object]:
        """The hold, once reached or after `wait` seconds, whichever comes first."""
        hold = self._hold(hold_id)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await hold.reached.wait()
        return hold.view()

    def release_hold(self, hold_id: int, action: HoldAction) -> dict[str, object]:
        """Let a held request go on, or drop it."""
        hold = self._hold(hold_id)
        hold.release(action)
        return hold.view()

    async def audit(self, wait_for: str | None, wait: float) -> dict[str, object]:
        """The placement audit; with `wait_for`, first wait (up to `wait` s) until a place
        request of that client order id has been answered."""
        if wait_for is not None:

            def answered() -> bool:
                return any(
                    record.client_order_id == wait_for and record.outcome != "pending"
                    for record in self._placements
                )

            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait), self._audit_changed:
                    await self._audit_changed.wait_for(answered)
        return {
            "placements": [record.view() for record in self._placements],
            "sent_twice": self.sent_twice(),
        }

    def protection(self) -> dict[str, object]:
        """Open positions, the live stop quantity covering each, and the longest bare spell."""
        self._observe_protection()
        state = self._venue.state()
        cover = self._stop_cover()
        return {
            "positions": [
                {
                    "symbol": position.symbol,
                    "side": position.side.value,
                    "quantity": str(position.quantity),
                    "stop_cover": str(cover.get(position.symbol, Decimal(0))),
                    "protected": cover.get(position.symbol, Decimal(0)) >= position.quantity,
                }
                for position in state.positions
            ],
            "longest_bare_seconds": self._protection.longest_bare,
        }

    def add_fault(self, fault: Fault) -> int:
        """Arm `fault` on the venue's fault plan (e.g. reject the next place request)."""
        return self._venue.faults.add(fault)

    def clear_faults(self) -> None:
        """Disarm every fault of the venue's fault plan."""
        self._venue.faults.clear()

    @staticmethod
    def fault_from_wire(body: object) -> Fault:
        """The `Fault` a JSON object describes; ValidationError names a bad field."""
        if not isinstance(body, dict):
            raise ValidationError("body", body, "a JSON object")
        try:
            kind = FaultKind(body.get("kind"))
        except ValueError:
            raise ValidationError(
                "kind", body.get("kind"), f"one of {[kind.value for kind in FaultKind]}"
            ) from None
        fields: dict[str, Any] = {}
        for name, value in body.items():
            if name == "kind":
                continue
            types = _FAULT_FIELDS.get(name)
            if types is None:
                raise ValidationError(name, value, f"one of {['kind', *_FAULT_FIELDS]}")
            if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
                raise ValidationError(name, value, f"a JSON {types[-1].__name__} or null")
            fields[name] = value
        return Fault(kind, **fields)

    def _hold(self, hold_id: int) -> _Hold:
        try:
            return self._holds[hold_id]
        except KeyError:
            raise ValidationError("hold_id", hold_id, f"one of {sorted(self._holds)}") from None

    def _stop_cover(self) -> dict[str, Decimal]:
        state = self._venue.state()
        orders = {order.client_order_id: order for order in state.orders}
        sides = {position.symbol: position.side.closing_side for position in state.positions}
        cover: dict[str, Decimal] = {}
        for cid in state.open_order_ids:
            order = orders[cid]
            covers = sides.get(order.symbol) is order.side
            if order.type is OrderType.STOP and order.reduce_only and covers:
                cover[order.symbol] = cover.get(order.symbol, Decimal(0)) + (
                    order.remaining_quantity
                )
        return cover

    def _observe_protection(self) -> None:
        cover = self._stop_cover()
        bare = any(
            cover.get(position.symbol, Decimal(0)) < position.quantity
            for position in self._venue.state().positions
        )
        now = self._clock.monotonic()
        record = self._protection
        if bare and record.bare_since is None:
            record.bare_since = now
        if record.bare_since is not None:
            record.longest_bare = max(record.longest_bare, now - record.bare_since)
        if not bare:
            record.bare_since = None

    # ------------------------------------------------------------------ the venue API

    async def place(self, order: Order) -> Order:
        """Place `order` through the venue, with the audit and any hold point armed for it."""
        cid = order.client_order_id
        record = PlacementRecord(
            sequence=len(self._placements) + 1,
            client_order_id=cid,
            first=cid not in self._placed_ids,
            outcome="pending",
            received_at=self._clock.now().isoformat(),
        )
        self._placements.append(record)
        self._placed_ids.add(cid)
        await self._notify_audit()
        hold = self._take_hold("place_order", cid)
        try:
            if await self._dropped_at(hold, HoldStage.BEFORE):
                record.outcome = "dropped"
                raise TransientError(
                    "the request was dropped before the exchange accepted it (hold point); "
                    "nothing was placed",
                    client_order_id=cid,
                )
            placed = await self._venue.place_order(order)
            record.outcome = "accepted"
            self._observe_protection()
            if await self._dropped_at(hold, HoldStage.AFTER):
                raise UnknownOutcomeError(
                    "the order was accepted but the answer was lost (hold point); query it",
                    idempotency_key=cid,
                )
            return placed
        except LegatoError as error:
            if record.outcome == "pending":
                record.outcome = (
                    "duplicate"
                    if isinstance(error, DuplicateClientOrderId)
                    else str(error_to_wire(error).body["error"])
                )
            raise
        finally:
            await self._notify_audit()

    async def cancel(self, client_order_id: str | None, venue_order_id: str | None) -> Order:
        """Cancel an order through the venue, honouring a hold point armed for it."""
        hold = None if client_order_id is None else self._take_hold("cancel_order", client_order_id)
        if await self._dropped_at(hold, HoldStage.BEFORE):
            raise TransientError(
                "the cancel was dropped before the exchange saw it (hold point); nothing changed",
                client_order_id=client_order_id,
            )
        cancelled = await self._venue.cancel_order(
            client_order_id=client_order_id, venue_order_id=venue_order_id
        )
        self._observe_protection()
        if await self._dropped_at(hold, HoldStage.AFTER):
            raise UnknownOutcomeError(
                "the order was cancelled but the answer was lost (hold point); query it",
                idempotency_key=cancelled.client_order_id,
            )
        return cancelled

    def _take_hold(self, method: str, client_order_id: str) -> _Hold | None:
        for hold in self._holds.values():
            if (
                hold.method == method
                and not hold.reached.is_set()
                and client_order_id.endswith(hold.suffix)
            ):
                hold.client_order_id = client_order_id
                hold.reached.set()
                return hold
        return None

    async def _dropped_at(self, hold: _Hold | None, stage: HoldStage) -> bool:
        """Wait at `hold` if it is armed for `stage`; True when the test says to drop it."""
        if hold is None or hold.stage is not stage:
            return False
        return await self._wait_release(hold) is HoldAction.DROP

    @staticmethod
    async def _wait_release(hold: _Hold) -> HoldAction:
        await hold.released.wait()
        assert hold.action is not None
        return hold.action

    async def _notify_audit(self) -> None:
        async with self._audit_changed:
            self._audit_changed.notify_all()

    # ------------------------------------------------------------------ HTTP

    def app(self, *, bars: AsyncIterator[Bar] | None = None) -> Starlette:
        """The Starlette application serving this exchange.

        `bars`, if given, is a market data stream processed as it comes, from startup on
        (a recorded file replayed on the clock, for instance).
        """

        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            feed = None if bars is None else asyncio.create_task(self._feed(bars), name="feed")
            try:
                yield
            finally:
                for hold in self._holds.values():
                    hold.release(HoldAction.DROP)
                self._venue.end_of_data()
                if feed is not None:
                    feed.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await feed

        routes = [
            Route("/info", self._http_info, methods=["GET"]),
            Route("/orders", self._http_place, methods=["POST"]),
            Route("/order", self._http_get_order, methods=["GET"]),
            Route("/order", self._http_cancel, methods=["DELETE"]),
            Route("/orders/open", self._http_open_orders, methods=["GET"]),
            Route("/fills", self._http_fills, methods=["GET"]),
            Route("/positions", self._http_positions, methods=["GET"]),
            Route("/balances", self._http_balances, methods=["GET"]),
            Route("/bars/stream", self._http_bar_stream, methods=["GET"]),
            Route("/control/bars", self._http_bars, methods=["POST"]),
            Route("/control/holds", self._http_arm_hold, methods=["POST"]),
            Route("/control/holds/{hold_id:int}", self._http_hold, methods=["GET"]),
            Route("/control/holds/{hold_id:int}/release", self._http_release, methods=["POST"]),
            Route("/control/audit", self._http_audit, methods=["GET"]),
            Route("/control/state", self._http_state, methods=["GET"]),
            Route("/control/protection", self._http_protection, methods=["GET"]),
            Route("/control/reset", self._http_reset, methods=["POST"]),
            Route("/control/faults", self._http_add_fault, methods=["POST"]),
            Route("/control/faults", self._http_clear_faults, methods=["DELETE"]),
        ]
        return Starlette(routes=routes, lifespan=lifespan)

    async def _feed(self, bars: AsyncIterator[Bar]) -> None:
        try:
            async for bar in bars:
                self.process_bars([bar])
        except ValidationError as error:
            _log.error("paper_exchange_feed_stopped", error=str(error))

    @staticmethod
    async def _guarded(handler: Callable[[], Awaitable[object]]) -> Response:
        try:
            return JSONResponse(await handler())
        except LegatoError as error:
            wire = error_to_wire(error)
            headers = {}
            if wire.retry_after is not None:
                headers["Retry-After"] = f"{wire.retry_after:.3f}"
            return JSONResponse(wire.body, status_code=wire.status, headers=headers)

    @staticmethod
    async def _body(request: Request) -> Any:
        try:
            return await request.json()
        except ValueError:
            raise ValidationError("body", "(not JSON)", "a JSON object") from None

    @staticmethod
    def _ids(request: Request) -> tuple[str | None, str | None]:
        return (
            request.query_params.get("client_order_id"),
            request.query_params.get("venue_order_id"),
        )

    @staticmethod
    def _wait(request: Request) -> float:
        text = request.query_params.get("wait", "0")
        try:
            wait = float(text)
        except ValueError:
            raise ValidationError("wait", text, "seconds >= 0") from None
        if not 0 <= wait <= _MAX_WAIT:
            raise ValidationError("wait", text, f"seconds between 0 and {_MAX_WAIT:g}")
        return wait

    async def _http_info(self, request: Request) -> Response:
        async def handler() -> object:
            venue = self._venue
            budgets = {
                ORDER_POOL: venue.config.order_budget,
                GENERAL_POOL: venue.config.general_budget,
            }
            return {
                "name": venue.name,
                "instruments": [to_wire(instrument) for instrument in self._listed],
                "budgets": {
                    pool: {"limit": budget.limit, "per": budget.per}
                    for pool, budget in budgets.items()
                },
            }

        return await self._guarded(handler)

    async def _http_place(self, request: Request) -> Response:
        async def handler() -> object:
            order = from_wire(Order, await self._body(request))
            return to_wire(await self.place(order))

        return await self._guarded(handler)

    async def _http_get_order(self, request: Request) -> Response:
        async def handler() -> object:
            client_order_id, venue_order_id = self._ids(request)
            order = await self._venue.get_order(
                client_order_id=client_order_id, venue_order_id=venue_order_id
            )
            return to_wire(order)

        return await self._guarded(handler)

    async def _http_cancel(self, request: Request) -> Response:
        async def handler() -> object:
            return to_wire(await self.cancel(*self._ids(request)))

        return await self._guarded(handler)

    async def _http_open_orders(self, request: Request) -> Response:
        async def handler() -> object:
            orders = await self._venue.open_orders(request.query_params.get("symbol"))
            return [to_wire(order) for order in orders]

        return await self._guarded(handler)

    async def _http_fills(self, request: Request) -> Response:
        async def handler() -> object:
            fills = await self._venue.fills(request.query_params.get("symbol"))
            return [to_wire(fill) for fill in fills]

        return await self._guarded(handler)

    async def _http_positions(self, request: Request) -> Response:
        async def handler() -> object:
            return [to_wire(position) for position in await self._venue.positions()]

        return await self._guarded(handler)

    async def _http_balances(self, request: Request) -> Response:
        async def handler() -> object:
            balances = await self._venue.balances()
            return {asset: to_wire(balance) for asset, balance in balances.items()}

        return await self._guarded(handler)

    async def _http_bar_stream(self, request: Request) -> Response:
        symbol = request.query_params.get("symbol")
        try:
            stream = self._venue.subscribe(symbol)
        except ValidationError as error:
            wire = error_to_wire(error)
            return JSONResponse(wire.body, status_code=wire.status)

        await self._count_streams(+1)

        async def lines() -> AsyncIterator[bytes]:
            try:
                async for bar in stream:
                    yield (json.dumps(to_wire(bar)) + "\n").encode()
            finally:
                closing = getattr(stream, "aclose", None)
                if closing is not None:
                    await closing()
                await self._count_streams(-1)

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def _count_streams(self, change: int) -> None:
        async with self._streams_changed:
            self._bar_streams += change
            self._streams_changed.notify_all()

    async def _http_bars(self, request: Request) -> Response:
        async def handler() -> object:
            body = await self._body(request)
            items = body.get("bars") if isinstance(body, dict) else None
            if not isinstance(items, list):
                raise ValidationError("bars", items, "a list of bars")
            return {"fills": self.process_bars([from_wire(Bar, item) for item in items])}

        return await self._guarded(handler)

    async def _http_arm_hold(self, request: Request) -> Response:
        async def handler() -> object:
            body = await self._body(request)
            if not isinstance(body, dict):
                raise ValidationError("body", body, "a JSON object")
            try:
                stage = HoldStage(body.get("stage", "before"))
            except ValueError:
                raise ValidationError("stage", body.get("stage"), "'before' or 'after'") from None
            suffix = body.get("suffix")
            if not isinstance(suffix, str):
                raise ValidationError("suffix", suffix, "the end of a client order id")
            return self.arm_hold(str(body.get("method", "place_order")), suffix, stage)

        return await self._guarded(handler)

    async def _http_hold(self, request: Request) -> Response:
        async def handler() -> object:
            return await self.await_hold(request.path_params["hold_id"], self._wait(request))

        return await self._guarded(handler)

    async def _http_release(self, request: Request) -> Response:
        async def handler() -> object:
            body = await self._body(request)
            raw = body.get("action", "proceed") if isinstance(body, dict) else body
            try:
                action = HoldAction(raw)
            except ValueError:
                raise ValidationError("action", raw, "'proceed' or 'drop'") from None
            return self.release_hold(request.path_params["hold_id"], action)

        return await self._guarded(handler)

    async def _http_audit(self, request: Request) -> Response:
        async def handler() -> object:
            return await self.audit(request.query_params.get("wait_for"), self._wait(request))

        return await self._guarded(handler)

    async def _http_state(self, request: Request) -> Response:
        return Response(self._venue.state().to_json(), media_type="application/json")

    async def _http_protection(self, request: Request) -> Response:
        async def handler() -> object:
            return self.protection()

        return await self._guarded(handler)

    async def _http_add_fault(self, request: Request) -> Response:
        async def handler() -> object:
            return {"fault_id": self.add_fault(self.fault_from_wire(await self._body(request)))}

        return await self._guarded(handler)

    async def _http_clear_faults(self, request: Request) -> Response:
        async def handler() -> object:
            self.clear_faults()
            return {"cleared": True}

        return await self._guarded(handler)

    async def _http_reset(self, request: Request) -> Response:
        async def handler() -> object:
            self.reset()
            return {"reset": True}

        return await self._guarded(handler)


# ---------------------------------------------------------------------- the program


class _Server(uvicorn.Server):
    """Uvicorn's server, announcing the address it bound once it accepts connections."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        for server in self.servers:
            for bound in server.sockets:
                host, port = bound.getsockname()[:2]
                # One JSON line on stdout: what a parent process waits for before calling.
                print(json.dumps({"listening": f"http://{host}:{port}"}), flush=True)
                return


def _decimal_option(name: str, text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValidationError(name, text, "a decimal number") from None
    if not value.is_finite():
        raise ValidationError(name, text, "a finite decimal number")
    return value


def _balance_option(text: str) -> tuple[str, Decimal]:
    asset, sep, amount = text.partition("=")
    if not sep or not asset:
        raise ValidationError("--balance", text, "ASSET=AMOUNT, e.g. USDT=100000")
    return asset, _decimal_option("--balance", amount)


def _budget_option(name: str, text: str) -> Budget:
    limit, sep, per = text.partition("/")
    try:
        return Budget(limit=int(limit), per=float(per)) if sep else Budget(int(limit), 1.0)
    except ValueError:
        raise ValidationError(name, text, "LIMIT/SECONDS, e.g. 15/10") from None


def _instruments_option(path: str) -> list[Instrument]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValidationError("--instruments", path, f"a readable JSON file ({error})") from None
    if not isinstance(data, list) or not data:
        raise ValidationError("--instruments", path, "a JSON list of instrument objects")
    return [from_wire(Instrument, item) for item in data]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m legato.trading.paper_exchange",
        description="Serve a paper venue over HTTP: a fake exchange in its own process.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=8700, help="port to bind (0: any free one)")
    parser.add_argument("--name", default="paper", help="the venue's name")
    parser.add_argument(
        "--instruments",
        metavar="FILE",
        help="JSON list of instruments (default: the desk's BTC-USDT-PERP perpetual)",
    )
    parser.add_argument(
        "--balance",
        action="append",
        default=[],
        metavar="ASSET=AMOUNT",
        help="a starting balance (repeatable; default USDT=100000)",
    )
    parser.add_argument("--slippage-bps", default="0", help="market order slippage, bps")
    parser.add_argument(
        "--participation", default="1", help="share of a bar's volume one order may fill"
    )
    parser.add_argument("--maker-fee-bps", default="2", help="maker fee, bps")
    parser.add_argument("--taker-fee-bps", default="4", help="taker fee, bps")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every call")
    parser.add_argument("--order-budget", default="15/10", help="orders pool, LIMIT/SECONDS")
    parser.add_argument("--general-budget", default="60/60", help="general pool, LIMIT/SECONDS")
    parser.add_argument("--bars", metavar="CSV", help="a recorded bar file to replay from startup")
    parser.add_argument("--speed", type=float, default=1.0, help="replay speed of --bars")
    return parser


def build_exchange(options: argparse.Namespace, clock: Clock) -> PaperExchange:
    """The exchange the command-line options describe; ValidationError names a bad option."""
    instruments = (
        _instruments_option(options.instruments) if options.instruments else [default_instrument()]
    )
    balances = dict(_balance_option(text) for text in options.balance) or {"USDT": Decimal(100_000)}
    rules = MatchingRules(
        slippage_bps=_decimal_option("--slippage-bps", options.slippage_bps),
        participation=_decimal_option("--participation", options.participation),
        fees=FeeSchedule(
            maker_rate=_decimal_option("--maker-fee-bps", options.maker_fee_bps) / _BPS,
            taker_rate=_decimal_option("--taker-fee-bps", options.taker_fee_bps) / _BPS,
        ),
    )
    config = PaperVenueConfig(
        rules=rules,
        latency=options.latency,
        order_budget=_budget_option("--order-budget", options.order_budget),
        general_budget=_budget_option("--general-budget", options.general_budget),
    )
    return PaperExchange(
        instruments, balances=balances, config=config, clock=clock, name=options.name
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the paper exchange until SIGINT or SIGTERM; return the exit status."""
    options = _parser().parse_args(argv)
    clock = RealClock()
    try:
        exchange = build_exchange(options, clock)
        bars = None
        if options.bars:
            bars = replay(load_bars(options.bars), clock, speed=options.speed)
    except ValidationError as error:
        print(f"paper exchange: {error}", file=sys.stderr)
        return 2
    server = _Server(
        uvicorn.Config(
            exchange.app(bars=bars.__aiter__() if bars is not None else None),
            host=options.host,
            port=options.port,
            log_level="warning",
            server_header=False,
        )
    )
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
