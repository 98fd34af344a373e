from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from legato.kernel.errors import ValidationError
from legato.trading.fills import Liquidity
from legato.trading.market_data import Bar
from legato.trading.matching import (
    Execution,
    IntrabarPath,
    MatchingRules,
    intrabar_path,
    match_order,
    slipped_price,
)
from legato.trading.orders import Order, OrderSide, OrderStatus, OrderType, TimeInForce
from legato.trading.positions import PositionSide

T0 = datetime(2024, 1, 1, tzinfo=UTC)
LOT = Decimal("0.001")
NO_SLIP = MatchingRules(slippage_bps=Decimal(0), participation=Decimal(1))


def bar(o: str, h: str, low: str, c: str, volume: str = "1000") -> Bar:
    return Bar("S", T0, Decimal(o), Decimal(h), Decimal(low), Decimal(c), Decimal(volume))


def order(
    side: OrderSide,
    type_: OrderType,
    quantity: str = "1",
    price: str | None = None,
    stop: str | None = None,
    tif: TimeInForce = TimeInForce.GTC,
) -> Order:
    return Order(
        "c",
        "S",
        side,
        type_,
        Decimal(quantity),
        price=Decimal(price) if price else None,
        stop_price=Decimal(stop) if stop else None,
        time_in_force=tif,
        status=OrderStatus.ACCEPTED,
    )


def run(
    o: Order,
    b: Bar,
    rules: MatchingRules = NO_SLIP,
    *,
    fresh: bool = True,
    position: PositionSide | None = None,
) -> Execution | None:
    path = intrabar_path(b, rules.intrabar, position)
    return match_order(o, b, path, rules, LOT, fresh=fresh)


def test_up_bars_visit_the_low_before_the_high_and_down_bars_the_opposite() -> None:
    up = bar("100", "110", "90", "105")
    down = bar("100", "110", "90", "95")
    rule = IntrabarPath.BAR_DIRECTION
    assert intrabar_path(up, rule) == tuple(map(Decimal, ("100", "90", "110", "105")))
    assert intrabar_path(down, rule) == tuple(map(Decimal, ("100", "110", "90", "95")))


def test_adverse_first_takes_the_side_against_the_position() -> None:
    down = bar("100", "110", "90", "95")
    up = bar("100", "110", "90", "105")
    rule = IntrabarPath.ADVERSE_FIRST
    assert intrabar_path(down, rule, PositionSide.LONG)[1] == Decimal(90)
    assert intrabar_path(up, rule, PositionSide.SHORT)[1] == Decimal(110)
    assert intrabar_path(up, rule, None)[1] == Decimal(90)


def test_market_order_fills_at_the_open_plus_slippage_as_taker() -> None:
    rules = MatchingRules(slippage_bps=Decimal(10), participation=Decimal(1))
    result = run(order(OrderSide.BUY, OrderType.MARKET), bar("100", "110", "90", "105"), rules)
    assert result is not None
    assert result.price == Decimal("100.1")
    assert result.at == 0
    assert result.liquidity is Liquidity.TAKER


def test_slippage_never_leaves_the_bar() -> None:
    tight = bar("100", "100.05", "99.95", "100")
    assert slipped_price(Decimal(100), OrderSide.BUY, tight, Decimal(50)) == Decimal("100.05")
    assert slipped_price(Decimal(100), OrderSide.SELL, tight, Decimal(50)) == Decimal("99.95")


def test_resting_limit_buy_fills_at_its_price_when_the_low_reaches_it_as_maker() -> None:
    result = run(
        order(OrderSide.BUY, OrderType.LIMIT, price="95"),
        bar("100", "101", "94", "99"),
        fresh=False,
    )
    assert result is not None
    assert (result.price, result.liquidity) == (Decimal(95), Liquidity.MAKER)
    assert 0 < result.at < 3


