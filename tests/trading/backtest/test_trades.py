"""The trade book: fills folded into round trips, cash and marked equity, exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from legato.kernel.errors import ValidationError
from legato.trading.backtest.trades import TradeBook, exit_reason
from legato.trading.fills import Fill, Liquidity
from legato.trading.orders import OrderSide
from legato.trading.positions import PositionSide

T0 = datetime(2024, 1, 1, tzinfo=UTC)
SYMBOL = "BTC-USDT-PERP"


def fill(
    index: int, side: OrderSide, quantity: str, price: str, fee: str = "0", role: str = "E"
) -> Fill:
    return Fill(
        fill_id=f"F{index}",
        client_order_id=f"bt{index}-{role}",
        venue_order_id=f"V{index}",
        symbol=SYMBOL,
        side=side,
        quantity=Decimal(quantity),
        price=Decimal(price),
        fee=Decimal(fee),
        fee_asset="USDT",
        liquidity=Liquidity.TAKER,
        timestamp=T0 + timedelta(minutes=5 * index),
    )


def test_a_long_round_trip_is_one_trade_with_price_pnl_and_both_fees() -> None:
    book = TradeBook(SYMBOL, Decimal(1000))
    assert book.apply(fill(1, OrderSide.BUY, "2", "100", fee="0.08")) is None
    trade = book.apply(fill(3, OrderSide.SELL, "2", "110", fee="0.088", role="TP"))
    assert trade is not None
    assert trade.side is PositionSide.LONG
    assert (trade.quantity, trade.entry_price, trade.exit_price) == (
        Decimal(2),
        Decimal(100),
        Decimal(110),
    )
    assert trade.pnl == Decimal(20)
    assert trade.fees == Decimal("0.168")
    assert trade.net_pnl == Decimal("19.832")
    assert trade.exit_reason == "take_profit"
    assert (trade.entry_time, trade.exit_time) == (
        T0 + timedelta(minutes=5),
        T0 + timedelta(minutes=15),
    )
    assert book.cash == Decimal("1019.832")
    assert book.position == 0


def test_a_short_gains_when_the_price_falls() -> None:
    book = TradeBook(SYMBOL, Decimal(1000))
    book.apply(fill(1, OrderSide.SELL, "1", "100"))
    trade = book.apply(fill(2, OrderSide.BUY, "1", "90", role="SL"))
    assert trade is not None
    assert trade.side is PositionSide.SHORT
    assert trade.pnl == Decimal(10)
    assert trade.exit_reason == "stop_loss"


def test_partial_exits_average_the_exit_price_and_close_one_trade() -> None:
    book = TradeBook(SYMBOL, Decimal(0))
    book.apply(fill(1, OrderSide.BUY, "1", "100"))
    book.apply(fill(2, OrderSide.BUY, "1", "110"))
    assert book.entry_price == Decimal(105)
    assert book.apply(fill(3, OrderSide.SELL, "1", "120", role="X")) is None
    trade = book.apply(fill(4, OrderSide.SELL, "1", "130", role="X"))
    assert trade is not None
    assert (trade.quantity, trade.entry_price, trade.exit_price) == (
        Decimal(2),
        Decimal(105),
        Decimal(125),
    )
    assert trade.pnl == Decimal(40)
    assert len(book.trades) == 1


def test_a_fill_through_zero_closes_the_trade_and_opens_the_next_with_its_fee_split() -> None:
    book = TradeBook(SYMBOL, Decimal(1000))
    book.apply(fill(1, OrderSide.BUY, "1", "100"))
    trade = book.apply(fill(2, OrderSide.SELL, "3", "100", fee="3"))
    assert trade is not None
    assert trade.quantity == Decimal(1)
    assert trade.fees == Decimal(1)
    assert book.position == Decimal(-2)
    assert book.cash == Decimal(997)
    closing = book.apply(fill(3, OrderSide.BUY, "2", "100"))
    assert closing is not None
    assert closing.fees == Decimal(2)


def test_equity_marks_the_open_position_at_the_given_price() -> None:
    book = TradeBook(SYMBOL, Decimal(1000))
    book.apply(fill(1, OrderSide.SELL, "2", "100", fee="1"))
    assert book.equity(Decimal(90)) == Decimal(1000) - 1 + 20
    assert book.equity(Decimal(100)) == Decimal(999)


def test_a_fill_of_another_symbol_is_refused() -> None:
    book = TradeBook("ETH-USDT-PERP", Decimal(0))
    with pytest.raises(ValidationError) as raised:
        book.apply(fill(1, OrderSide.BUY, "1", "100"))
    assert raised.value.field == "fill.symbol"


@pytest.mark.parametrize(
    ("client_order_id", "reason"),
    [
        ("bt7-SL", "stop_loss"),
        ("bt7-SL2", "stop_loss"),
        ("d-9-TP", "take_profit"),
        ("bt7-X", "close"),
        ("manual", "exit"),
    ],
)
def test_exit_reason_reads_the_order_role_suffix(client_order_id: str, reason: str) -> None:
    assert exit_reason(client_order_id) == reason
