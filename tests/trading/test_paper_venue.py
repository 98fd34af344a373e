from __future__ import annotations

import asyncio
from collections.abc import Sequence
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from legato.kernel.clock import Clock
from legato.kernel.errors import RateLimitedError, ValidationError
from legato.kernel.ratelimit import Budget, RateLimitGroup
from legato.kernel.simulation import SimulatedClock, run_simulated
from legato.trading.desk import Desk
from legato.trading.desk_config import DataSettings, DeskConfig, StrategyConfig, VenueSettings
from legato.trading.errors import DuplicateClientOrderId, OrderNotFound, OrderRejected, VenueBanned
from legato.trading.faults import Fault
from legato.trading.fees import FeeSchedule
from legato.trading.fills import Fill, Liquidity
from legato.trading.instruments import Instrument, InstrumentKind
from legato.trading.ledger import IntentStage, TradingLedger
from legato.trading.market_data import Bar, default_market_data_dir, load_bars, load_trades
from legato.trading.matching import MatchingRules
from legato.trading.orders import Order, OrderSide, OrderStatus, OrderType, TimeInForce
from legato.trading.paper_venue import GENERAL_POOL, ORDER_POOL, PaperVenue, PaperVenueConfig
from legato.trading.positions import PositionSide

from .agents.scripted_bars import SYMBOL as DESK_SYMBOL
from .agents.scripted_bars import trend
from .conftest import PERP, SPOT, BarMaker, make_bar
from .desk_harness import INSTRUMENT as DESK_INSTRUMENT
from .desk_harness import START as DESK_START
from .desk_harness import empty_desk_tables

FEES = FeeSchedule(maker_rate=Decimal("0.0002"), taker_rate=Decimal("0.0004"))
EXACT = PaperVenueConfig(
    rules=MatchingRules(slippage_bps=Decimal(0), participation=Decimal(1), fees=FEES)
)


def venue_for(
    instrument: Instrument, clock: Clock, config: PaperVenueConfig = EXACT, **kw: object
) -> PaperVenue:
    return PaperVenue(
        [instrument],
        balances={"USDT": Decimal(10_000), "ETH": Decimal(10)},
        config=config,
        clock=clock,
        **kw,  # type: ignore[arg-type]
    )


def market(cid: str, side: OrderSide, qty: str, symbol: str = PERP, **kw: object) -> Order:
    return Order(cid, symbol, side, OrderType.MARKET, Decimal(qty), **kw)  # type: ignore[arg-type]


def limit(
    cid: str, side: OrderSide, qty: str, price: str, symbol: str = PERP, **kw: object
) -> Order:
    return Order(cid, symbol, side, OrderType.LIMIT, Decimal(qty), price=Decimal(price), **kw)  # type: ignore[arg-type]


def stop(
    cid: str, side: OrderSide, qty: str, trigger: str, type_: OrderType = OrderType.STOP
) -> Order:
    return Order(
        cid, PERP, side, type_, Decimal(qty), stop_price=Decimal(trigger), reduce_only=True
    )


# ---------------------------------------------------------------- matching through the venue