def test_limit_not_reached_does_not_fill() -> None:
    assert (
        run(order(OrderSide.BUY, OrderType.LIMIT, price="93"), bar("100", "101", "94", "99"))
        is None
    )


def test_marketable_limit_fills_at_the_better_open_as_taker() -> None:
    result = run(order(OrderSide.SELL, OrderType.LIMIT, price="95"), bar("100", "101", "94", "99"))
    assert result is not None
    assert (result.price, result.liquidity) == (Decimal(100), Liquidity.TAKER)


def test_resting_limit_gapped_through_fills_at_the_open_inside_the_bar() -> None:
    result = run(
        order(OrderSide.BUY, OrderType.LIMIT, price="95"), bar("90", "92", "89", "91"), fresh=False
    )
    assert result is not None
    assert (result.price, result.liquidity) == (Decimal(90), Liquidity.MAKER)


def test_stop_sell_triggers_on_the_low_and_fills_as_market_with_slippage() -> None:
    rules = MatchingRules(slippage_bps=Decimal(100), participation=Decimal(1))
    result = run(
        order(OrderSide.SELL, OrderType.STOP, stop="95"), bar("100", "101", "90", "99"), rules
    )
    assert result is not None
    assert result.triggered
    assert result.price == Decimal("94.05")
    assert result.liquidity is Liquidity.TAKER


def test_stop_gapped_through_fills_from_the_open_not_the_stop() -> None:
    result = run(order(OrderSide.SELL, OrderType.STOP, stop="95"), bar("92", "93", "90", "91"))
    assert result is not None
    assert result.price == Decimal(92)


def test_take_profit_sell_triggers_on_a_rise() -> None:
    tp = order(OrderSide.SELL, OrderType.TAKE_PROFIT, stop="105")
    assert run(tp, bar("100", "104", "99", "103")) is None
    result = run(tp, bar("100", "106", "99", "103"))
    assert result is not None
    assert result.price == Decimal(105)


def test_take_profit_buy_triggers_on_a_fall() -> None:
    tp = order(OrderSide.BUY, OrderType.TAKE_PROFIT, stop="95")
    result = run(tp, bar("100", "101", "94", "99"))
    assert result is not None
    assert result.price == Decimal(95)


def test_stop_limit_becomes_a_limit_at_its_trigger() -> None:
    stop_limit = order(OrderSide.BUY, OrderType.STOP_LIMIT, price="106", stop="105")
    result = run(stop_limit, bar("100", "110", "99", "108"))
    assert result is not None
    assert result.triggered
    assert result.price == Decimal(105)


def test_stop_limit_triggered_but_limit_out_of_reach_rests_triggered() -> None:
    stop_limit = order(OrderSide.BUY, OrderType.STOP_LIMIT, price="101", stop="105")
    result = run(stop_limit, bar("106", "110", "104", "108"))
    assert result is not None
    assert result.triggered
    assert result.quantity == 0
    assert not result.expire_rest


def test_stop_and_take_profit_on_one_bar_hit_the_stop_first_for_a_long() -> None:
    b = bar("100", "110", "90", "95")  # a down bar: by direction alone the high comes first
    stop = run(order(OrderSide.SELL, OrderType.STOP, stop="95"), b, position=PositionSide.LONG)
    tp = run(
        order(OrderSide.SELL, OrderType.TAKE_PROFIT, stop="105"), b, position=PositionSide.LONG
    )
    assert stop is not None
    assert tp is not None
    assert stop.at < tp.at


def test_participation_caps_the_fill_to_a_share_of_volume_in_whole_lots() -> None:
    rules = MatchingRules(slippage_bps=Decimal(0), participation=Decimal("0.1"))
    result = run(
        order(OrderSide.BUY, OrderType.MARKET, quantity="5"),
        bar("1", "1", "1", "1", "12.3456"),
        rules,
    )
    assert result is not None
    assert result.quantity == Decimal("1.234")


