from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from legato.kernel.clock import Clock
from legato.kernel.errors import ValidationError
from legato.trading.market_data import (
    Bar,
    Trade,
    bars_from_trades,
    default_market_data_dir,
    is_trades_file,
    load_bars,
    load_market_bars,
    load_trades,
    replay,
)
from legato.trading.orders import OrderSide

DATA = default_market_data_dir()
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"recorded data not found at {DATA}")

# Row counts as the README of ../shared/data/market states them.
BAR_FILES = {
    "binance_BTC-USDT-PERP_5m_2023-01.csv": 10_999,
    "binance_ETH-BTC_5m_2018-01.csv": 5_760,
    "binance_XRP-ETH_1m_2019-10.csv": 2_469,
}
TRADE_FILES = {
    "binance_XRP-ETH_trades_2019-10.csv": 12_477,
    "binance_ETH-USDT-PERP_trades_2023-02.csv": 1_000,
}


@needs_data
@pytest.mark.parametrize(("name", "rows"), BAR_FILES.items())
def test_recorded_bar_files_load_every_row(name: str, rows: int) -> None:
    bars = list(load_bars(DATA / name))
    assert len(bars) == rows
    assert all(earlier.timestamp < later.timestamp for earlier, later in itertools.pairwise(bars))


@needs_data
@pytest.mark.parametrize(("name", "rows"), TRADE_FILES.items())
def test_recorded_trade_files_load_every_row(name: str, rows: int) -> None:
    assert sum(1 for _ in load_trades(DATA / name)) == rows


@needs_data
def test_bars_parse_exact_decimals_and_aware_utc_times() -> None:
    first = next(load_bars("binance_BTC-USDT-PERP_5m_2023-01.csv"))
    assert first == Bar(
        symbol="BTC-USDT-PERP",
        timestamp=datetime(2023, 1, 2, 16, 45, tzinfo=UTC),
        open=Decimal("16727.3"),
        high=Decimal("16728.8"),
        low=Decimal("16726"),
        close=Decimal("16726.1"),
        volume=Decimal("691.508"),
    )
    assert first.timestamp.utcoffset() is not None


@needs_data
def test_trades_parse_side_price_amount_and_millisecond_times() -> None:
    first = next(load_trades(DATA / "binance_ETH-USDT-PERP_trades_2023-02.csv", symbol="ETH"))
    assert first.symbol == "ETH"
    assert first.trade_id == "1206419187"
    assert first.side is OrderSide.BUY
    assert first.price == Decimal("1666.8")
    assert first.amount == Decimal("26.062")
    assert first.timestamp == datetime(2023, 2, 2, 9, 20, 0, 138000, tzinfo=UTC)
    as_bar = first.as_bar()
    assert as_bar.high == as_bar.low == Decimal("1666.8")
    assert as_bar.volume == Decimal("26.062")


def test_a_file_with_the_wrong_header_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "x_BTC_5m.csv"
    path.write_text("time,o,h,l,c,v\n")
    with pytest.raises(ValidationError) as caught:
        list(load_bars(path))
    assert caught.value.field == "header"


def test_a_bad_number_names_the_field_and_line(tmp_path: Path) -> None:
    path = tmp_path / "x_BTC_5m.csv"
    path.write_text("timestamp,open,high,low,close,volume\n2023-01-01T00:00:00Z,1,2,x,1,1\n")
    with pytest.raises(ValidationError) as caught:
        list(load_bars(path))
    assert caught.value.field == "low"
    assert caught.value.context["line"] == 2


def test_a_timestamp_without_offset_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "x_BTC_5m.csv"
    path.write_text("timestamp,open,high,low,close,volume\n2023-01-01T00:00:00,1,2,1,1,1\n")
    with pytest.raises(ValidationError) as caught:
        list(load_bars(path))
    assert caught.value.field == "timestamp"


def test_a_missing_file_is_a_validation_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as caught:
        list(load_bars(tmp_path / "nope_X_1m.csv"))
    assert caught.value.field == "path"


def test_a_bar_whose_high_is_below_its_close_is_rejected() -> None:
    with pytest.raises(ValidationError) as caught:
        Bar("S", datetime(2024, 1, 1, tzinfo=UTC), *map(Decimal, ("1", "1", "1", "2", "1")))
    assert caught.value.field == "high"


