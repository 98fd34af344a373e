"""Shared fixtures for the trading tests: instruments and a scripted-bar builder."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from legato.trading.instruments import Instrument, InstrumentKind
from legato.trading.market_data import Bar

T0 = datetime(2024, 1, 1, tzinfo=UTC)
PERP = "BTC-USDT-PERP"
SPOT = "ETH/USDT"

BarMaker = Callable[..., Bar]


@pytest.fixture
def perp() -> Instrument:
    """A BTC perpetual: tick 0.1, lot 0.001, min notional 5 USDT, up to 20x."""
    return Instrument(
        symbol=PERP,
        base_asset="BTC",
        quote_asset="USDT",
        tick_size=Decimal("0.1"),
        lot_size=Decimal("0.001"),
        min_notional=Decimal(5),
        kind=InstrumentKind.PERPETUAL,
        max_leverage=Decimal(20),
    )


@pytest.fixture
def spot() -> Instrument:
    """An ETH/USDT spot market: tick 0.01, lot 0.0001, min notional 10 USDT."""
    return Instrument(
        symbol=SPOT,
        base_asset="ETH",
        quote_asset="USDT",
        tick_size=Decimal("0.01"),
        lot_size=Decimal("0.0001"),
        min_notional=Decimal(10),
    )


def make_bar(
    index: int,
    open_: str,
    high: str,
    low: str,
    close: str,
    volume: str = "1000",
    symbol: str = PERP,
) -> Bar:
    """A 5-minute bar number `index` after T0, prices given as strings (exact Decimals)."""
    return Bar(
        symbol=symbol,
        timestamp=T0 + timedelta(minutes=5 * index),
        open=Decimal(open_),
        high=Decimal(high),
        low=Decimal(low),
        close=Decimal(close),
        volume=Decimal(volume),
    )


@pytest.fixture
def bar() -> BarMaker:
    """The scripted-bar builder: bar(index, open, high, low, close, volume="1000", symbol=PERP)."""
    return make_bar


@pytest.fixture
def ledger_url(store_url: str) -> str:
    """An empty, migrated store with empty trading tables, on each backend."""
    # Imported here: the harness itself imports this module's instruments and bars.
    from .execution_harness import empty_trading_tables

    empty_trading_tables(store_url)
    return store_url
