from __future__ import annotations

from decimal import Decimal

import pytest

from legato.kernel.errors import ValidationError
from legato.trading.fees import FeeSchedule
from legato.trading.fills import Liquidity


def test_fee_is_exactly_notional_times_the_liquidity_rate() -> None:
    fees = FeeSchedule(maker_rate=Decimal("0.0002"), taker_rate=Decimal("0.0004"))
    assert fees.fee(Decimal("16727.3"), Decimal("0.013"), Liquidity.TAKER) == Decimal("0.08698196")
    assert fees.fee(Decimal("100"), Decimal("1"), Liquidity.MAKER) == Decimal("0.02")


def test_a_negative_maker_rate_is_a_rebate() -> None:
    fees = FeeSchedule(maker_rate=Decimal("-0.0001"))
    assert fees.fee(Decimal(100), Decimal(1), Liquidity.MAKER) == Decimal("-0.01")


def test_taker_rate_cannot_be_negative() -> None:
    with pytest.raises(ValidationError) as caught:
        FeeSchedule(taker_rate=Decimal("-0.0001"))
    assert caught.value.field == "taker_rate"
