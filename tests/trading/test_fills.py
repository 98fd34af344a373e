from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from legato.kernel.errors import ValidationError
from legato.trading.fills import Fill, Liquidity
from legato.trading.orders import OrderSide

NOW = datetime(2024, 1, 1, tzinfo=UTC)


def fill(**changes: object) -> Fill:
    fields: dict[str, object] = {
        "fill_id": "F1",
        "client_order_id": "c",
        "venue_order_id": "V1",
        "symbol": "S",
        "side": OrderSide.BUY,
        "quantity": Decimal("0.5"),
        "price": Decimal(100),
        "fee": Decimal("0.02"),
        "fee_asset": "USDT",
        "liquidity": Liquidity.TAKER,
        "timestamp": NOW,
    }
    fields.update(changes)
    return Fill(**fields)  # type: ignore[arg-type]


def test_notional_is_price_times_quantity() -> None:
    assert fill().notional == Decimal(50)


def test_a_negative_fee_is_accepted_as_a_rebate() -> None:
    assert fill(fee=Decimal("-0.01"), liquidity=Liquidity.MAKER).fee == Decimal("-0.01")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"quantity": Decimal(0)}, "quantity"),
        ({"price": Decimal(-1)}, "price"),
        ({"fee": Decimal("NaN")}, "fee"),
        ({"liquidity": "maker"}, "liquidity"),
        ({"timestamp": datetime(2024, 1, 1)}, "timestamp"),  # noqa: DTZ001 - naive on purpose
    ],
)
def test_malformed_fills_name_the_bad_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        fill(**changes)
    assert caught.value.field == field
