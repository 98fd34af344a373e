"""The research executor: entry, then reduce-only protection; closes; lazy one-cancels-other."""

from __future__ import annotations

from decimal import Decimal

from legato.kernel.clock import Clock
from legato.trading.backtest.executor import BracketOutcome, DirectBracketExecutor
from legato.trading.backtest.runner import BacktestResult, run_backtest
from legato.trading.instruments import Instrument
from legato.trading.market_data import Bar
from legato.trading.matching import MatchingRules
from legato.trading.orders import OrderStatus, OrderType
from legato.trading.paper_venue import PaperVenue, PaperVenueConfig

from ..conftest import BarMaker
from .scripted_strategy import Action, ScriptedStrategy, buy, close


def venue_for(perp: Instrument, clock: Clock, cash: str = "10000") -> PaperVenue:
    config = PaperVenueConfig(rules=MatchingRules(slippage_bps=Decimal(0)))
    return PaperVenue([perp], balances={"USDT": Decimal(cash)}, config=config, clock=clock)


def flat_bars(bar: BarMaker, count: int, price: int = 100) -> list[Bar]:
    return [bar(i, str(price), str(price + 1), str(price - 1), str(price)) for i in range(count)]


async def run(
    perp: Instrument, clock: Clock, bars: list[Bar], script: dict[int, Action], cash: str = "10000"
) -> tuple[BacktestResult, PaperVenue]:
    venue = venue_for(perp, clock, cash)
    result = await run_backtest(
        ScriptedStrategy(script),
        bars,
        venue=venue,
        executor=DirectBracketExecutor(venue),
        clock=clock,
    )
    return result, venue


def outcomes(result: BacktestResult) -> list[BracketOutcome]:
    found = [outcome for outcome in result.outcomes if isinstance(outcome, BracketOutcome)]
    assert len(found) == len(result.outcomes)
    return found


async def test_a_bracket_is_entry_then_reduce_only_stop_and_target_for_the_filled_quantity(
    clock: Clock, perp: Instrument, bar: BarMaker
) -> None:
    bars = flat_bars(bar, 5)
    result, _ = await run(perp, clock, bars, {1: buy("0.5")})
    [outcome] = outcomes(result)
    assert outcome.success
    entry, stop, target = outcome.orders
    assert entry.status is OrderStatus.FILLED
    assert entry.filled_quantity == Decimal("0.5")
    assert (stop.type, stop.stop_price, stop.reduce_only) == (OrderType.STOP, Decimal(98), True)
    assert (target.type, target.stop_price, target.reduce_only) == (
        OrderType.TAKE_PROFIT,
        Decimal(104),
        True,
    )
    assert stop.quantity == target.quantity == Decimal("0.5")
    assert [o.client_order_id for o in outcome.orders] == ["bt1-E", "bt1-SL", "bt1-TP"]


async def test_a_rejected_entry_fails_the_proposal_and_opens_nothing(
    clock: Clock, perp: Instrument, bar: BarMaker
) -> None:
    result, _ = await run(perp, clock, flat_bars(bar, 4), {1: buy("5")}, cash="100")
    [outcome] = outcomes(result)
    assert not outcome.success
    assert outcome.reason is not None
    assert outcome.reason.startswith("entry rejected")
    assert result.fills == ()


async def test_an_entry_the_data_never_fills_is_cancelled_and_reported(
    clock: Clock, perp: Instrument, bar: BarMaker
) -> None:
    bars = [*flat_bars(bar, 3), bar(3, "110", "111", "109", "110", volume="0")]
    result, venue = await run(perp, clock, bars, {2: buy()})
    [outcome] = outcomes(result)
    assert not outcome.success
    assert outcome.reason == "entry did not fill"
    assert outcome.orders[0].status is OrderStatus.CANCELLED
    assert await venue.open_orders() == []


async def test_a_close_cancels_the_protection_then_closes_at_the_market(
    clock: Clock, perp: Instrument, bar: BarMaker
) -> None:
    bars = flat_bars(bar, 6)
    result, venue = await run(perp, clock, bars, {1: buy(), 3: close()})
    bracket, closing = outcomes(result)
    assert closing.success
    assert closing.orders[0].client_order_id == "bt2-X"
    for order in bracket.orders[1:]:
        seen = await venue.get_order(client_order_id=order.client_order_id)
        assert seen.status is OrderStatus.CANCELLED
    assert result.final_position == 0
    assert [t.exit_reason for t in result.trades] == ["close"]


async def test_the_sibling_left_by_a_take_profit_is_cancelled_before_the_next_entry(
    clock: Clock, perp: Instrument, bar: BarMaker
) -> None:
    bars = [
        *flat_bars(bar, 3),
        bar(3, "100", "105", "99", "104"),  # the take-profit at 104 fills here
        *[bar(i, "104", "105", "103", "104") for i in range(4, 8)],
    ]
    result, venue = await run(perp, clock, bars, {1: buy(), 5: buy()})
    _first, second = outcomes(result)
    assert [t.exit_reason for t in result.trades] == ["take_profit"]
    stop_left = await venue.get_order(client_order_id="bt1-SL")
    assert stop_left.status is OrderStatus.CANCELLED
    assert second.success
    assert [o.client_order_id for o in await venue.open_orders()] == ["bt2-SL", "bt2-TP"]
