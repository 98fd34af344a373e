"""Balances: how much of one asset an account holds, split into free and locked."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from legato.kernel.errors import ValidationError

__all__ = ["Balance"]


@dataclass(frozen=True, slots=True)
class Balance:
    """Holdings of one asset: `free` can back new orders, `locked` backs open orders or margin."""

    asset: str
    free: Decimal
    locked: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        if not isinstance(self.asset, str) or not self.asset:
            raise ValidationError("asset", self.asset, "a non-empty asset code")
        for field in ("free", "locked"):
            value = getattr(self, field)
            if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
                raise ValidationError(field, value, "a finite Decimal >= 0", asset=self.asset)

    @property
    def total(self) -> Decimal:
        """free + locked."""
        return self.free + self.locked