async def test_market_order_fills_on_the_next_bar_open_with_slippage_and_taker_fee(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    config = PaperVenueConfig(rules=MatchingRules(slippage_bps=Decimal(10), fees=FEES))
    venue = venue_for(perp, clock, config)
    venue.process_bar(bar(0, "100", "101", "99", "100"))
    placed = await venue.place_order(market("m1", OrderSide.BUY, "1", leverage=Decimal(5)))
    assert placed.status is OrderStatus.ACCEPTED
    assert placed.venue_order_id is not None
    assert (await venue.get_order(client_order_id="m1")).filled_quantity == 0
    (fill,) = venue.process_bar(bar(1, "102", "103", "101", "102"))
    assert fill.price == Decimal("102.102")
    assert fill.fee == Decimal("102.102") * Decimal(1) * Decimal("0.0004")
    assert (fill.liquidity, fill.fee_asset) == (Liquidity.TAKER, "USDT")
    order = await venue.get_order(venue_order_id=placed.venue_order_id)
    assert order.status is OrderStatus.FILLED
    assert order.average_price == Decimal("102.102")
    (position,) = await venue.positions()
    assert position.side is PositionSide.LONG
    assert position.leverage == Decimal(5)
    assert position.mark_price == Decimal(102)


async def test_a_market_order_before_any_price_is_rejected(perp: Instrument, clock: Clock) -> None:
    venue = venue_for(perp, clock)
    with pytest.raises(OrderRejected, match="no market price"):
        await venue.place_order(market("m1", OrderSide.BUY, "1"))


async def test_limit_fills_at_its_price_when_crossed_as_maker(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = venue_for(perp, clock)
    venue.process_bar(bar(0, "100", "101", "99", "100"))
    await venue.place_order(limit("l1", OrderSide.BUY, "2", "97"))
    assert venue.process_bar(bar(1, "100", "101", "98", "100")) == []
    (fill,) = venue.process_bar(bar(2, "100", "101", "96", "99"))
    assert (fill.price, fill.liquidity) == (Decimal(97), Liquidity.MAKER)
    assert fill.fee == Decimal("0.0388")


async def test_stop_loss_triggers_on_the_low_and_closes_the_long(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = venue_for(perp, clock)
    venue.process_bar(bar(0, "100", "101", "99", "100"))
    await venue.place_order(market("e", OrderSide.BUY, "1"))
    venue.process_bar(bar(1, "100", "101", "99", "100"))
    await venue.place_order(stop("sl", OrderSide.SELL, "1", "95"))
    assert venue.process_bar(bar(2, "100", "101", "96", "100")) == []
    (fill,) = venue.process_bar(bar(3, "99", "100", "94", "96"))
    assert fill.price == Decimal(95)
    assert await venue.positions() == []
    (closed,) = venue.closed_positions
    assert closed.realized_pnl == Decimal(-5)


async def test_protective_orders_are_not_cancelled_when_the_other_fills(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = venue_for(perp, clock)
    venue.process_bar(bar(0, "100", "101", "99", "100"))
    await venue.place_order(market("e", OrderSide.BUY, "1"))
    venue.process_bar(bar(1, "100", "101", "99", "100"))
    await venue.place_order(stop("sl", OrderSide.SELL, "1", "95"))
    await venue.place_order(stop("tp", OrderSide.SELL, "1", "110", OrderType.TAKE_PROFIT))
    (fill,) = venue.process_bar(bar(2, "100", "101", "94", "96"))
    assert fill.client_order_id == "sl"
    # The take-profit is still working: cancelling it is the execution side's job.
    assert [o.client_order_id for o in await venue.open_orders(PERP)] == ["tp"]
    assert (await venue.get_order(client_order_id="tp")).status is OrderStatus.ACCEPTED


async def test_an_orphaned_reduce_only_order_expires_when_it_would_fill(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = venue_for(perp, clock)
    venue.process_bar(bar(0, "100", "101", "99", "100"))
    await venue.place_order(market("e", OrderSide.BUY, "1"))
    venue.process_bar(bar(1, "100", "101", "99", "100"))
    await venue.place_order(stop("sl", OrderSide.SELL, "1", "95"))
    await venue.place_order(stop("tp", OrderSide.SELL, "1", "110", OrderType.TAKE_PROFIT))
    venue.process_bar(bar(2, "100", "101", "94", "96"))
    assert venue.process_bar(bar(3, "100", "111", "99", "110")) == []
    tp = await venue.get_order(client_order_id="tp")
    assert tp.status is OrderStatus.EXPIRED
    assert tp.reason is not None
    assert "reduce-only" in tp.reason


async def test_when_a_bar_touches_stop_and_take_profit_the_stop_fills(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = venue_for(perp, clock)
    venue.process_bar(bar(0, "100", "101", "99", "100"))
    await venue.place_order(market("e", OrderSide.BUY, "1"))
    venue.process_bar(bar(1, "100", "101", "99", "100"))
    await venue.place_order(stop("tp", OrderSide.SELL, "1", "105", OrderType.TAKE_PROFIT))
    await venue.place_order(stop("sl", OrderSide.SELL, "1", "95"))
    # A down bar: read by its direction alone it would reach the take-profit first.
    fills = venue.process_bar(bar(2, "100", "106", "94", "96"))
    assert [f.client_order_id for f in fills] == ["sl"]


async def test_partial_fills_follow_the_participation_cap_and_conserve_quantity(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    config = PaperVenueConfig(
        rules=MatchingRules(slippage_bps=Decimal(0), participation=Decimal("0.1"), fees=FEES)
    )
    venue = venue_for(perp, clock, config)
    venue.process_bar(bar(0, "100", "101", "99", "100"))
    await venue.place_order(market("m", OrderSide.BUY, "2.5"))
    quantities = []
    for index in range(1, 4):
        quantities += [
            f.quantity for f in venue.process_bar(bar(index, "100", "101", "99", "100", "10"))
        ]
    assert quantities == [Decimal(1), Decimal(1), Decimal("0.5")]
    order = await venue.get_order(client_order_id="m")
    assert order.status is OrderStatus.FILLED
    assert sum(f.quantity for f in await venue.fills(PERP)) == order.quantity


async def test_a_partially_filled_order_reports_partial_status(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    config = PaperVenueConfig(rules=MatchingRules(participation=Decimal("0.1")))
    venue = venue_for(perp, clock, config)
    venue.process_bar(bar(0, "100", "101", "99", "100"))
    await venue.place_order(limit("l", OrderSide.BUY, "3", "99"))
    venue.process_bar(bar(1, "100", "101", "98", "100", "10"))
    order = await venue.get_order(client_order_id="l")
    assert order.status is OrderStatus.PARTIALLY_FILLED
    assert (order.filled_quantity, order.remaining_quantity) == (Decimal(1), Decimal(2))
    assert [o.client_order_id for o in await venue.open_orders()] == ["l"]


async def test_ioc_remainder_expires(perp: Instrument, clock: Clock, bar: BarMaker) -> None:
    config = PaperVenueConfig(rules=MatchingRules(participation=Decimal("0.1")))
    venue = venue_for(perp, clock, config)
    venue.process_bar(bar(0, "100", "101", "99", "100"))
    await venue.place_order(market("m", OrderSide.BUY, "3", time_in_force=TimeInForce.IOC))
    venue.process_bar(bar(1, "100", "101", "99", "100", "10"))
    order = await venue.get_order(client_order_id="m")
    assert order.status is OrderStatus.EXPIRED
    assert order.filled_quantity == Decimal(1)


async def test_reduce_only_is_refused_without_a_position_to_reduce(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = venue_for(perp, clock)
    venue.process_bar(bar(0, "100", "101", "99", "100"))
    with pytest.raises(OrderRejected, match="reduce-only"):
        await venue.place_order(market("r", OrderSide.SELL, "1", reduce_only=True))
    await venue.place_order(market("e", OrderSide.BUY, "1"))
    venue.process_bar(bar(1, "100", "101", "99", "100"))
    with pytest.raises(OrderRejected, match="reduce-only"):
        await venue.place_order(market("r2", OrderSide.BUY, "1", reduce_only=True))


async def test_reduce_only_fill_is_capped_at_the_position_and_never_flips_it(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = venue_for(perp, clock)
    venue.process_bar(bar(0, "100", "101", "99", "100"))
    await venue.place_order(market("e", OrderSide.BUY, "1"))
    venue.process_bar(bar(1, "100", "101", "99", "100"))
    await venue.place_order(market("r", OrderSide.SELL, "3", reduce_only=True))
    (fill,) = venue.process_bar(bar(2, "100", "101", "99", "100"))
    assert fill.quantity == Decimal(1)
    assert await venue.positions() == []


async def test_a_larger_opposite_order_flips_the_position(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = venue_for(perp, clock)
    venue.process_bar(bar(0, "100", "101", "99", "100"))
    await venue.place_order(market("e", OrderSide.BUY, "1"))
    venue.process_bar(bar(1, "100", "101", "99", "100"))
    await venue.place_order(market("x", OrderSide.SELL, "3"))
    venue.process_bar(bar(2, "110", "111", "109", "110"))
    (position,) = await venue.positions()
    assert (position.side, position.quantity, position.entry_price) == (
        PositionSide.SHORT,
        Decimal(2),
        Decimal(110),
    )
    assert venue.closed_positions[0].realized_pnl == Decimal(10)


async def test_duplicate_client_order_id_is_rejected_even_after_the_first_is_done(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = venue_for(perp, clock)
    venue.process_bar(bar(0, "100", "101", "99", "100"))
    await venue.place_order(market("dup", OrderSide.BUY, "1"))
    venue.process_bar(bar(1, "100", "101", "99", "100"))
    with pytest.raises(DuplicateClientOrderId) as caught:
        await venue.place_order(market("dup", OrderSide.BUY, "1"))
    assert caught.value.client_order_id == "dup"
    assert len(await venue.fills()) == 1


async def test_orders_off_the_grid_are_rejected_with_the_field(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = venue_for(perp, clock)
    with pytest.raises(OrderRejected) as caught:
        await venue.place_order(limit("l", OrderSide.BUY, "1", "100.05"))
    assert caught.value.context["field"] == "price"
    with pytest.raises(OrderRejected) as caught:
        await venue.place_order(limit("l", OrderSide.BUY, "0.01", "100"))
    assert caught.value.context["field"] == "notional"
    with pytest.raises(OrderRejected) as caught:
        await venue.place_order(limit("l", OrderSide.BUY, "1", "100", leverage=Decimal(50)))
    assert caught.value.context["field"] == "leverage"
    assert await venue.open_orders() == []


async def test_perpetual_margin_must_cover_the_order(perp: Instrument, clock: Clock) -> None:
    venue = venue_for(perp, clock)
    with pytest.raises(OrderRejected, match="insufficient balance"):
        await venue.place_order(limit("big", OrderSide.BUY, "101", "100"))
    await venue.place_order(limit("ok", OrderSide.BUY, "100", "100", leverage=Decimal(2)))
    usdt = (await venue.balances())["USDT"]
    assert (usdt.free, usdt.locked) == (Decimal(5000), Decimal(5000))


async def test_perpetual_wallet_moves_by_realized_pnl_minus_fees(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = venue_for(perp, clock)
    venue.process_bar(bar(0, "100", "101", "99", "100"))
    await venue.place_order(market("e", OrderSide.BUY, "2"))
    venue.process_bar(bar(1, "100", "101", "99", "100"))
    await venue.place_order(market("x", OrderSide.SELL, "2", reduce_only=True))
    venue.process_bar(bar(2, "105", "106", "104", "105"))
    fees = sum(f.fee for f in await venue.fills())
    assert fees == Decimal("0.08") + Decimal("0.084")
    assert (await venue.balances())["USDT"].total == Decimal(10_000) + Decimal(10) - fees


async def test_spot_buy_locks_quote_and_settles_both_assets(
    spot: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = venue_for(spot, clock)
    await venue.place_order(limit("b", OrderSide.BUY, "2", "1000", symbol=SPOT))
    locked = (await venue.balances())["USDT"].locked
    assert locked == Decimal(2000) * (1 + FEES.taker_rate)
    (fill,) = venue.process_bar(bar(0, "1010", "1011", "999", "1005", symbol=SPOT))
    balances = await venue.balances()
    assert balances["ETH"].total == Decimal(12)
    assert balances["USDT"].locked == 0
    assert balances["USDT"].free == Decimal(10_000) - Decimal(2000) - fill.fee


async def test_spot_sell_needs_the_base_asset(spot: Instrument, clock: Clock) -> None:
    venue = venue_for(spot, clock)
    with pytest.raises(OrderRejected, match="insufficient balance"):
        await venue.place_order(limit("s", OrderSide.SELL, "11", "1000", symbol=SPOT))
    await venue.place_order(limit("s", OrderSide.SELL, "10", "1000", symbol=SPOT))
    assert (await venue.balances())["ETH"].locked == Decimal(10)


async def test_spot_rejects_reduce_only(spot: Instrument, clock: Clock) -> None:
    venue = venue_for(spot, clock)
    with pytest.raises(OrderRejected, match="perpetual"):
        await venue.place_order(
            limit("s", OrderSide.SELL, "1", "1000", symbol=SPOT, reduce_only=True)
        )


async def test_cancel_releases_the_order_and_a_final_order_cannot_be_cancelled(
    spot: Instrument, clock: Clock
) -> None:
    venue = venue_for(spot, clock)
    placed = await venue.place_order(limit("b", OrderSide.BUY, "1", "1000", symbol=SPOT))
    cancelled = await venue.cancel_order(venue_order_id=placed.venue_order_id)
    assert cancelled.status is OrderStatus.CANCELLED
    assert (await venue.balances())["USDT"].locked == 0
    with pytest.raises(OrderRejected, match="already cancelled"):
        await venue.cancel_order(client_order_id="b")
    with pytest.raises(OrderNotFound):
        await venue.cancel_order(client_order_id="nope")


async def test_queries_need_exactly_one_id(perp: Instrument, clock: Clock) -> None:
    venue = venue_for(perp, clock)
    with pytest.raises(ValidationError):
        await venue.get_order()
    with pytest.raises(ValidationError):
        await venue.get_order(client_order_id="a", venue_order_id="b")


async def test_latency_is_spent_on_the_clock(perp: Instrument, clock: Clock) -> None:
    venue = venue_for(perp, clock, PaperVenueConfig(latency=0.25))
    start = clock.monotonic()
    await venue.open_orders()
    assert clock.monotonic() - start == pytest.approx(0.25)


# ---------------------------------------------------------------- market data


async def test_subscribers_receive_every_fed_bar_and_the_stream_ends_with_the_feed(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = venue_for(perp, clock)
    bars = [bar(index, "100", "101", "99", "100") for index in range(5)]
    stream = venue.subscribe(PERP)
    start = clock.monotonic()
    async with asyncio.TaskGroup() as group:
        feed = group.create_task(venue.run_feed(bars), name="paper-feed")
        received = [item async for item in stream]
    assert received == bars
    assert feed.result() == 5
    assert clock.monotonic() - start == pytest.approx(4 * 300)


async def test_orders_placed_while_the_feed_runs_fill_on_the_next_bar(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = venue_for(perp, clock)
    bars = [
        bar(index, str(100 + index), str(101 + index), str(99 + index), str(100 + index))
        for index in range(4)
    ]
    stream = venue.subscribe(PERP)
    async with asyncio.TaskGroup() as group:
        group.create_task(venue.run_feed(bars), name="paper-feed")
        async for seen in stream:
            if seen.timestamp == bars[1].timestamp:
                await venue.place_order(market("m", OrderSide.BUY, "1"))
    (fill,) = await venue.fills()
    assert fill.price == bars[2].open


# ---------------------------------------------------------------- rate limits


async def test_a_burst_through_the_client_limits_never_exceeds_the_server_budget(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = venue_for(perp, clock)
    venue.process_bar(bar(0, "100", "101", "99", "100"))
    errors: list[BaseException] = []

    async def place(index: int) -> None:
        try:
            await venue.place_order(limit(f"o{index}", OrderSide.BUY, "0.1", "90"))
        except RateLimitedError as error:  # pragma: no cover - would be the failure
            errors.append(error)

    async def poll() -> None:
        await venue.open_orders()

    start = clock.monotonic()
    async with asyncio.TaskGroup() as group:
        for index in range(40):
            group.create_task(place(index), name=f"place-{index}")
            group.create_task(poll(), name=f"poll-{index}")
    assert errors == []
    assert len(await venue.open_orders()) == 40
    order_grants = [(t, 1) for t, pool in venue.server_log if pool == ORDER_POOL]
    general_grants = [(t, 1) for t, pool in venue.server_log if pool == GENERAL_POOL]
    assert len(order_grants) == 40
    assert venue.config.order_budget.violations(order_grants) == 0
    assert venue.config.general_budget.violations(general_grants) == 0
    # 40 orders at 15 per 10 s cannot all pass in less than 20 s; the limiter spaced them.
    assert clock.monotonic() - start >= 20


async def test_a_client_over_budget_gets_retry_after_then_a_ban(
    perp: Instrument, clock: Clock
) -> None:
    loose = RateLimitGroup(
        {ORDER_POOL: Budget(1000, 1.0), GENERAL_POOL: Budget(1000, 1.0)}, clock=clock
    )
    config = PaperVenueConfig(
        general_budget=Budget(limit=3, per=10.0), ban_duration=100.0, honor_retry_after=False
    )
    venue = venue_for(perp, clock, config, limits=loose)
    for _ in range(3):
        await venue.open_orders()
    with pytest.raises(RateLimitedError) as caught:
        await venue.open_orders()
    assert not isinstance(caught.value, VenueBanned)
    assert caught.value.retry_after == pytest.approx(10.0)
    with pytest.raises(RateLimitedError):
        await venue.open_orders()
    with pytest.raises(VenueBanned) as banned:
        await venue.open_orders()
    assert banned.value.retry_after == pytest.approx(100.0)
    await clock.sleep(50)
    with pytest.raises(VenueBanned):
        await venue.open_orders()
    await clock.sleep(50)
    assert await venue.open_orders() == []


async def test_a_rate_limit_answer_drains_the_client_limits_for_its_retry_after(
    perp: Instrument, clock: Clock
) -> None:
    venue = venue_for(perp, clock)
    venue.faults.add(Fault.rate_limited("open_orders", retry_after=7.0))
    with pytest.raises(RateLimitedError):
        await venue.open_orders()
    start = clock.monotonic()
    await venue.open_orders()
    assert clock.monotonic() - start == pytest.approx(7.0)


def test_the_default_budgets_are_15_orders_per_10s_and_60_calls_per_minute() -> None:
    config = PaperVenueConfig()
    assert config.order_budget == Budget(limit=15, per=10.0)
    assert config.general_budget == Budget(limit=60, per=60.0)


def test_a_config_at_a_replay_speed_shrinks_every_window_and_keeps_every_count() -> None:
    config = PaperVenueConfig(
        latency=0.3, ban_threshold=4, ban_window=60.0, ban_duration=120.0, rules=EXACT.rules
    )
    fast = config.at_speed(3000)
    assert fast.order_budget == Budget(limit=15, per=10.0 / 3000)
    assert fast.general_budget == Budget(limit=60, per=60.0 / 3000)
    assert fast.latency == pytest.approx(0.3 / 3000)
    assert (fast.ban_window, fast.ban_duration) == (60.0 / 3000, 120.0 / 3000)
    assert (fast.ban_threshold, fast.rules, fast.honor_retry_after) == (4, EXACT.rules, True)
    # The budget's sustained rate follows the replay: 3000 times as many calls a second.
    assert fast.order_budget.rate == pytest.approx(config.order_budget.rate * 3000)
    assert config.at_speed(1) is config
    assert config.at_speed(0.5).order_budget == Budget(limit=15, per=20.0)


@pytest.mark.parametrize("speed", [0, -2.0, float("nan"), float("inf"), True, "300", 1e-320])
def test_a_replay_speed_that_is_not_a_finite_positive_number_is_refused(speed: object) -> None:
    config = PaperVenueConfig()
    with pytest.raises(ValidationError) as caught:
        config.at_speed(speed)  # type: ignore[arg-type]
    assert caught.value.field == "speed"
    assert caught.value.value is speed
    assert config == PaperVenueConfig()


async def test_a_venue_at_a_replay_speed_admits_its_budget_per_shrunk_window(
    perp: Instrument, clock: Clock, bar: BarMaker
) -> None:
    # 45 orders: three windows of 15 through the client limits, each 10/100 s long.
    venue = venue_for(perp, clock, EXACT.at_speed(100))
    venue.process_bar(bar(0, "100", "101", "99", "100"))
    start = clock.monotonic()
    async with asyncio.TaskGroup() as group:
        for index in range(45):
            group.create_task(venue.place_order(limit(f"o{index}", OrderSide.BUY, "0.1", "90")))
    order_grants = [(t, 1) for t, pool in venue.server_log if pool == ORDER_POOL]
    assert len(order_grants) == 45
    assert venue.config.order_budget.violations(order_grants) == 0
    # Two full windows waited out, of 0.1 s each: not 20 s of real-time budget.
    assert clock.monotonic() - start == pytest.approx(0.2)


async def test_a_desk_replaying_at_3000x_brackets_its_trades_without_waiting_on_the_budgets(
    clock: Clock, store_url: str
) -> None:
    # 200 five-minute bars at 3000x: a bar every 0.1 s, the whole market in 20 s. In real
    # seconds the default budgets (15 orders per 10 s) would hold the stop-losses back.
    empty_desk_tables(store_url)
    config = DeskConfig(
        instruments=(DESK_INSTRUMENT,),
        strategies=(StrategyConfig(symbols=(DESK_SYMBOL,)),),
        venue=VenueSettings(starting_balance=DESK_START, participation=Decimal(1)),
        data=DataSettings(speed=3000.0),
        guard_interval=2.0,
        telemetry_interval=60.0,
    )
    bars = trend(200, drift=0.003)
    desk = Desk(config, store_url=store_url, clock=clock, bars=bars)
    await desk.start()
    venue = desk.venue
    started = clock.monotonic()
    assert await desk.run() == 200
    elapsed = clock.monotonic() - started
    ledger = await TradingLedger.open(store_url, upgrade=False, clock=clock)
    try:
        intents = await ledger.intents()
    finally:
        await ledger.close()
    assert venue.config.order_budget == Budget(limit=15, per=10.0 / 3000)
    assert venue.config.general_budget == Budget(limit=60, per=60.0 / 3000)
    assert len(intents) >= 3
    assert all(intent.stage is IntentStage.BRACKETED for intent in intents)
    first_fill_at: dict[str, float] = {}
    for fill in await venue.fills():
        first_fill_at.setdefault(fill.client_order_id, fill.timestamp.timestamp())
    for intent in intents:
        stop = await venue.get_order(client_order_id=intent.stop_loss_order_id)
        assert stop.created_at is not None
        # Live at the venue within the entry's fill poll (1 s), never held by a budget.
        assert stop.created_at.timestamp() - first_fill_at[intent.entry_order_id] <= 1.0
    order_grants = [(t, 1) for t, pool in venue.server_log if pool == ORDER_POOL]
    general_grants = [(t, 1) for t, pool in venue.server_log if pool == GENERAL_POOL]
    assert venue.config.order_budget.violations(order_grants) == 0
    assert venue.config.general_budget.violations(general_grants) == 0
    # The desk traded faster than the real-time budgets allow, and no call waited: the
    # replay kept its pace (200 bars, 0.1 s apart), with no rate-limit answer or fault.
    assert Budget(limit=15, per=10.0).violations(order_grants) > 0
    assert elapsed <= 200 * 0.1 + 1.0
    assert venue.faults.history == []


def test_limits_without_the_two_pools_are_refused(perp: Instrument, clock: Clock) -> None:
    with pytest.raises(ValidationError) as caught:
        venue_for(perp, clock, limits=RateLimitGroup({"x": Budget(1, 1.0)}, clock=clock))
    assert caught.value.field == "limits"


# ---------------------------------------------------------------- properties


@st.composite
def scripts(draw: st.DrawFn) -> tuple[list[Order], list[Bar]]:
    bars = []
    price = Decimal(100)
    for index in range(draw(st.integers(1, 6))):
        moves = draw(st.lists(st.integers(-30, 30), min_size=3, max_size=3))
        points = [price + Decimal(m) / 10 for m in moves] + [price]
        close = price + Decimal(moves[0]) / 10
        bars.append(
            make_bar(
                index + 1,
                str(price),
                str(max(points)),
                str(min(points)),
                str(close),
                str(draw(st.integers(0, 40))),
            )
        )
        price = close
    orders = []
    for index in range(draw(st.integers(1, 6))):
        type_ = draw(st.sampled_from(OrderType))

        def level() -> Decimal:
            return Decimal(draw(st.integers(970, 1030))) / 10

        orders.append(
            Order(
                f"o{index}",
                PERP,
                draw(st.sampled_from(OrderSide)),
                type_,
                Decimal(draw(st.integers(100, 5000))) / 1000,
                price=level() if type_.needs_price else None,
                stop_price=level() if type_.needs_stop_price else None,
                time_in_force=draw(st.sampled_from(TimeInForce)),
            )
        )
    return orders, bars


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(scripts())
def test_fills_stay_in_their_bar_conserve_quantity_and_charge_exact_fees(
    perp: Instrument, script: tuple[list[Order], list[Bar]]
) -> None:
    orders, bars = script
    clock = SimulatedClock()
    config = PaperVenueConfig(rules=MatchingRules(participation=Decimal("0.3"), fees=FEES))

    async def scenario() -> None:
        venue = PaperVenue([perp], balances={"USDT": Decimal(10**9)}, config=config, clock=clock)
        venue.process_bar(make_bar(0, "100", "100", "100", "100"))
        for order in orders:
            await venue.place_order(order)
        for item in bars:
            for fill in venue.process_bar(item):
                assert item.low <= fill.price <= item.high
                assert fill.fee == fill.price * fill.quantity * FEES.rate(fill.liquidity)
        fills = await venue.fills()
        for order in orders:
            final = await venue.get_order(client_order_id=order.client_order_id)
            filled = sum(
                (f.quantity for f in fills if f.client_order_id == order.client_order_id),
                Decimal(0),
            )
            assert final.filled_quantity == filled
            assert final.filled_quantity + final.remaining_quantity == order.quantity

    run_simulated(scenario(), clock=clock)


# ---------------------------------------------------------------- recorded market data

DATA = default_market_data_dir()


def realized_from_fills(fills: Sequence[Fill]) -> Decimal:
    """Average-cost PnL of a netting account, recomputed from the fills alone."""
    net = Decimal(0)  # signed quantity
    cost = Decimal(0)  # average entry price of the open quantity
    realized = Decimal(0)
    for fill in fills:
        signed = fill.quantity * fill.side.sign
        if net == 0 or (net > 0) == (signed > 0):
            cost = (cost * abs(net) + fill.price * fill.quantity) / (abs(net) + fill.quantity)
            net += signed
            continue
        closing = min(abs(signed), abs(net))
        realized += (fill.price - cost) * closing * (1 if net > 0 else -1)
        net += signed
        if net != 0 and (net > 0) == (signed > 0):
            cost = fill.price  # flipped: the rest opened a new position at this price
    return realized


@pytest.mark.skipif(not DATA.is_dir(), reason=f"recorded data not found at {DATA}")
async def test_a_bracket_strategy_over_a_whole_recorded_file_reconciles_to_its_fills(
    perp: Instrument, clock: Clock
) -> None:
    venue = PaperVenue([perp], balances={"USDT": Decimal(10_000)}, clock=clock)
    bars = list(load_bars(DATA / "binance_BTC-USDT-PERP_5m_2023-01.csv"))
    bar_of_fill: dict[str, Bar] = {}
    entries = 0
    protection: tuple[str, str] | None = None
    entering: str | None = None
    for index, item in enumerate(bars):
        fills = venue.process_bar(item)
        for fill in fills:
            bar_of_fill[fill.fill_id] = item
        filled = {fill.client_order_id for fill in fills}
        if entering in filled:
            entry = await venue.get_order(client_order_id=entering)
            assert entry.average_price is not None
            down = perp.round_price(entry.average_price * Decimal("0.99"))
            up = perp.round_price(entry.average_price * Decimal("1.01"))
            sl, tp = f"sl{index}", f"tp{index}"
            for cid, type_, trigger in (
                (sl, OrderType.STOP, down),
                (tp, OrderType.TAKE_PROFIT, up),
            ):
                await venue.place_order(
                    Order(
                        cid,
                        PERP,
                        OrderSide.SELL,
                        type_,
                        entry.quantity,
                        stop_price=trigger,
                        reduce_only=True,
                        parent_order_id=entering,
                    )
                )
            protection, entering = (sl, tp), None
        elif protection is not None and filled & set(protection):
            # One protective order filled: cancelling the other is the client's job.
            other = protection[1] if protection[0] in filled else protection[0]
            await venue.cancel_order(client_order_id=other)
            protection = None
        if protection is None and entering is None and index % 200 == 0:
            entering = f"e{index}"
            await venue.place_order(
                Order(entering, PERP, OrderSide.BUY, OrderType.MARKET, Decimal("0.05"))
            )
            entries += 1
    assert entries >= 20
    fills = list(await venue.fills())
    assert all(bar_of_fill[f.fill_id].low <= f.price <= bar_of_fill[f.fill_id].high for f in fills)
    realized = sum((p.realized_pnl for p in venue.closed_positions), Decimal(0))
    realized += sum((p.realized_pnl for p in await venue.positions()), Decimal(0))
    assert realized == realized_from_fills(fills)
    fees = sum((f.fee for f in fills), Decimal(0))
    wallet = (await venue.balances())["USDT"].total
    assert wallet == Decimal(10_000) + realized - fees


@pytest.mark.skipif(not DATA.is_dir(), reason=f"recorded data not found at {DATA}")
async def test_recorded_trades_feed_the_engine_as_one_price_bars(clock: Clock) -> None:
    eth = Instrument(
        "ETH-USDT-PERP",
        "ETH",
        "USDT",
        Decimal("0.01"),
        Decimal("0.001"),
        Decimal(5),
        InstrumentKind.PERPETUAL,
        Decimal(10),
    )
    trades = list(load_trades(DATA / "binance_ETH-USDT-PERP_trades_2023-02.csv"))
    venue = PaperVenue([eth], balances={"USDT": Decimal(10_000)}, clock=clock)
    venue.process_bar(trades[0].as_bar())
    lowest = min(trade.price for trade in trades[1:])
    target = lowest + Decimal("0.5")
    await venue.place_order(
        Order("dip", eth.symbol, OrderSide.BUY, OrderType.LIMIT, Decimal("0.5"), price=target)
    )
    start = clock.monotonic()
    await venue.run_feed(trade.as_bar() for trade in trades[1:])
    span = (trades[-1].timestamp - trades[1].timestamp).total_seconds()
    assert clock.monotonic() - start == pytest.approx(span)
    fills = await venue.fills()
    assert fills
    # Each fill is at a recorded trade price at or below the limit (never worse, never invented).
    traded = {trade.price for trade in trades}
    assert all(fill.price <= target and fill.price in traded for fill in fills)
    assert sum(fill.quantity for fill in fills) <= Decimal("0.5")


async def test_fills_of_one_symbol_are_that_symbols_fills_in_order(
    perp: Instrument, spot: Instrument, clock: Clock, bar: BarMaker
) -> None:
    venue = PaperVenue(
        [perp, spot],
        balances={"USDT": Decimal(100_000), "ETH": Decimal(10)},
        config=EXACT,
        clock=clock,
    )
    venue.process_bar(bar(0, "100", "101", "99", "100"))
    venue.process_bar(bar(0, "100", "101", "99", "100", symbol=SPOT))
    for number, symbol in enumerate((PERP, SPOT, PERP)):
        await venue.place_order(market(f"m{number}", OrderSide.BUY, "1", symbol=symbol))
        venue.process_bar(bar(number + 1, "100", "101", "99", "100", symbol=symbol))
    every = await venue.fills()
    perp_fills, spot_fills = await venue.fills(PERP), await venue.fills(SPOT)
    assert [fill.client_order_id for fill in every] == ["m0", "m1", "m2"]
    assert perp_fills == [fill for fill in every if fill.symbol == PERP]
    assert spot_fills == [fill for fill in every if fill.symbol == SPOT]
    assert [fill.client_order_id for fill in perp_fills] == ["m0", "m2"]