def test_ioc_fills_what_it_can_and_expires_the_rest() -> None:
    rules = MatchingRules(slippage_bps=Decimal(0), participation=Decimal("0.5"))
    ioc = order(OrderSide.BUY, OrderType.MARKET, quantity="10", tif=TimeInForce.IOC)
    result = run(ioc, bar("1", "1", "1", "1", "10"), rules)
    assert result is not None
    assert result.quantity == Decimal(5)
    assert result.expire_rest


def test_fok_that_cannot_fill_whole_expires_without_a_fill() -> None:
    rules = MatchingRules(slippage_bps=Decimal(0), participation=Decimal("0.5"))
    fok = order(OrderSide.BUY, OrderType.MARKET, quantity="10", tif=TimeInForce.FOK)
    result = run(fok, bar("1", "1", "1", "1", "10"), rules)
    assert result is not None
    assert result.quantity == 0
    assert result.expire_rest


def test_ioc_limit_out_of_reach_expires() -> None:
    ioc = order(OrderSide.BUY, OrderType.LIMIT, price="90", tif=TimeInForce.IOC)
    result = run(ioc, bar("100", "101", "95", "99"))
    assert result is not None
    assert result.quantity == 0
    assert result.expire_rest


def test_rules_reject_bad_settings() -> None:
    with pytest.raises(ValidationError) as caught:
        MatchingRules(participation=Decimal(0))
    assert caught.value.field == "participation"


# ---------------------------------------------------------------- properties

prices = st.decimals(min_value=Decimal("0.1"), max_value=Decimal(1000), places=1)


@st.composite
def bars(draw: st.DrawFn) -> Bar:
    points = sorted(draw(st.lists(prices, min_size=4, max_size=4)))
    low, high = points[0], points[3]
    open_, close = draw(st.permutations([points[1], points[2]]))
    volume = draw(st.decimals(min_value=Decimal(0), max_value=Decimal(100), places=3))
    return Bar("S", T0 + timedelta(minutes=1), open_, high, low, close, volume)


@st.composite
def orders(draw: st.DrawFn) -> Order:
    type_ = draw(st.sampled_from(OrderType))
    return Order(
        "c",
        "S",
        draw(st.sampled_from(OrderSide)),
        type_,
        draw(st.decimals(min_value=Decimal("0.001"), max_value=Decimal(50), places=3)),
        price=draw(prices) if type_.needs_price else None,
        stop_price=draw(prices) if type_.needs_stop_price else None,
        time_in_force=draw(st.sampled_from(TimeInForce)),
        status=OrderStatus.ACCEPTED,
    )


rules_strategy = st.builds(
    MatchingRules,
    slippage_bps=st.decimals(min_value=Decimal(0), max_value=Decimal(500), places=1),
    participation=st.decimals(min_value=Decimal("0.01"), max_value=Decimal(1), places=2),
    intrabar=st.sampled_from(IntrabarPath),
)


@given(orders(), bars(), rules_strategy, st.booleans(), st.sampled_from([None, *PositionSide]))
def test_no_fill_is_ever_outside_the_bar_range_or_beyond_the_order(
    o: Order, b: Bar, rules: MatchingRules, fresh: bool, position: PositionSide | None
) -> None:
    result = match_order(o, b, intrabar_path(b, rules.intrabar, position), rules, LOT, fresh=fresh)
    if result is None or result.quantity == 0:
        return
    assert b.low <= result.price <= b.high
    assert 0 < result.quantity <= o.remaining_quantity
    assert result.quantity <= rules.participation * b.volume
    assert result.quantity % LOT == 0
    assert 0 <= result.at <= 3
    if o.type.needs_price and result.liquidity is Liquidity.MAKER and result.at > 0:
        assert result.price == o.price
    if o.type.needs_price:
        assert o.price is not None
        # A limit never fills at a worse price than its limit.
        assert result.price <= o.price if o.side is OrderSide.BUY else result.price >= o.price
