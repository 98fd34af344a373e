"""The paper venue's durable state: saved to the store, restored, it resumes exactly."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from legato.kernel.clock import Clock
from legato.kernel.errors import ValidationError
from legato.trading.fees import FeeSchedule
from legato.trading.instruments import Instrument
from legato.trading.ledger import TradingLedger
from legato.trading.matching import MatchingRules
from legato.trading.orders import Order, OrderSide, OrderType
from legato.trading.paper_venue import PaperVenue, PaperVenueConfig
from legato.trading.paper_venue_state import PaperVenueState

from .conftest import PERP, make_bar

# A 0.25 participation of a 0.02 volume bar: 0.005 a bar, so every order here fills in parts.
THIN = PaperVenueConfig(
    rules=MatchingRules(
        slippage_bps=Decimal(2),
        participation=Decimal("0.25"),
        fees=FeeSchedule(maker_rate=Decimal("0.0002"), taker_rate=Decimal("0.0004")),
    )
)
VOLUME = "0.02"


def fresh_venue(perp: Instrument, clock: Clock) -> PaperVenue:
    return PaperVenue([perp], balances={"USDT": Decimal(100_000)}, config=THIN, clock=clock)


def order(cid: str, side: OrderSide, kind: OrderType, qty: str, **prices: str) -> Order:
    return Order(
        cid,
        PERP,
        side,
        kind,
        Decimal(qty),
        leverage=Decimal(5),
        reduce_only=side is OrderSide.SELL,
        **{name: Decimal(value) for name, value in prices.items()},  # type: ignore[arg-type]
    )


async def trade_into_a_working_book(venue: PaperVenue) -> None:
    """A long of 0.015 (of 0.020 asked, still filling), a stop, a take-profit, a resting bid."""
    venue.process_bar(make_bar(0, "20000", "20010", "19990", "20000", VOLUME))
    await venue.place_order(order("lg-e1", OrderSide.BUY, OrderType.MARKET, "0.020"))
    for index in (1, 2, 3):
        venue.process_bar(make_bar(index, "20000", "20010", "19990", "20005", VOLUME))
    await venue.place_order(
        order("lg-sl1", OrderSide.SELL, OrderType.STOP, "0.020", stop_price="19500")
    )
    await venue.place_order(
        order("lg-tp1", OrderSide.SELL, OrderType.TAKE_PROFIT, "0.020", stop_price="21000")
    )
    bid = order("lg-bid", OrderSide.BUY, OrderType.LIMIT, "0.010", price="19800")
    await venue.place_order(bid)


# The market after the restart: the entry's last part and the resting bid fill, then the
# price falls through the stop, which closes the position over several bars.
LATER_BARS = [
    make_bar(4, "20005", "20010", "19990", "20000", VOLUME),
    make_bar(5, "19900", "19910", "19790", "19800", VOLUME),
    make_bar(6, "19800", "19810", "19700", "19750", VOLUME),
    *(make_bar(index, "19600", "19610", "19400", "19450", VOLUME) for index in range(7, 14)),
]


async def test_a_venue_restored_from_the_store_fills_exactly_like_one_that_never_stopped(
    perp: Instrument, clock: Clock, ledger_url: str
) -> None:
    kept = fresh_venue(perp, clock)
    await trade_into_a_working_book(kept)
    assert await kept.open_orders(), "the book must have working orders to carry over"
    assert await kept.positions(), "and an open position"
    ledger = await TradingLedger.open(ledger_url, upgrade=False, clock=clock)
    try:
        await ledger.save_paper_venue(kept.state())
        saved = await ledger.paper_venue_state(kept.name)
    finally:
        await ledger.close()
    assert saved is not None
    restarted = fresh_venue(perp, clock)
    restarted.restore(saved)

    filled_after_restart: set[str] = set()
    for bar in LATER_BARS:
        kept_fills = kept.process_bar(bar)
        assert restarted.process_bar(bar) == kept_fills
        filled_after_restart |= {fill.client_order_id for fill in kept_fills}
    assert filled_after_restart == {"lg-e1", "lg-bid", "lg-sl1"}
    # The stop (0.020) closed all but the bid's 0.010, a share a bar.
    assert [position.quantity for position in await kept.positions()] == [Decimal("0.010")]
    after = order("lg-e2", OrderSide.BUY, OrderType.MARKET, "0.005")

    assert await restarted.fills() == await kept.fills()
    assert await restarted.fills(perp.symbol) == await kept.fills(perp.symbol)
    assert await restarted.fills(perp.symbol) == await kept.fills()  # one symbol traded
    assert await restarted.positions() == await kept.positions()
    assert restarted.closed_positions == kept.closed_positions
    assert await restarted.balances() == await kept.balances()
    assert await restarted.open_orders() == await kept.open_orders()
    for cid in ("lg-e1", "lg-sl1", "lg-tp1", "lg-bid"):
        assert await restarted.get_order(client_order_id=cid) == await kept.get_order(
            client_order_id=cid
        )
    # The id counters carried over: the next order and fill ids are the ones the kept
    # venue issues too, never a repeat of an id the store already holds.
    placed = await restarted.place_order(after)
    assert placed == await kept.place_order(after)
    bar = make_bar(14, "19450", "19460", "19440", "19450", VOLUME)
    assert restarted.process_bar(bar) == kept.process_bar(bar)
    assert len({fill.fill_id for fill in await restarted.fills()}) == len(await kept.fills())


async def test_the_state_survives_its_json_form_unchanged(perp: Instrument, clock: Clock) -> None:
    venue = fresh_venue(perp, clock)
    await trade_into_a_working_book(venue)
    state = venue.state()
    assert PaperVenueState.from_json(state.to_json()) == state
    # The last bar matched per symbol comes back too (a recorded replay resumes after it).
    assert state.last_bars == {perp.symbol: venue.last_bar_time(perp.symbol)}
    assert state.last_bars[perp.symbol] is not None


async def test_a_state_saved_before_last_bars_were_kept_reads_as_none(
    perp: Instrument, clock: Clock
) -> None:
    venue = fresh_venue(perp, clock)
    await trade_into_a_working_book(venue)
    saved = json.loads(venue.state().to_json())
    del saved["last_bars"]
    older = PaperVenueState.from_json(json.dumps(saved))
    restarted = fresh_venue(perp, clock)
    restarted.restore(older)
    assert older.last_bars == {}
    assert restarted.last_bar_time(perp.symbol) is None
    assert restarted.last_price(perp.symbol) == venue.last_price(perp.symbol)


async def test_a_state_of_another_venue_is_refused_and_changes_nothing(
    perp: Instrument, clock: Clock
) -> None:
    venue = fresh_venue(perp, clock)
    await trade_into_a_working_book(venue)
    before = venue.state()
    other = PaperVenue(
        [perp], balances={"USDT": Decimal(5)}, config=THIN, clock=clock, name="other"
    )
    with pytest.raises(ValidationError) as raised:
        venue.restore(other.state())
    assert raised.value.field == "state.name"
    assert venue.state() == before


def test_text_that_is_not_a_saved_state_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ValidationError) as not_json:
        PaperVenueState.from_json("{not json")
    assert not_json.value.field == "state"
    with pytest.raises(ValidationError) as incomplete:
        PaperVenueState.from_json('{"format": 1, "name": "paper"}')
    assert "complete PaperVenueState" in str(incomplete.value)


async def test_a_store_without_a_saved_state_answers_none(clock: Clock, ledger_url: str) -> None:
    ledger = await TradingLedger.open(ledger_url, upgrade=False, clock=clock)
    try:
        assert await ledger.paper_venue_state("paper") is None
    finally:
        await ledger.close()
