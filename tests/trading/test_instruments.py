from __future__ import annotations

from decimal import Decimal

import pytest

from legato.kernel.errors import ValidationError
from legato.trading.instruments import Instrument, InstrumentKind, PriceRounding


def test_round_price_moves_onto_the_tick_grid_in_the_requested_direction(
    perp: Instrument,
) -> None:
    assert perp.round_price(Decimal("100.04")) == Decimal("100.0")
    assert perp.round_price(Decimal("100.06")) == Decimal("100.1")
    assert perp.round_price(Decimal("100.01"), PriceRounding.UP) == Decimal("100.1")
    assert perp.round_price(Decimal("100.09"), PriceRounding.DOWN) == Decimal("100.0")


def test_round_price_never_returns_zero_for_a_positive_price(perp: Instrument) -> None:
    assert perp.round_price(Decimal("0.01")) == Decimal("0.1")


def test_round_quantity_rounds_down_to_whole_lots(perp: Instrument) -> None:
    assert perp.round_quantity(Decimal("1.23456")) == Decimal("1.234")
    assert perp.round_quantity(Decimal("0.0009")) == 0


def test_validate_price_off_the_grid_names_field_value_and_tick(perp: Instrument) -> None:
    with pytest.raises(ValidationError) as caught:
        perp.validate_price(Decimal("100.05"))
    assert caught.value.field == "price"
    assert caught.value.value == Decimal("100.05")
    assert "tick_size 0.1" in caught.value.expected


def test_validate_quantity_off_the_lot_grid_is_rejected(perp: Instrument) -> None:
    assert perp.validate_quantity(Decimal("0.002")) == Decimal("0.002")
    with pytest.raises(ValidationError) as caught:
        perp.validate_quantity(Decimal("0.0015"))
    assert caught.value.field == "quantity"
    assert "lot_size 0.001" in caught.value.expected


@pytest.mark.parametrize("bad", [Decimal(0), Decimal(-1), Decimal("NaN")])
def test_non_positive_or_nan_quantities_are_rejected(perp: Instrument, bad: Decimal) -> None:
    with pytest.raises(ValidationError):
        perp.validate_quantity(bad)


def test_notional_below_minimum_is_rejected_with_the_minimum(perp: Instrument) -> None:
    assert perp.validate_notional(Decimal(100), Decimal("0.05")) == Decimal("5.00")
    with pytest.raises(ValidationError) as caught:
        perp.validate_notional(Decimal(100), Decimal("0.049"))
    assert caught.value.field == "notional"
    assert "min_notional 5" in caught.value.expected


def test_leverage_must_be_within_one_and_the_maximum(perp: Instrument) -> None:
    assert perp.validate_leverage(Decimal(20)) == Decimal(20)
    with pytest.raises(ValidationError):
        perp.validate_leverage(Decimal(21))
    with pytest.raises(ValidationError):
        perp.validate_leverage(Decimal("0.5"))


def test_spot_instruments_cannot_carry_leverage() -> None:
    with pytest.raises(ValidationError) as caught:
        Instrument(
            "ETH/USDT", "ETH", "USDT", Decimal("0.01"), Decimal("0.001"), max_leverage=Decimal(2)
        )
    assert caught.value.field == "max_leverage"


def test_instrument_rejects_bad_definitions() -> None:
    with pytest.raises(ValidationError) as caught:
        Instrument("X", "USDT", "USDT", Decimal("0.01"), Decimal("0.001"))
    assert caught.value.field == "quote_asset"
    with pytest.raises(ValidationError) as caught:
        Instrument("X", "A", "B", Decimal(0), Decimal("0.001"))
    assert caught.value.field == "tick_size"
    with pytest.raises(ValidationError):
        Instrument("X", "A", "B", Decimal("0.1"), Decimal("0.1"), kind="perp")  # type: ignore[arg-type]


def test_perpetual_flag_follows_the_kind(perp: Instrument, spot: Instrument) -> None:
    assert perp.is_perpetual
    assert perp.kind is InstrumentKind.PERPETUAL
    assert not spot.is_perpetual