async def test_replay_paces_bars_by_their_timestamps_on_the_clock(clock: Clock) -> None:
    bars = [
        Bar("S", datetime(2024, 1, 1, 0, minute, tzinfo=UTC), *map(Decimal, "11111"))
        for minute in (0, 1, 5)
    ]
    start = clock.monotonic()
    seen = [(bar.timestamp.minute, clock.monotonic() - start) async for bar in replay(bars, clock)]
    assert seen == [(0, 0.0), (1, 60.0), (5, 300.0)]


async def test_replay_speed_divides_the_gaps(clock: Clock) -> None:
    bars = [
        Bar("S", datetime(2024, 1, 1, 0, minute, tzinfo=UTC), *map(Decimal, "11111"))
        for minute in (0, 10)
    ]
    start = clock.monotonic()
    async for _ in replay(bars, clock, speed=60.0):
        pass
    assert clock.monotonic() - start == pytest.approx(10.0)


@needs_data
def test_trades_made_into_minute_bars_are_the_exchanges_own_minute_bars() -> None:
    # The oracle is the exchange: the recorded one-minute XRP-ETH bars cover the same days as
    # the recorded trades, and every bar (open, high, low, close, volume) must come out equal.
    made = list(bars_from_trades(load_trades(DATA / "binance_XRP-ETH_trades_2019-10.csv"), 60))
    recorded = list(load_bars(DATA / "binance_XRP-ETH_1m_2019-10.csv"))
    assert len(made) == 2_469
    assert made == recorded


def trade(second: float, price: str, amount: str = "1", trade_id: str = "t") -> Trade:
    moment = datetime.fromtimestamp(1_700_000_040 + second, UTC)  # on a whole minute
    return Trade("X-Y", moment, trade_id, OrderSide.BUY, Decimal(price), Decimal(amount))


def test_a_bar_opens_on_its_interval_and_takes_first_highest_lowest_last_and_the_sum() -> None:
    trades = [
        trade(0.5, "10", "1"),
        trade(20, "12", "2"),
        trade(30, "9", "0.5"),
        trade(59.999, "11", "1"),
        trade(60, "11.5", "3"),  # the next minute
        trade(185, "13", "1"),  # two minutes later: no bar for the minute between
    ]
    bars = list(bars_from_trades(trades, 60))
    opening = datetime.fromtimestamp(1_700_000_040, UTC)
    assert [bar.timestamp - opening for bar in bars] == [
        timedelta(0),
        timedelta(minutes=1),
        timedelta(minutes=3),
    ]
    first = bars[0]
    assert (first.open, first.high, first.low, first.close, first.volume) == (
        Decimal(10),
        Decimal(12),
        Decimal(9),
        Decimal(11),
        Decimal("4.5"),
    )
    assert (bars[1].open, bars[1].close, bars[1].volume) == (Decimal("11.5"),) * 2 + (Decimal(3),)
    assert list(bars_from_trades([], 60)) == []


def test_a_trade_that_goes_back_in_time_is_named() -> None:
    trades = [trade(10, "1", trade_id="a"), trade(5, "1", trade_id="b")]
    with pytest.raises(ValidationError) as raised:
        list(bars_from_trades(trades, 60))
    assert raised.value.context["trade_id"] == "b"


@pytest.mark.parametrize("seconds", [0, -1, float("nan"), float("inf"), True])
def test_a_bar_length_that_is_not_a_positive_number_is_refused(seconds: float) -> None:
    with pytest.raises(ValidationError, match="seconds"):
        list(bars_from_trades([trade(0, "1")], seconds))


def test_the_header_says_whether_a_file_holds_bars_or_trades(tmp_path: Path) -> None:
    bars = tmp_path / "x_A-B_bars.csv"
    bars.write_text("timestamp,open,high,low,close,volume\n2024-01-01T00:00:00Z,1,2,1,2,5\n")
    trades = tmp_path / "x_A-B_trades.csv"
    trades.write_text(
        "timestamp,id,side,price,amount\n"
        "2024-01-01T00:00:10Z,1,buy,1,2\n2024-01-01T00:01:05Z,2,sell,3,1\n"
    )
    other = tmp_path / "x_A-B_other.csv"
    other.write_text("time,price\n")
    assert not is_trades_file(bars)
    assert is_trades_file(trades)
    with pytest.raises(ValidationError, match="header"):
        is_trades_file(other)
    assert [bar.close for bar in load_market_bars(bars)] == [Decimal(2)]
    assert [bar.close for bar in load_market_bars(trades)] == [Decimal(1), Decimal(3)]
    assert [bar.close for bar in load_market_bars(trades, trade_bar_seconds=120)] == [Decimal(3)]
