"""HttpVenue against the paper exchange's application, in process (httpx's ASGI transport).

The exchange's own app is the server: every answer the adapter maps is one the exchange
really sends. Transport failures (timeouts, refused connections, bare 5xx) come from an
httpx MockTransport standing in for the network.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal

import httpx
import pytest

from legato.kernel.clock import Clock
from legato.kernel.errors import (
    DeadlineExceeded,
    PermanentError,
    RateLimitedError,
    TransientError,
    UnknownOutcomeError,
    ValidationError,
)
from legato.kernel.ratelimit import Budget, RateLimitGroup
from legato.trading.errors import DuplicateClientOrderId, OrderNotFound, OrderRejected
from legato.trading.http_venue import HttpVenue
from legato.trading.instruments import Instrument
from legato.trading.orders import Order, OrderSide, OrderStatus, OrderType
from legato.trading.paper_exchange import HoldAction, HoldStage, PaperExchange
from legato.trading.paper_venue import GENERAL_POOL, ORDER_POOL, PaperVenueConfig
from legato.trading.venue import Venue

from .conftest import PERP
from .execution_harness import EXACT_RULES, GENEROUS, flat_bar

URL = "http://exchange.test"


def market_buy(cid: str, quantity: str = "0.010") -> Order:
    return Order(
        client_order_id=cid,
        symbol=PERP,
        side=OrderSide.BUY,
        type=OrderType.MARKET,
        quantity=Decimal(quantity),
        leverage=Decimal(5),
    )


def make_exchange(
    perp: Instrument, clock: Clock, config: PaperVenueConfig = GENEROUS
) -> PaperExchange:
    exchange = PaperExchange(
        [perp], balances={"USDT": Decimal(100_000)}, config=config, clock=clock
    )
    exchange.process_bars([flat_bar(0)])
    return exchange


@asynccontextmanager
async def connected(
    exchange: PaperExchange, clock: Clock, **options: object
) -> AsyncIterator[HttpVenue]:
    transport = httpx.ASGITransport(app=exchange.app())
    async with HttpVenue(URL, clock=clock, transport=transport, **options) as venue:  # type: ignore[arg-type]
        yield venue


async def test_orders_fills_positions_and_balances_cross_the_wire_exactly(
    perp: Instrument, clock: Clock
) -> None:
    exchange = make_exchange(perp, clock)
    async with connected(exchange, clock) as venue:
        assert isinstance(venue, Venue)
        assert venue.name == "paper"
        assert venue.instrument(PERP) == perp
        placed = await venue.place_order(market_buy("t-1-E"))
        assert placed.status is OrderStatus.ACCEPTED
        assert placed.venue_order_id is not None
        by_venue_id = await venue.get_order(venue_order_id=placed.venue_order_id)
        assert by_venue_id == await venue.get_order(client_order_id="t-1-E")
        assert [order.client_order_id for order in await venue.open_orders(PERP)] == ["t-1-E"]
        exchange.process_bars([flat_bar(1, "20000.1")])
        filled = await venue.get_order(client_order_id="t-1-E")
        assert (filled.status, filled.filled_quantity) == (OrderStatus.FILLED, Decimal("0.010"))
        assert filled.average_price == Decimal("20000.1")
        fills = await venue.fills(PERP)
        assert [(fill.quantity, fill.price) for fill in fills] == [
            (Decimal("0.010"), Decimal("20000.1"))
        ]
        assert fills == list(await exchange.venue.fills())
        assert await venue.positions() == list(await exchange.venue.positions())
        assert await venue.balances() == await exchange.venue.balances()


async def test_the_venue_error_kinds_arrive_as_the_same_errors(
    perp: Instrument, clock: Clock
) -> None:
    exchange = make_exchange(perp, clock)
    async with connected(exchange, clock) as venue:
        await venue.place_order(market_buy("t-1-E"))
        with pytest.raises(DuplicateClientOrderId):
            await venue.place_order(market_buy("t-1-E"))
        with pytest.raises(OrderNotFound) as missing:
            await venue.get_order(client_order_id="t-9-E")
        assert missing.value.client_order_id == "t-9-E"
        with pytest.raises(OrderRejected) as refused:
            await venue.place_order(market_buy("t-2-E", quantity="0.0105"))
        assert "lot" in refused.value.reason or "quantity" in refused.value.reason
        cancelled = await venue.cancel_order(client_order_id="t-1-E")
        assert cancelled.status is OrderStatus.CANCELLED
        with pytest.raises(OrderRejected):
            await venue.cancel_order(client_order_id="t-1-E")
        calls = exchange.venue.call_counts
        # Bad input is refused before any call.
        with pytest.raises(ValidationError):
            await venue.get_order()
        with pytest.raises(ValidationError):
            await venue.fills("NOPE")
        assert exchange.venue.call_counts == calls


async def test_a_rate_limit_answer_carries_retry_after_and_drains_the_client_pools(
    perp: Instrument, clock: Clock
) -> None:
    config = PaperVenueConfig(
        rules=EXACT_RULES,
        order_budget=Budget(limit=2, per=10.0),
        general_budget=Budget(limit=1_000, per=1.0),
    )
    exchange = make_exchange(perp, clock, config)
    # A client whose own limits are looser than the server's: it provokes the 429.
    loose = RateLimitGroup(
        {ORDER_POOL: Budget(100, 1.0), GENERAL_POOL: Budget(100, 1.0)}, clock=clock
    )
    async with connected(exchange, clock, limits=loose) as venue:
        await venue.place_order(market_buy("t-1-E"))
        await venue.place_order(market_buy("t-2-E"))
        with pytest.raises(RateLimitedError) as limited:
            await venue.place_order(market_buy("t-3-E"))
        assert limited.value.retry_after == pytest.approx(10.0)
        assert not loose.try_acquire(ORDER_POOL)
        started = clock.monotonic()
        await loose.acquire(ORDER_POOL)
        assert clock.monotonic() - started == pytest.approx(10.0, abs=0.01)
    assert [record.outcome for record in exchange.placements] == [
        "accepted",
        "accepted",
        "rate_limited",
    ]


async def test_open_builds_the_client_limits_from_the_published_budgets(
    perp: Instrument, clock: Clock
) -> None:
    config = PaperVenueConfig(order_budget=Budget(limit=3, per=5.0))
    async with connected(make_exchange(perp, clock, config), clock) as venue:
        order_pool = venue.limits.pool(ORDER_POOL)
        for _ in range(3):
            assert order_pool.try_acquire()
        assert not order_pool.try_acquire()


@pytest.mark.parametrize(
    ("stage", "expected", "on_exchange"),
    [
        (HoldStage.BEFORE, TransientError, False),
        (HoldStage.AFTER, UnknownOutcomeError, True),
    ],
    ids=["dropped-before-acceptance", "answer-lost-after-acceptance"],
)
async def test_a_dropped_hold_answers_as_the_outcome_it_leaves(
    perp: Instrument,
    clock: Clock,
    stage: HoldStage,
    expected: type[Exception],
    on_exchange: bool,
) -> None:
    exchange = make_exchange(perp, clock)
    hold = exchange.arm_hold("place_order", "-SL", stage)
    async with connected(exchange, clock) as venue, asyncio.TaskGroup() as tasks:
        await venue.place_order(market_buy("t-1-E"))  # not held: another suffix

        async def send() -> BaseException | None:
            try:
                await venue.place_order(market_buy("t-1-SL"))
            except Exception as error:
                return error
            return None

        sending = tasks.create_task(send())
        hold_id = int(str(hold["hold_id"]))
        reached = await exchange.await_hold(hold_id, wait=5.0)
        assert reached["client_order_id"] == "t-1-SL"
        exchange.release_hold(hold_id, HoldAction.DROP)
        assert isinstance(await sending, expected)
    cids = {order.client_order_id for order in exchange.venue.state().orders}
    assert ("t-1-SL" in cids) is on_exchange


def failing(
    error: Callable[[httpx.Request], Exception] | None = None, status: int | None = None
) -> httpx.MockTransport:
    """The network: /info answers; every other request fails as asked."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/info":
            return httpx.Response(
                200,
                json={
                    "name": "net",
                    "instruments": [],
                    "budgets": {
                        "orders": {"limit": 100, "per": 1.0},
                        "general": {"limit": 100, "per": 1.0},
                    },
                },
            )
        if error is not None:
            raise error(request)
        return httpx.Response(status or 500, text="upstream failure")

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(
    ("network", "place_error", "query_error"),
    [
        (
            lambda r: httpx.ReadTimeout("no answer", request=r),
            UnknownOutcomeError,
            DeadlineExceeded,
        ),
        (
            lambda r: httpx.RemoteProtocolError("closed mid-answer", request=r),
            UnknownOutcomeError,
            TransientError,
        ),
        (lambda r: httpx.ConnectError("refused", request=r), TransientError, TransientError),
        (lambda r: httpx.ConnectTimeout("slow", request=r), DeadlineExceeded, DeadlineExceeded),
    ],
    ids=["read-timeout", "dropped-connection", "refused", "connect-timeout"],
)
async def test_transport_failures_after_sending_an_order_are_unknown_outcomes(
    perp: Instrument,
    clock: Clock,
    network: Callable[[httpx.Request], Exception],
    place_error: type[Exception],
    query_error: type[Exception],
) -> None:
    transport = failing(network)
    async with HttpVenue(URL, clock=clock, transport=transport, instruments=[perp]) as venue:
        with pytest.raises(place_error) as placing:
            await venue.place_order(market_buy("t-1-E"))
        with pytest.raises(query_error):
            await venue.get_order(client_order_id="t-1-E")
    if place_error is UnknownOutcomeError:
        assert isinstance(placing.value, UnknownOutcomeError)
        assert placing.value.idempotency_key == "t-1-E"


