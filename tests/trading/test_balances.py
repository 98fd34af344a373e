from __future__ import annotations

from decimal import Decimal

import pytest

from legato.kernel.errors import ValidationError
from legato.trading.balances import Balance


def test_total_is_free_plus_locked() -> None:
    assert Balance("USDT", Decimal(10), Decimal(5)).total == Decimal(15)


def test_negative_amounts_are_rejected_naming_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        Balance("USDT", Decimal(-1))
    assert caught.value.field == "free"