@pytest.mark.parametrize(
    ("status", "place_error", "query_error"),
    [
        (500, UnknownOutcomeError, TransientError),
        (502, UnknownOutcomeError, TransientError),
        (403, PermanentError, PermanentError),
        (429, RateLimitedError, RateLimitedError),
    ],
)
async def test_answers_without_an_error_kind_are_mapped_by_status(
    perp: Instrument,
    clock: Clock,
    status: int,
    place_error: type[Exception],
    query_error: type[Exception],
) -> None:
    transport = failing(status=status)
    async with HttpVenue(URL, clock=clock, transport=transport, instruments=[perp]) as venue:
        with pytest.raises(place_error):
            await venue.place_order(market_buy("t-1-E"))
        with pytest.raises(query_error):
            await venue.get_order(client_order_id="t-1-E")


async def test_subscribe_streams_the_bars_the_exchange_processes_until_its_feed_ends(
    perp: Instrument, clock: Clock
) -> None:
    exchange = make_exchange(perp, clock)
    async with connected(exchange, clock) as venue, asyncio.TaskGroup() as tasks:

        async def collect() -> list[Decimal]:
            return [bar.close async for bar in venue.subscribe(PERP)]

        streaming = tasks.create_task(collect())
        assert await exchange.await_bar_streams(1, wait=5.0)
        exchange.process_bars([flat_bar(1, "20001"), flat_bar(2, "20002")])
        exchange.venue.end_of_data()
        closes = await streaming
    assert closes == [Decimal(20001), Decimal(20002)]
    assert exchange.bar_streams == 0


def test_a_bad_base_url_or_timeout_is_refused_naming_it() -> None:
    with pytest.raises(ValidationError, match="base_url"):
        HttpVenue("ftp://exchange")
    with pytest.raises(ValidationError, match="timeout"):
        HttpVenue(URL, timeout=0)


async def test_instruments_are_unknown_until_the_venue_is_opened(clock: Clock) -> None:
    venue = HttpVenue(URL, clock=clock, transport=failing(status=500))
    try:
        with pytest.raises(ValidationError, match="open"):
            venue.instrument(PERP)
        with pytest.raises(ValidationError, match="open"):
            await venue.positions()
    finally:
        await venue.aclose()
